"""Tests for the cluster gallery and the label-free block: a tiny run with no labels at all, end to end.

The features, predictions and CRF stores are written by hand (as in test_evaluate.py), the
evaluate stage runs on them with a names file, and every number of the gallery is compared
with a count over the pixels; then the report must show every cluster with its examples and
sizes, the label-free signals, and nothing of the demo's classes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from stego_tasks.config import CorpusParams, EvaluateParams
from stego_tasks.evaluate import evaluate
from stego_tasks.paths import PATHS
from stego_tasks.report import render
from stego_tasks.tools.gallery import THUMB, outline

N_IMAGES, SIZE, K, N_KMEANS = 6, 16, 5, 3
DEMO_NAMES = ("sky", "grass", "road", "building", "water")


def _write_run(run: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Stores of a run whose val split has no labels; returns the arrays written."""
    rng = np.random.default_rng(seed)
    features = zarr.open_group(str(run / PATHS["features"]), mode="w", zarr_format=3)
    features.attrs.update({"backbone": "vit_tiny_patch16_224", "weights_source": "random", "resolution": SIZE})
    val = features.create_group("val")
    val.create_array("labels", data=np.full((N_IMAGES, SIZE, SIZE), 255, np.uint8))
    images = rng.integers(0, 256, (N_IMAGES, SIZE, SIZE, 3), dtype=np.uint8)
    val.create_array("images", data=images)
    val.create_array("done", data=np.ones(1, dtype=bool))
    logits = rng.normal(0, 2, (N_IMAGES, K, SIZE, SIZE))
    log_probs = (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float16)
    probe = log_probs.astype(np.float32).argmax(1).astype(np.uint8)
    final = probe.copy()
    final[:, :4] = 3  # the "CRF" changed some pixels
    final[0] = 1  # image 0 is all cluster 1
    kmeans = rng.integers(0, N_KMEANS, probe.shape).astype(np.uint8)
    kmeans[probe == 0] = 0  # some agreement
    group = zarr.open_group(str(run / PATHS["predictions"]), mode="w", zarr_format=3)
    for name, data in {"cluster_logits": log_probs, "cluster_pred": probe, "kmeans_pred": kmeans,
                       "linear_pred": probe}.items():
        group.create_array(name, data=data)
    group.attrs["n_clusters"] = K
    crf = zarr.open_group(str(run / PATHS["crf_out"]), mode="w", zarr_format=3)
    crf.create_array("cluster_pred", data=final)
    crf.create_array("linear_pred", data=probe)
    model = run / PATHS["model"] / "model.json"
    model.parent.mkdir(parents=True)
    # The params' class names may still be the demo's: without labels they must not appear.
    model.write_text(json.dumps({"backbone": "vit_tiny_patch16_224", "class_names": list(DEMO_NAMES)}))
    return {"images": images, "log_probs": log_probs, "probe": probe, "final": final, "kmeans": kmeans}


def _evaluate(run: Path, names_text: str | None = None) -> dict:
    names = run / PATHS["cluster_names"]
    if names_text is not None:
        names.write_text(names_text)
    corpus = CorpusParams(root="unused", n_classes=5, ignore_index=255, class_names=DEMO_NAMES)
    return evaluate(
        run / PATHS["features"], run / PATHS["predictions"], run / PATHS["crf_out"], run / PATHS["scores"],
        run / PATHS["per_class"], run / PATHS["confusion"], run / PATHS["overlays"], corpus,
        EvaluateParams(n_overlays=2, gallery_examples=3), run / PATHS["assignment"],
        gallery_dir=run / PATHS["gallery"], names_path=names,
    )


def test_gallery_numbers_are_counts_over_the_final_map(tmp_path: Path) -> None:
    arrays = _write_run(tmp_path)
    scores = _evaluate(tmp_path, "names:\n  0: road\n  1: vegetation\n  2: vegetation\nignore: [4]\n")
    gallery = json.loads((tmp_path / PATHS["gallery"] / "gallery.json").read_text())
    final, probs = arrays["final"], np.exp(arrays["log_probs"].astype(np.float32))
    best = probs.max(1)
    assert gallery["has_labels"] is False and gallery["n_images"] == N_IMAGES
    for entry in gallery["clusters"]:
        k = entry["id"]
        mask = final == k
        assert entry["pixel_share"] == pytest.approx(mask.mean(), abs=1e-4), f"cluster {k} pixel share"
        per_image = mask.reshape(N_IMAGES, -1).mean(1)
        assert entry["image_share"] == pytest.approx((per_image > 0).mean(), abs=1e-4), f"cluster {k} image share"
        assert entry["mean_confidence"] == pytest.approx(best[mask].mean(), abs=1e-4), f"cluster {k} confidence"
        mass = [probs[:, c][mask].sum() if c != k else -1 for c in range(K)]
        assert entry["nearest"] == int(np.argmax(mass)), f"cluster {k} runner-up"
        ranked = sorted((i for i in range(N_IMAGES) if per_image[i] > 0), key=lambda i: (-per_image[i], i))[:3]
        assert entry["examples"] == ranked, f"cluster {k} examples"
        with Image.open(tmp_path / PATHS["gallery"] / entry["file"]) as strip:
            assert strip.size == (len(ranked) * THUMB + 4 * (len(ranked) - 1), THUMB), f"cluster {k} strip"
    names = {e["id"]: e["name"] for e in gallery["clusters"]}
    assert names == {0: "road", 1: "vegetation", 2: "vegetation", 3: "cluster 3", 4: "ignored"}
    assert gallery["clusters"][1]["examples"][0] == 0, "image 0 is all cluster 1"

    block = scores["label_free"]
    counts = np.bincount(final.reshape(-1), minlength=K)
    shares = counts / counts.sum()
    assert block["size_balance"] == pytest.approx(-(shares * np.log(shares)).sum() / math.log(K), abs=1e-4)
    assert block["mean_confidence"] == pytest.approx(best.mean(), abs=1e-4)
    assert block["used_clusters"] == K and block["n_clusters"] == K
    # The k-means agreement compares the probe's map before the CRF with the baseline's.
    from stego_tasks.method.label_free import adjusted_mutual_info, contingency

    want = adjusted_mutual_info(contingency(arrays["probe"], arrays["kmeans"], K, N_KMEANS))
    assert block["kmeans_ami"] == pytest.approx(want, abs=1e-4)
    on_disk = json.loads((tmp_path / PATHS["scores"]).read_text())
    assert on_disk["label_free"] == block, "the label-free block is in scores.json (a DVC metrics file)"


def test_report_of_a_run_without_labels_shows_every_cluster_and_the_label_free_signals(tmp_path: Path) -> None:
    _write_run(tmp_path)
    _evaluate(tmp_path, "names: {}\nignore: []\n")
    seeds = {"seeds": [0, 1, 2], "methods": {}, "label_free": {"seed_ami": {"mean": 0.6123, "sd": 0.05, "n": 3}}}
    (tmp_path / PATHS["seeds"]).write_text(json.dumps(seeds))
    page = render(tmp_path)
    assert 'data-signal="seed_ami"' in page and "0.612" in page, "the seeds' agreement is shown"
    for k in range(K):
        start = page.index(f'id="cluster-{k}"')
        card = page[start:page.index("</div>", start)]
        assert "data:image/png;base64," in card, f"cluster {k} has no example picture"
        assert "of pixels" in card and "of images" in card, f"cluster {k} shows no sizes"
        assert f'<tr data-cluster="{k}">' in page, f"cluster {k} missing from the table"
    for signal in ("size_balance", "mean_confidence", "kmeans_ami", "used_clusters"):
        assert f'data-signal="{signal}"' in page, f"label-free signal {signal} missing"
    for name in DEMO_NAMES:
        assert f">{name}<" not in page and f", {name}" not in page, f"the demo's class {name} shows on an unlabelled run"
    assert "ground truth" not in page, "no ground truth to speak of without labels"
    with Image.open(tmp_path / PATHS["overlays"] / "0000.png") as panel:
        assert panel.size == (2 * SIZE + 4, SIZE), "overlay panels without labels: image | clusters"


def test_gallery_groups_many_clusters_largest_first(tmp_path: Path) -> None:
    gallery = tmp_path / PATHS["gallery"]
    gallery.mkdir(parents=True)
    entries = [{"id": k, "name": f"cluster {k}", "pixel_share": (k + 1) / 5050, "image_share": 0.5,
                "mean_confidence": 0.5, "nearest": (k + 1) % 100, "examples": [], "file": f"cluster_{k:03d}.png"}
               for k in range(100)]
    (gallery / "gallery.json").write_text(json.dumps({"n_images": 3, "has_labels": False, "clusters": entries}))
    page = render(tmp_path)
    assert page.count('<details class="group"') == 5, "K = 100 folds into groups of 24"
    assert page.count('<details class="group" open>') == 1, "only the first group is open"
    assert page.index('id="cluster-99"') < page.index('id="cluster-0"'), "largest clusters first"


def test_outline_is_the_region_pixels_with_a_neighbour_outside() -> None:
    rng = np.random.default_rng(5)
    mask = rng.random((9, 11)) > 0.4
    edge = outline(mask)
    for i in range(9):
        for j in range(11):
            outside = any(0 <= i + di < 9 and 0 <= j + dj < 11 and not mask[i + di, j + dj]
                          for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)))
            assert edge[i, j] == (mask[i, j] and outside), f"pixel {i},{j}"


def test_evaluate_replaces_its_own_gallery_but_no_other_folder(tmp_path: Path) -> None:
    _write_run(tmp_path)
    _evaluate(tmp_path, "names: {}\n")
    _evaluate(tmp_path, "names:\n  2: water\n")  # a rename: evaluate runs again over its own gallery
    gallery = json.loads((tmp_path / PATHS["gallery"] / "gallery.json").read_text())
    assert gallery["clusters"][2]["name"] == "water", "the second run's names"
    other = tmp_path / "mine"
    (other / "notes.txt").parent.mkdir()
    (other / "notes.txt").write_text("keep")
    corpus = CorpusParams(root="unused", n_classes=5, ignore_index=255)
    with pytest.raises(ValueError, match="refusing"):
        evaluate(tmp_path / PATHS["features"], tmp_path / PATHS["predictions"], tmp_path / PATHS["crf_out"],
                 tmp_path / "s.json", tmp_path / "p.json", tmp_path / "c.png", tmp_path / "o", corpus,
                 EvaluateParams(), tmp_path / "a.json", gallery_dir=other)
    assert (other / "notes.txt").read_text() == "keep"


def test_with_labels_the_users_names_are_scored_and_the_gallery_shows_matched_classes(tmp_path: Path) -> None:
    arrays = _write_run(tmp_path)
    labels = (arrays["final"] % 3).astype(np.uint8)  # classes 0..2 ("sky", "grass", "road")
    zarr.open_group(str(tmp_path / PATHS["features"]), mode="a")["val"]["labels"][:] = labels
    scores = _evaluate(tmp_path, "names:\n  0: sky\n  3: sky\n  1: grass\n  2: road\nignore: [4]\n")
    # Clusters 0 and 3 named sky (class 0), 1 grass, 2 road: exactly the labels' rule except cluster 4.
    predicted = np.array([0, 1, 2, 0, -1])[arrays["final"]]
    assert scores["named"]["accuracy"] == pytest.approx(100 * np.mean(predicted == labels), abs=1e-3)
    gallery = json.loads((tmp_path / PATHS["gallery"] / "gallery.json").read_text())
    assert gallery["has_labels"] and all(e["matched_class"] in (*DEMO_NAMES, None) for e in gallery["clusters"])
    page = render(tmp_path)
    assert 'data-method="named"' in page and "<th>matched class</th>" in page


def test_an_empty_cluster_has_no_examples_confidence_or_nearest(tmp_path: Path) -> None:
    arrays = _write_run(tmp_path)
    final = arrays["final"]
    final[final == 2] = 0  # cluster 2 wins no pixel after the CRF
    zarr.open_group(str(tmp_path / PATHS["crf_out"]), mode="a")["cluster_pred"][:] = final
    scores = _evaluate(tmp_path, None)
    entry = json.loads((tmp_path / PATHS["gallery"] / "gallery.json").read_text())["clusters"][2]
    assert entry["pixel_share"] == 0 and entry["examples"] == [] and entry["nearest"] is None
    assert entry["mean_confidence"] is None and scores["label_free"]["used_clusters"] == K - 1
    assert "won no pixel" in render(tmp_path)
