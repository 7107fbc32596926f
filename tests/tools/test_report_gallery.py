"""Tests for `tools.report_gallery`: the report's label-free signals and cluster gallery sections.

On gallery and scores files written in tmp_path, they prove the signals table shows each value
in its own form (counts of n_clusters, shares as percent, numbers to three places) in the fixed
order, adds the seeds' agreement when `stego seeds` wrote it, and says why it is empty; and that
the gallery lists clusters largest first with their colour, name, matched class (only with
labels), sizes and a link to the nearest cluster, folds them 24 at a time, embeds a cluster's
strip only when it is a PNG, and escapes names.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from stego_tasks.paths import PATHS
from stego_tasks.tools.report_gallery import GALLERY, GROUP, gallery_section, label_free_section
from stego_tasks.tools.visualize import palette

PNG = b"\x89PNG\r\n\x1a\n" + b"rest of a picture"


def _write_gallery(run: Path, clusters: list[dict], has_labels: bool = False, n_images: int = 5) -> Path:
    """gallery.json (and nothing else) in the run's gallery folder; returns that folder."""
    folder = (run / GALLERY).parent
    folder.mkdir(parents=True, exist_ok=True)
    (run / GALLERY).write_text(json.dumps({"clusters": clusters, "has_labels": has_labels, "n_images": n_images}))
    return folder


def _cluster(cluster: int, share: float, **extra: object) -> dict:
    return {"id": cluster, "name": f"cluster {cluster}", "pixel_share": share, "image_share": 0.5,
            "mean_confidence": 0.25, "file": f"cluster_{cluster}.png", "examples": [0], **extra}


def test_signals_are_shown_in_their_own_form_and_order(tmp_path: Path) -> None:
    block = {"kmeans_ari": 0.1234, "size_balance": 0.98765, "used_clusters": 4, "n_clusters": 5, "largest_share": 0.4321}
    section = label_free_section({"label_free": block}, tmp_path)
    rows = re.findall(r'<tr data-signal="(\w+)"><th>[^<]*</th><td class="num">([^<]*)</td>', section)
    assert rows == [("size_balance", "0.988"), ("used_clusters", "4 of 5"), ("largest_share", "43.2 %"),
                    ("kmeans_ari", "0.123")], rows


def test_the_seeds_agreement_is_added_with_its_sd_when_seeds_ran(tmp_path: Path) -> None:
    seeds = tmp_path / PATHS["seeds"]
    seeds.parent.mkdir(parents=True)
    seeds.write_text(json.dumps({"seeds": [0, 1, 2], "label_free": {"seed_ami": {"mean": 0.8, "sd": 0.05}}}))
    section = label_free_section({"label_free": {"size_balance": 1.0}}, tmp_path)
    assert '<tr data-signal="seed_ami">' in section and "0.800 \u00b1 0.050" in section and "of 3 seeds" in section, section
    seeds.write_text(json.dumps({"seeds": [0], "label_free": {"seed_ami": {"mean": 1.0, "sd": None}}}))
    section = label_free_section({"label_free": {"size_balance": 1.0}}, tmp_path)
    assert "1.000</td>" in section and "\u00b1" not in section, "one seed: no sd"


def test_no_label_free_block_says_to_rerun(tmp_path: Path) -> None:
    for scores in (None, {}, {"label_free": [1]}):
        section = label_free_section(scores, tmp_path)
        assert "No label-free signals" in section and "rerun `dvc repro`" in section and "<table" not in section, section


def test_a_run_without_a_gallery_says_which_stage_writes_it(tmp_path: Path) -> None:
    section = gallery_section(tmp_path)
    assert section.startswith("<h2>Clusters</h2>") and f"No cluster gallery: {GALLERY} is missing" in section


def test_clusters_are_listed_largest_first_with_colour_sizes_and_nearest_link(tmp_path: Path) -> None:
    clusters = [_cluster(0, 0.2, nearest=2), _cluster(1, 0.5, nearest=0), _cluster(2, 0.3, nearest=9, name="sky")]
    _write_gallery(tmp_path, clusters)
    section = gallery_section(tmp_path)
    table = section[section.index('<table id="clusters">'):section.index("</table>")]
    assert re.findall(r'<tr data-cluster="(\d+)">', table) == ["1", "2", "0"], "not largest first"
    r, g, b = palette()[2]
    assert f"background:rgb({r},{g},{b})" in table
    assert "<th>matched class</th>" not in table, "a run without labels has no matched class column"
    row0 = re.search(r'<tr data-cluster="0">.*?</tr>', table).group(0)
    assert "20.0 %" in row0 and "50.0 %" in row0 and "0.25" in row0 and '<a href="#cluster-2">sky</a>' in row0, row0
    row2 = re.search(r'<tr data-cluster="2">.*?</tr>', table).group(0)
    assert row2.endswith("<td>\u2013</td></tr>"), "a nearest cluster that is not in the gallery is a dash"
    assert "cluster 2: sky" in section and "cluster 0: cluster 0" not in section, "a default name is not repeated"


def test_with_labels_each_cluster_shows_its_matched_class(tmp_path: Path) -> None:
    _write_gallery(tmp_path, [_cluster(0, 0.6, matched_class="road"), _cluster(1, 0.4, matched_class=None)], has_labels=True)
    section = gallery_section(tmp_path)
    assert "<th>matched class</th>" in section and "<td>road</td>" in section and "<td>unmatched</td>" in section
    assert "(labels: road)" in section


def test_a_strip_is_embedded_only_when_it_is_a_png_of_examples(tmp_path: Path) -> None:
    folder = _write_gallery(tmp_path, [_cluster(0, 0.5), _cluster(1, 0.3), _cluster(2, 0.2, examples=[])])
    (folder / "cluster_0.png").write_bytes(PNG)
    (folder / "cluster_1.png").write_bytes(b"not a png")
    (folder / "cluster_2.png").write_bytes(PNG)
    section = gallery_section(tmp_path)
    assert section.count("<img ") == 1 and base64.b64encode(PNG).decode() in section
    assert section.count("No example picture") == 2, "a non-PNG file or a cluster without examples shows a note"


def test_clusters_fold_in_groups_the_first_open(tmp_path: Path) -> None:
    n = GROUP * 2 + 3
    _write_gallery(tmp_path, [_cluster(k, 1 / n) for k in range(n)])
    section = gallery_section(tmp_path)
    summaries = re.findall(r"<details class=\"group\"( open)?><summary>clusters (\d+)\u2013(\d+) of (\d+)", section)
    assert summaries == [(" open", "1", str(GROUP), str(n)), ("", str(GROUP + 1), str(2 * GROUP), str(n)),
                         ("", str(2 * GROUP + 1), str(n), str(n))], summaries
    assert section.count('<div class="cluster" id=') == n


def test_names_are_escaped(tmp_path: Path) -> None:
    _write_gallery(tmp_path, [_cluster(0, 1.0, name="<b>&co")])
    section = gallery_section(tmp_path)
    assert "&lt;b&gt;&amp;co" in section and "<b>&co" not in section
