"""Report sections that need no labels: the label-free signals and the cluster gallery.

Kept apart from `report.py` so each stays small. They read what the evaluate stage wrote:
the `label_free` block of `metrics/scores.json`, `plots/gallery/gallery.json` and its
`cluster_<id>.png` strips, and the seeds' agreement in `metrics/seeds.json`.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from stego_tasks.paths import PATHS
from stego_tasks.runtime.atomic import read_json
from stego_tasks.tools.gallery import GALLERY_JSON
from stego_tasks.tools.visualize import palette

GALLERY = f"{PATHS['gallery']}/{GALLERY_JSON}"
GROUP = 24  # clusters per fold of the gallery: K = 100 opens as five folds, largest clusters first
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GALLERY_CSS = """
.clusters{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:.8rem}
.cluster{border:1px solid #d5dae1;padding:.5rem;border-radius:4px}.cluster h3{margin:.1rem 0 .3rem;font-size:1rem}
.swatch{display:inline-block;width:.9rem;height:.9rem;border:1px solid #555;vertical-align:middle;margin-right:.3rem}
.facts{font-size:.85rem;color:#3a4350;margin:.2rem 0}details.group{margin:.5rem 0}details.group>summary{cursor:pointer;font-weight:600}
"""
# (key, label, what it means) of the label_free block, in the order shown.
SIGNALS = (
    ("size_balance", "size balance", "normalised entropy of the clusters' pixel shares: 1 = all equal, 0 = one cluster has everything"),
    ("used_clusters", "clusters used", "clusters that won at least one val pixel, of n_clusters"),
    ("largest_share", "largest cluster", "share of val pixels in the largest cluster"),
    ("mean_confidence", "mean confidence", "mean over val pixels of the cluster probe's max probability (softmax at the run's alpha, before the CRF)"),
    ("kmeans_ami", "agreement with k-means (AMI)", "adjusted mutual information of the probe's map and the k-means baseline's, same pixels: 1 = same partition, 0 = chance"),
    ("kmeans_ari", "agreement with k-means (ARI)", "adjusted Rand index of the same two maps"),
)


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "\u2013"


def _pct(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, int | float) and not isinstance(value, bool) else "\u2013"


def label_free_section(scores: dict | None, run_dir: Path) -> str:
    """The label-free signals of the run (and the agreement between seeds, after `stego seeds`)."""
    head = "<h2>Label-free signals</h2>"
    seeds = read_json(run_dir / PATHS["seeds"])
    block = (scores or {}).get("label_free")
    if not isinstance(block, dict):
        return head + _note(f"No label-free signals: {PATHS['scores']} has no label_free block (rerun `dvc repro`).")
    rows = []
    for key, label, meaning in SIGNALS:
        if key in block:
            value = block[key]
            shown = f"{value} of {block.get('n_clusters', '?')}" if key == "used_clusters" else (
                _pct(value) if key == "largest_share" else _num(value))
            rows.append(f'<tr data-signal="{key}"><th>{escape(label)}</th><td class="num">{escape(shown)}</td>'
                        f"<td>{escape(meaning)}</td></tr>")
    agreement = (seeds or {}).get("label_free", {}).get("seed_ami") if isinstance(seeds, dict) else None
    if isinstance(agreement, dict) and agreement.get("mean") is not None:
        sd = "" if agreement.get("sd") is None else f" \u00b1 {agreement['sd']:.3f}"
        rows.append(f'<tr data-signal="seed_ami"><th>agreement between seeds (AMI)</th><td class="num">'
                    f"{agreement['mean']:.3f}{sd}</td><td>mean pairwise AMI of the val cluster maps of "
                    f"{escape(str(len(seeds.get('seeds', []))))} seeds (`stego seeds`): 1 = every seed finds the same partition</td></tr>")
    return (head + '<table id="label-free"><tr><th>signal</th><th>value</th><th>what it means</th></tr>'
            + "".join(rows) + "</table>"
            + _note("None of these needs a label, and none is a score: a balanced, confident partition that "
                    "agrees with k-means can still cut the images along the wrong lines. README: \u201cNo labels at all\u201d."))


def _swatch(cluster: int) -> str:
    r, g, b = (int(v) for v in palette()[cluster % 256])
    return f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>'


def _link(cluster: Any, entries: dict[int, dict]) -> str:
    if not isinstance(cluster, int) or cluster not in entries:
        return "\u2013"
    return f'<a href="#cluster-{cluster}">{escape(entries[cluster]["name"])}</a>'


def _title(entry: dict) -> str:
    name = str(entry.get("name"))
    return name if name == f"cluster {entry['id']}" else f"cluster {entry['id']}: {name}"


def _card(entry: dict, entries: dict[int, dict], folder: Path) -> str:
    path = folder / str(entry.get("file", ""))
    data = path.read_bytes() if path.is_file() else b""
    picture = (f'<img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" '
               f'alt="examples of cluster {entry["id"]}">' if data.startswith(PNG_SIGNATURE) and entry.get("examples")
               else _note("No example picture (the cluster won no pixel)."))
    matched = entry.get("matched_class")
    facts = [f"{_pct(entry.get('pixel_share'))} of pixels", f"in {_pct(entry.get('image_share'))} of images",
             f"mean confidence {_num(entry.get('mean_confidence'), 2)}",
             f"nearest: {_link(entry.get('nearest'), entries)}"]
    return (f'<div class="cluster" id="cluster-{entry["id"]}" data-cluster="{entry["id"]}">'
            f"<h3>{_swatch(entry['id'])}{escape(_title(entry))}"
            + (f' <span class="note">(labels: {escape(str(matched))})</span>' if matched is not None else "")
            + "</h3>" f'<p class="facts">{" · ".join(facts)}</p>{picture}</div>')


def gallery_section(run_dir: Path) -> str:
    """Every cluster: sizes, confidence, nearest other cluster, examples; a table first, then the pictures."""
    head = "<h2>Clusters</h2>"
    data = read_json(run_dir / GALLERY)
    if not isinstance(data, dict) or not isinstance(data.get("clusters"), list):
        return head + _note(f"No cluster gallery: {GALLERY} is missing (has the evaluate stage run?).")
    entries = {int(e["id"]): e for e in data["clusters"] if isinstance(e, dict) and isinstance(e.get("id"), int)}
    ordered = sorted(entries.values(), key=lambda e: (-(e.get("pixel_share") or 0), e["id"]))
    has_labels = bool(data.get("has_labels"))
    header = "<tr><th>cluster</th><th>name</th>" + ("<th>matched class</th>" if has_labels else "") + (
        "<th>pixels</th><th>images</th><th>confidence</th><th>nearest</th></tr>")
    rows = "".join(
        f'<tr data-cluster="{e["id"]}"><td>{_swatch(e["id"])}<a href="#cluster-{e["id"]}">{e["id"]}</a></td>'
        f"<td>{escape(str(e.get('name')))}</td>"
        + (f"<td>{escape(str(e.get('matched_class') or 'unmatched'))}</td>" if has_labels else "")
        + f'<td class="num">{_pct(e.get("pixel_share"))}</td><td class="num">{_pct(e.get("image_share"))}</td>'
        f'<td class="num">{_num(e.get("mean_confidence"), 2)}</td><td>{_link(e.get("nearest"), entries)}</td></tr>'
        for e in ordered
    )
    folder = (run_dir / GALLERY).parent
    groups = []
    for start in range(0, len(ordered), GROUP):
        part = ordered[start:start + GROUP]
        cards = "".join(_card(e, entries, folder) for e in part)
        groups.append(f'<details class="group"{" open" if start == 0 else ""}><summary>clusters {start + 1}'
                      f"\u2013{start + len(part)} of {len(ordered)} by size</summary>"
                      f'<div class="clusters">{cards}</div></details>')
    intro = _note(
        f"{len(ordered)} clusters over {data.get('n_images', '?')} val images, largest first. Nearest: the cluster "
        "the probe gives most of the rest of the probability on this cluster's pixels. Pictures: the images where "
        f"the cluster covers most, its region tinted in its colour and outlined in white. Files: {PATHS['gallery']}/. "
        f"Names come from {PATHS['cluster_names']} (`stego names init` writes one)."
    )
    return head + intro + f'<table id="clusters">{header}{rows}</table>' + "".join(groups)
