"""Report sections on *how* a run was made: preset, checkpoint selection, probe, shifts, seeds.

Kept apart from `report.py` (layout, metrics, pictures) so each stays small. Every section
reads only what the run wrote: `metrics/scores.json` (its `preset` and `protocol`),
`artifacts/model/shift_stats.json` (the train stage's correlation distributions) and
`metrics/seeds.json` (`stego seeds`).
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from stego_tasks.method.shift_stats import SHIFT_STATS_FILE
from stego_tasks.paths import PATHS
from stego_tasks.runtime.atomic import read_json

SHIFT_STATS = f"{PATHS['model']}/{SHIFT_STATS_FILE}"  # written by the train stage into its model folder
SEEDS = PATHS["seeds"]


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _num(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "\u2013"


def protocol_section(scores: dict[str, Any] | None) -> str:
    """Preset, preprocessing, selection (last vs best side by side when best is on) and probe init."""
    head = '<h2>Protocol</h2>'
    scores = scores or {}
    protocol = scores.get("protocol") or {}
    facts = [
        ("preset", str(scores.get("preset", "not recorded"))),
        ("weights source", str(scores.get("weights_source") or scores.get("backbone_weights") or "not recorded")),
        ("preprocessing", str(scores.get("preprocess") or "not recorded")),
        ("cluster probe", {"codes": "refitted on the final codes (data init, restarts)",
                           "random": "trained from randn centroids beside the head (reference)"}.get(
                               str(protocol.get("probe_init")), "not recorded")),
        ("checkpoint", "best by val cluster mIoU: this choice USED LABELS" if protocol.get("select") == "best"
         else "last step (no labels used)"),
    ]
    shifts = protocol.get("shifts")
    if isinstance(shifts, list):
        facts.append(("shifts", ", ".join(_num(v) for v in shifts) + f" ({protocol.get('shifts_setting', 'fixed')})"))
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    out = head + f'<table id="protocol">{rows}</table>'
    selection = protocol.get("selection") or {}
    if protocol.get("select") == "best" and selection:
        cells = []
        for key, label in (("last", "last step"), ("best", "best step"), ("refit", "best step, probe refitted")):
            entry = selection.get(key)
            if isinstance(entry, dict):
                step = entry.get("step", selection.get("best", {}).get("step"))
                cells.append(f'<tr data-selection="{key}"><th>{label}</th><td class="num">{escape(str(step))}</td>'
                             f'<td class="num">{_num(entry.get("accuracy"))}</td><td class="num">{_num(entry.get("miou"))}</td></tr>')
        out += ('<table id="selection"><tr><th>checkpoint</th><th>step</th><th>val accuracy (%)</th>'
                f'<th>val cluster mIoU (%)</th></tr>{"".join(cells)}</table>'
                + _note("Scored during training on labelled val (no flip, no CRF), as the reference selects checkpoints."))
    return out


def shift_section(run_dir: Path) -> str:
    """The three correlation distributions with the shifts marked (train stage diagnostics)."""
    from stego_tasks.method.shift_stats import LABELS, TERMS, plot_png

    head = "<h2>Shift diagnostics</h2>"
    stats = read_json(run_dir / SHIFT_STATS)
    if not isinstance(stats, dict) or not isinstance(stats.get("terms"), dict):
        return head + _note(f"No shift diagnostics: {SHIFT_STATS} is missing (has the train stage run?).")
    rows = []
    for term in TERMS:
        entry = stats["terms"].get(term, {})
        quantiles = entry.get("quantiles", {})
        rows.append(f'<tr data-term="{term}"><th>{escape(LABELS[term])}</th><td class="num">{_num(stats["shifts"].get(term))}</td>'
                    + "".join(f'<td class="num">{_num(quantiles.get(q))}</td>' for q in ("0.05", "0.5", "0.95"))
                    + f'<td class="num">{_num(100 * entry.get("attract", float("nan")))}</td></tr>')
    image = base64.b64encode(plot_png(stats)).decode("ascii")
    return (head + _note("Feature correlations F of the three pair types on a sample of training batches, before "
                         "training, as the loss draws them; pairs with F above the shift b attract, below repel.")
            + f'<img src="data:image/png;base64,{image}" alt="shift diagnostics">'
            + '<table id="shift-stats"><tr><th>pairs</th><th>shift b</th><th>F 5%</th><th>F median</th><th>F 95%</th>'
            + f'<th>attracting (%)</th></tr>{"".join(rows)}</table>')


def seeds_section(run_dir: Path) -> str:
    """Mean ± sd over seeds, when `stego seeds` has written them."""
    data = read_json(run_dir / SEEDS)
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
        return ""
    rows = "".join(
        f'<tr data-method="{escape(m)}"><th>{escape(m)}</th>'
        + "".join(f'<td class="num">{_num(v.get(k, {}).get("mean"))} ± {_num(v.get(k, {}).get("sd"))}</td>' for k in ("accuracy", "miou"))
        + "</tr>"
        for m, v in data["methods"].items()
    )
    seeds = ", ".join(str(s) for s in data.get("seeds", []))
    return ('<h2>Seeds</h2>' + _note(f"Mean ± sample sd over seeds {seeds} (stego seeds).")
            + f'<table id="seeds"><tr><th>method</th><th>accuracy (%)</th><th>mIoU (%)</th></tr>{rows}</table>')
