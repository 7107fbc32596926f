"""`stego report`: one self-contained HTML page summarising a finished run.

Reads what `dvc repro` left in a run folder (every input optional; a missing one is named on
the page) and writes a single HTML file with no external resources: images are embedded as
base64 `data:` URIs, CSS is inline, and a Content-Security-Policy forbids anything else, so
the page can be mailed, archived or opened offline. The same inputs give the same bytes
(no timestamps; matplotlib with fixed style and no Software metadata).

    metrics/scores.json          metric table, backbone, weights source
    metrics/per_class_iou.json   per-class IoU bars (STEGO + CRF vs the k-means baseline)
    plots/confusion.png          confusion matrix
    plots/train_loss.csv         training-loss curves
    plots/overlays/*.png         image | ground truth | prediction panels
    artifacts/quarantine.csv     files the ingest stage set aside, and why
    artifacts/model/model.json   backbone, weights source, training params
    artifacts/model/shift_stats.json  correlation distributions and shifts (train stage)
    metrics/seeds.json           mean and sd over seeds (`stego seeds`), when present
    metrics/trace/<stage>.json   stage timeline and resource table (every stage but this one)
    dvc.yaml                     the pipeline's DAG (read as it stands: DVC cannot make it a dep)
    plots/gallery/               the cluster gallery (evaluate): every cluster, its size and examples
    params.yaml                  the params used
Provenance (versions, CUDA, GPU, git commit) comes from scores.json's `provenance`.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

from stego_tasks.config import ReportParams
from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.method.metrics import METHODS
from stego_tasks.method.model import MODEL_JSON
from stego_tasks.params_schema import dvc_stages, read_yaml
from stego_tasks.paths import PARAMS_FILE, PATHS
from stego_tasks.runtime import atomic
from stego_tasks.tools.report_dag import dag_section
from stego_tasks.tools.report_gallery import (
    GALLERY,
    GALLERY_CSS,
    gallery_section,
    label_free_section,
)
from stego_tasks.tools.report_protocol import (
    SEEDS,
    SHIFT_STATS,
    protocol_section,
    seeds_section,
    shift_section,
)
from stego_tasks.tools.report_trace import (
    PROVENANCE,
    TRACE_DIR,
    provenance_section,
    timeline_section,
    trace_records,
)
from stego_tasks.tools.visualize import loss_plot_png, read_loss_log

# What the page reads, relative to the run folder (where the stages wrote it: stego_tasks/paths.yaml).
INPUTS: dict[str, str] = {
    **{name: PATHS[name] for name in ("scores", "per_class", "confusion", "loss_log", "overlays", "quarantine")},
    "model": f"{PATHS['model']}/{MODEL_JSON}",
    "params": PARAMS_FILE,
    "shift_stats": SHIFT_STATS,
    "seeds": SEEDS,
    "trace": TRACE_DIR,  # the other stages' trace files in it
    "pipeline": "dvc.yaml",
    "gallery": GALLERY,
}
# (method, label) rows of the page, from the one list of methods (`method/metrics.py`).
METHOD_ROWS = tuple((key, method.label) for key, method in METHODS.items())
DASH = "\u2013"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Correspondence losses and probe losses differ in scale by 10x; one panel each stays readable.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;
padding:0 1rem;color:#1d232b;background:#fff;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #d5dae1;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #d5dae1;padding:.3rem .7rem;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f1f4f8}
.banner{background:#fff1d6;border:2px solid #d98a00;padding:.8rem 1rem;margin:1rem 0;font-weight:600}
.note{color:#5a6470;font-style:italic}
.bar{display:inline-block;height:.8rem;vertical-align:middle;margin-right:.4rem}
.bar.stego{background:#2f6fbf}.bar.baseline{background:#c9742b}.barcell{width:18rem}
.overlays{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1rem}
figure{margin:0}figcaption{font-size:.85rem;color:#5a6470}
img{max-width:100%;image-rendering:pixelated}pre{background:#f6f8fa;padding:.8rem;overflow-x:auto}
"""
# Sets data-images-ok="N/M" on <body> once every image has loaded (headless checks read it).
IMAGES_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images-ok", ok + "/" + images.length);
});
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def format_number(value: Any, digits: int = 2, scale: float = 1.0) -> str:
    """`value * scale` with `digits` decimals, or an en dash for a missing / null / NaN value."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return DASH
    return f"{value * scale:.{digits}f}"


def png_data_uri(data: bytes) -> str:
    """A `data:image/png;base64,...` URI holding `data` (PNG bytes) unchanged."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _read_png(path: Path) -> bytes | None:
    data = path.read_bytes() if path.is_file() else b""
    return data if data.startswith(PNG_SIGNATURE) else None


def _image(data: bytes, alt: str) -> str:
    return f'<img src="{png_data_uri(data)}" alt="{escape(alt)}">'


def _weights(scores: dict, model: dict) -> tuple[bool | None, str]:
    """(random?, text): random when either file says so; None when neither records it."""
    detail = model.get("backbone_weights")
    summary = scores.get("backbone_weights")
    if "random" in (detail, summary):
        return True, "random weights"
    if detail is None and summary is None:
        return None, "weights source not recorded"
    return False, f"pretrained weights ({detail})" if detail else "pretrained weights"


def _header(scores: dict, model: dict) -> tuple[str, str]:
    backbone = str(scores.get("backbone") or model.get("backbone") or "unknown backbone")
    is_random, weights = _weights(scores, model)
    title = f"STEGO run report: {backbone}, {weights}"
    parts = [f"<h1>{escape(title)}</h1>"]
    if is_random:
        parts.append(
            '<div class="banner" id="random-weights-warning" role="alert">Warning: the backbone ran on '
            "RANDOM weights. These numbers only show that the pipeline runs; they say nothing about "
            "STEGO. Set backbone.weights to a DINO checkpoint for real results.</div>"
        )
    facts = [("preset", str(scores.get("preset", "not recorded"))), ("backbone", backbone), ("weights", weights)]
    if "n_images" in scores:
        facts.append(("validation images scored", str(scores["n_images"])))
    if scores.get("has_labels") is False:
        # No labels: the params' class names (perhaps the demo's) name nothing in this run.
        facts.append(("classes", "none (no labels): clusters show their ids and the names in "
                                 f"{PATHS['cluster_names']}"))
    elif isinstance(model.get("class_names"), list):
        facts.append(("classes", ", ".join(str(name) for name in model["class_names"])))
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    parts.append(f'<table id="summary">{rows}</table>')
    return title, "".join(parts)


def _metrics_section(scores: dict | None) -> str:
    head = "<h2>Scores</h2>"
    if scores is None:
        return head + _note(f"No scores: {INPUTS['scores']} is missing (has the evaluate stage run?).")
    if not any(isinstance(scores.get(method), dict) for method, _ in METHOD_ROWS):
        return head + _note("No scores: the validation images have no labels, so nothing could be scored.")
    rows = []
    # The user's naming (cluster_names.yaml) is scored only where names are class names.
    named = [("named", "cluster + CRF, your names")] if isinstance(scores.get("named"), dict) else []
    for method, label in (*METHOD_ROWS, *named):
        entry = scores.get(method) if isinstance(scores.get(method), dict) else {}
        cells = "".join(
            f'<td class="num" data-metric="{key}">{format_number(entry.get(key))}</td>' for key in ("accuracy", "miou")
        )
        rows.append(f'<tr data-method="{method}"><th>{escape(label)}</th>{cells}</tr>')
    return (
        head + '<table id="metrics"><tr><th>method</th><th>accuracy (%)</th><th>mIoU (%)</th></tr>'
        + "".join(rows) + "</table>"
        + _note("Cluster and k-means predictions are Hungarian-matched to the classes; the linear probe is supervised.")
    )


def _class_order(per_class: dict[str, dict], model: dict) -> list[str]:
    names = [str(name) for name in model.get("class_names") or []]
    for method, table in per_class.items():
        if method == PROVENANCE:
            continue
        names += [name for name in table if name not in names]
    return names


def _bar_cell(value: Any, kind: str) -> str:
    text = format_number(value, digits=1, scale=100.0)
    if text == DASH:
        return f'<td class="barcell">{DASH}</td>'
    width = min(max(float(value), 0.0), 1.0) * 14  # rem; the cell is 18rem wide
    return f'<td class="barcell"><span class="bar {kind}" style="width:{width:.2f}rem"></span>{text}</td>'


def _per_class_section(per_class: dict | None, model: dict) -> str:
    head = "<h2>Per-class IoU</h2>"
    tables = {k: v for k, v in (per_class or {}).items() if isinstance(v, dict) and k != PROVENANCE}
    if not tables:
        missing = per_class is None
        return head + _note(f"No per-class IoU: {INPUTS['per_class']} is missing." if missing
                            else "No per-class IoU: the validation images have no labels.")
    stego = next((m for m in ("cluster_crf", "cluster") if m in tables), None)
    labels = dict(METHOD_ROWS)
    columns = [(m, f"STEGO, {labels[m]}" if kind == "stego" else labels[m], kind)
               for m, kind in ((stego, "stego"), ("kmeans", "baseline")) if m in tables]
    header = "".join(f"<th>{escape(label)}: IoU (%)</th>" for _, label, _ in columns)
    rows = []
    for name in _class_order(tables, model):
        cells = "".join(_bar_cell(tables[m].get(name), kind) for m, _, kind in columns)
        rows.append(f'<tr data-class="{escape(name)}"><th>{escape(name)}</th>{cells}</tr>')
    return head + f'<table id="per-class"><tr><th>class</th>{header}</tr>{"".join(rows)}</table>'


def _confusion_section(run_dir: Path, scores: dict | None) -> str:
    head = "<h2>Confusion matrix</h2>"
    if scores is not None and not any(isinstance(scores.get(m), dict) for m, _ in METHOD_ROWS):
        return head + _note("No confusion matrix: the validation images have no labels.")
    data = _read_png(run_dir / INPUTS["confusion"])
    if data is None:
        return head + _note(f"No confusion matrix: {INPUTS['confusion']} is missing or not a PNG.")
    return head + _note("Rows: true class; columns: the cluster matched to each class (row-normalised).") + _image(
        data, "confusion matrix"
    )


def _loss_section(run_dir: Path) -> str:
    head = "<h2>Training losses</h2>"
    path = run_dir / INPUTS["loss_log"]
    if not path.is_file():
        return head + _note(f"No training-loss log: {INPUTS['loss_log']} is missing.")
    columns = read_loss_log(path)
    if "step" not in columns or not columns["step"] or len(columns) < 2:
        return head + _note(f"No training-loss curves: {INPUTS['loss_log']} has no logged steps.")
    last = "".join(
        f'<td class="num" data-loss="{escape(name)}">{format_number(values[-1], digits=4)}</td>'
        for name, values in columns.items() if name != "step"
    )
    names = "".join(f"<th>{escape(name)}</th>" for name in columns if name != "step")
    table = (f'<table id="final-losses"><tr><th>last step</th>{names}</tr>'
             f'<tr><td class="num">{format_number(columns["step"][-1], digits=0)}</td>{last}</tr></table>')
    return head + _image(loss_plot_png(columns), "training loss curves") + table


def _overlays_section(run_dir: Path, max_overlays: int, has_labels: bool = True) -> str:
    head = "<h2>Predictions</h2>"
    folder = run_dir / INPUTS["overlays"]
    paths = sorted(folder.glob("*.png")) if folder.is_dir() else []
    pictures = [(path.name, data) for path in paths if (data := _read_png(path)) is not None]
    if not pictures:
        return head + _note(f"No overlays: {INPUTS['overlays']}/ is missing or holds no PNG.")
    shown = pictures[:max_overlays]
    figures = "".join(
        f"<figure>{_image(data, f'overlay {name}')}<figcaption>{escape(name)}</figcaption></figure>"
        for name, data in shown
    )
    more = f" Showing the first {len(shown)} of {len(pictures)}." if len(pictures) > len(shown) else ""
    layout = ("image | ground truth | prediction (black: ignored pixels)" if has_labels
              else "image | clusters (colours as in the gallery; no labels)")
    return head + _note(f"Each panel: {layout}.{more}") + (
        f'<div class="overlays">{figures}</div>'
    )


def _quarantine_section(run_dir: Path, max_rows: int) -> str:
    head = "<h2>Quarantined files</h2>"
    path = run_dir / INPUTS["quarantine"]
    if not path.is_file():
        return head + _note(f"No quarantine list: {INPUTS['quarantine']} is missing.")
    _, rows = atomic.read_csv_rows(path)
    if not rows:
        return head + '<p id="quarantine-empty">Nothing quarantined.</p>'
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(row.get(key) or ''))}</td>" for key in ("path", "split", "reason")) + "</tr>"
        for row in rows[:max_rows]
    )
    more = _note(f"Showing the first {max_rows} of {len(rows)}.") if len(rows) > max_rows else ""
    return (head + f"<p>{len(rows)} file{'s' if len(rows) != 1 else ''} set aside by the ingest stage.</p>"
            + f'<table id="quarantine"><tr><th>path</th><th>split</th><th>reason</th></tr>{body}</table>' + more)


def _params_section(run_dir: Path, model: dict | None) -> str:
    head = "<h2>Parameters</h2>"
    blocks = []
    params = run_dir / INPUTS["params"]
    if params.is_file():
        text = params.read_text(encoding="utf-8", errors="replace")
        blocks.append(f"<details><summary>{INPUTS['params']}</summary><pre>{escape(text)}</pre></details>")
    if model is not None:
        text = json.dumps(model, indent=2, sort_keys=True)
        blocks.append(f"<details><summary>{INPUTS['model']}</summary><pre>{escape(text)}</pre></details>")
    return head + ("".join(blocks) or _note(f"No params: {INPUTS['params']} and {INPUTS['model']} are missing."))


def _dag_section(run_dir: Path) -> str:
    pipeline, params = run_dir / INPUTS["pipeline"], run_dir / INPUTS["params"]
    values = read_yaml(params) if params.is_file() else None
    stages = (dvc_stages(pipeline, "restore the project's dvc.yaml (`python -m flows.dvc_yaml` writes it)")
              if pipeline.is_file() else None)
    return dag_section(stages, values if isinstance(values, dict) else None)


def render(run_dir: Path, params: ReportParams | None = None) -> str:
    """The report page for a run folder, as HTML text.

    Args:
        run_dir: project folder of a run (holding metrics/, plots/, artifacts/, params.yaml).
        params: the `report` block (how many overlays and quarantine rows); None: defaults.

    Returns:
        The complete, self-contained HTML document.

    Raises:
        FileNotFoundError: `run_dir` is not a folder.
        ValueError: `run_dir` holds none of the inputs, or a JSON input is malformed.
    """
    return _render(Path(run_dir), params or ReportParams())[0]


def _render(run_dir: Path, params: ReportParams) -> tuple[str, bool]:
    """(page, whether the backbone weights were random); see `render`."""
    if not run_dir.is_dir():
        raise MissingInputError(f"Run folder {run_dir} does not exist; pass --run with a project folder after `dvc repro`.")
    if not any((run_dir / relative).exists() for relative in INPUTS.values()):
        raise InvalidInputError(
            f"{run_dir} holds none of a run's outputs ({', '.join(INPUTS.values())}); "
            "run `dvc repro` there first or pass --run with a finished run folder."
        )
    scores = atomic.read_json(run_dir / INPUTS["scores"])
    model = atomic.read_json(run_dir / INPUTS["model"])
    per_class = atomic.read_json(run_dir / INPUTS["per_class"])
    scores = scores if isinstance(scores, dict) else None
    model = model if isinstance(model, dict) else None
    traces = trace_records(run_dir)
    is_random = bool(_weights(scores or {}, model or {})[0])
    title, header = _header(scores or {}, model or {})
    sections = [
        header,
        _metrics_section(scores),
        label_free_section(scores, run_dir),
        seeds_section(run_dir),
        protocol_section(scores),
        shift_section(run_dir),
        _per_class_section(per_class if isinstance(per_class, dict) else None, model or {}),
        _confusion_section(run_dir, scores),
        _loss_section(run_dir),
        gallery_section(run_dir),
        _overlays_section(run_dir, params.max_overlays, (scores or {}).get("has_labels") is not False),
        _quarantine_section(run_dir, params.max_quarantine_rows),
        _dag_section(run_dir),
        timeline_section(traces),
        provenance_section(scores, traces),
        _params_section(run_dir, model),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}{GALLERY_CSS}</style><script>{IMAGES_SCRIPT}</script></head>\n"
        "<body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    return page, is_random


def report(run_dir: Path, out_path: Path, params: ReportParams | None = None) -> dict[str, Any]:
    """Stage `report`: write the self-contained HTML page of the run in `run_dir` to `out_path`, atomically.

    Args:
        run_dir: project folder of a finished (or partly finished) run.
        out_path: HTML file to write (its folder is created).
        params: the `report` block; None: defaults.

    Returns:
        {"out": the page's path, "random_weights": whether the backbone ran on random weights}.

    Raises:
        FileNotFoundError, ValueError: as `render`; nothing is written then.
    """
    page, is_random = _render(Path(run_dir), params or ReportParams())
    atomic.write_text(out_path, page)
    return {"out": str(out_path), "random_weights": is_random}
