"""Tests for stego_tasks.report: the self-contained HTML page of a run.

Every test builds its own tiny run folder; the browser test opens the page in headless
Chromium (skipped when it is not installed).
"""

from __future__ import annotations

import base64
import io
import json
import re
from decimal import ROUND_HALF_EVEN, Decimal
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows import stage_functions
from flows.cli import _parser, main
from stego_tasks.config import ReportParams
from stego_tasks.errors import InvalidInputError
from stego_tasks.report import format_number, render, report
from tests.browser import SKIP_REASON, chromium_available, run_chromium

DASH = "\u2013"
CLASSES = ["sky", "grass", 'road <b>&"wet"</b>']
SCORES = {
    "backbone": "dino_vits8",
    "backbone_weights": "random",
    "n_images": 3,
    "cluster": {"accuracy": 61.2345, "miou": 40.5},
    "cluster_crf": {"accuracy": 62.0, "miou": None},
    "linear": {"accuracy": 70.987, "miou": 55.555},
    "kmeans": {"accuracy": 50.004, "miou": 30.0},
    # linear_crf missing on purpose
}
PER_CLASS = {
    "cluster": {CLASSES[0]: 0.11, CLASSES[1]: 0.22, CLASSES[2]: 0.33},
    "cluster_crf": {CLASSES[0]: 0.5, CLASSES[1]: None, CLASSES[2]: 0.875},
    "kmeans": {CLASSES[0]: 0.25, CLASSES[1]: 1.0, CLASSES[2]: 0.0},
}
LOSS_CSV = "step,total,intra,inter,neg,cluster,linear\n0,-0.1,-0.2,-0.3,0.05,-0.1,1.5\n10,nan,-0.25,-0.35,0.04,-0.2,1.2\n20,-0.4,-0.3,-0.4,0.03,-0.3,0.987654\n"
QUARANTINE = [("images/train/bad<script>alert(1)</script>.jpg", "train", "cannot decode: truncated & broken")]


def _png(path: Path, seed: int, size: tuple[int, int] = (12, 8)) -> bytes:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def make_run(root: Path, weights: str = "random", quarantine: list[tuple[str, str, str]] | None = None) -> Path:
    """A tiny but complete run folder, as `dvc repro` leaves it."""
    scores = {**SCORES, "backbone_weights": "random" if weights == "random" else "pretrained"}
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "scores.json").write_text(json.dumps(scores))
    (root / "metrics" / "per_class_iou.json").write_text(json.dumps(PER_CLASS))
    _png(root / "plots" / "confusion.png", seed=1, size=(30, 30))
    for index in range(3):
        _png(root / "plots" / "overlays" / f"{index:04d}.png", seed=10 + index, size=(36, 12))
    (root / "plots" / "train_loss.csv").write_text(LOSS_CSV)
    (root / "artifacts" / "model").mkdir(parents=True)
    rows = "".join(f'"{p}",{s},{r}\n' for p, s, r in (QUARANTINE if quarantine is None else quarantine))
    (root / "artifacts" / "quarantine.csv").write_text("path,split,reason\n" + rows)
    model = {"backbone": "dino_vits8", "backbone_weights": weights, "class_names": CLASSES, "train": {"steps": 20}}
    (root / "artifacts" / "model" / "model.json").write_text(json.dumps(model))
    (root / "params.yaml").write_text("seed: 0\ntrain:\n  steps: 20  # <tiny>\n")
    return root


class Page(HTMLParser):
    """What the tests read from the HTML: cells by data-* attributes, images, ids, text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.ids: set[str] = set()
        self.cells: dict[tuple[str, ...], str] = {}
        self.class_rows: dict[str, list[str]] = {}
        self.bar_widths: dict[str, list[str]] = {}
        self.text: list[str] = []
        self._row: tuple[str, str] | None = None
        self._cell: tuple[str, ...] | None = None
        self._buffer: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"] or "")
        if tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "tr" and "data-method" in a:
            self._row = ("method", a["data-method"] or "")
        elif tag == "tr" and "data-class" in a:
            self._row = ("class", a["data-class"] or "")
            self.class_rows[self._row[1]] = []
            self.bar_widths[self._row[1]] = []
        elif tag == "td" and self._row and self._row[0] == "method":
            self._cell, self._buffer = (self._row[1], a.get("data-metric") or ""), []
        elif tag == "td" and self._row and self._row[0] == "class":
            self._cell, self._buffer = ("class", self._row[1]), []
        elif tag == "td" and "data-loss" in a:
            self._cell, self._buffer = ("loss", a["data-loss"] or ""), []
        elif tag == "span" and self._row and self._row[0] == "class":
            self.bar_widths[self._row[1]].append(re.search(r"width:([\d.]+)rem", a.get("style") or "").group(1))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            text = "".join(self._buffer).strip()
            if self._cell[0] == "class":
                self.class_rows[self._cell[1]].append(text)
            else:
                self.cells[self._cell] = text
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._buffer.append(data)


def _fixed(value: float, step: str) -> str:
    # Decimal rounds the float's exact binary value, half to even: what printf-style formatting does.
    return str(Decimal(value).quantize(Decimal(step), rounding=ROUND_HALF_EVEN))


def _decode(uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), f"image source is not an embedded PNG: {uri[:40]!r}"
    return base64.b64decode(uri[len(prefix):], validate=True)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


def test_format_number_dashes_missing_values() -> None:
    for value in (None, float("nan"), float("inf"), "12", True):
        assert format_number(value) == DASH, f"{value!r} should show as a dash"
    assert format_number(59.5608) == "59.56", "two decimals by default"
    assert format_number(0.5607, digits=1, scale=100) == "56.1", "scaled to percent"
    assert format_number(3) == "3.00", "integers are numbers too"


def test_metric_table_equals_scores_json(run_dir: Path) -> None:
    page = Page(render(run_dir))
    for method in ("cluster", "cluster_crf", "linear", "linear_crf", "kmeans"):
        for metric in ("accuracy", "miou"):
            value = SCORES.get(method, {}).get(metric)
            expected = DASH if value is None else _fixed(value, "0.01")
            got = page.cells.get((method, metric))
            assert got == expected, f"{method} {metric}: page shows {got!r}, scores.json says {value!r}"


def test_per_class_bars_compare_cluster_crf_with_kmeans(run_dir: Path) -> None:
    page = Page(render(run_dir))
    assert list(page.class_rows) == CLASSES, f"rows follow model.json's class order, got {list(page.class_rows)}"
    for name in CLASSES:
        expected = [DASH if PER_CLASS[m][name] is None else _fixed(100 * PER_CLASS[m][name], "0.1")
                    for m in ("cluster_crf", "kmeans")]
        assert page.class_rows[name] == expected, f"class {name!r}: {page.class_rows[name]} != {expected}"
        widths = [float(w) for w in page.bar_widths[name]]
        lengths = [14 * PER_CLASS[m][name] for m in ("cluster_crf", "kmeans") if PER_CLASS[m][name] is not None]
        assert np.allclose(widths, lengths, atol=0.01), f"class {name!r}: bar widths {widths} != {lengths} rem"


def test_embedded_images_are_the_source_pngs(run_dir: Path) -> None:
    page = Page(render(run_dir))
    decoded = [_decode(src) for src in page.images]
    sources = [run_dir / "plots" / "confusion.png", *sorted((run_dir / "plots" / "overlays").glob("*.png"))]
    for source in sources:
        assert source.read_bytes() in decoded, f"{source.name} is not embedded byte for byte"
    assert len(decoded) == len(sources) + 1, f"expected the sources plus one loss chart, got {len(decoded)} images"
    for data in decoded:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.width > 0, "every embedded image decodes as a PNG"


def test_loss_curves_and_last_values(run_dir: Path) -> None:
    page = Page(render(run_dir))
    last = dict(zip(LOSS_CSV.splitlines()[0].split(","), LOSS_CSV.splitlines()[-1].split(","), strict=True))
    for name in ("total", "intra", "inter", "neg", "cluster", "linear"):
        assert page.cells[("loss", name)] == _fixed(float(last[name]), "0.0001"), f"last {name} loss differs from the CSV"
    sources = {path.read_bytes() for path in (run_dir / "plots").rglob("*.png")}
    charts = [data for data in map(_decode, page.images) if data not in sources]
    assert len(charts) == 1, f"expected one loss chart besides the source PNGs, got {len(charts)}"
    with Image.open(io.BytesIO(charts[0])) as chart:
        colours = np.unique(np.asarray(chart.convert("RGB")).reshape(-1, 3), axis=0)
    assert len(colours) > 10, f"the loss chart looks blank ({len(colours)} colours)"


def test_text_from_files_is_escaped(run_dir: Path) -> None:
    html = render(run_dir)
    assert "<script>alert" not in html, "a quarantined path reached the page unescaped"
    assert "<b>&" not in html, "a class name reached the page unescaped"
    text = "".join(Page(html).text)
    assert QUARANTINE[0][0] in text and QUARANTINE[0][2] in text, "the quarantine row is shown (as text)"
    assert CLASSES[2] in text, "the odd class name is shown (as text)"
    assert "steps: 20  # <tiny>" in text, "params.yaml is shown verbatim"


def test_random_weights_banner(tmp_path: Path) -> None:
    random_page = Page(render(make_run(tmp_path / "random")))
    assert "random-weights-warning" in random_page.ids, "random weights must raise a banner"
    pretrained_html = render(make_run(tmp_path / "pretrained", weights="file:/models/dino.pth"))
    assert "random-weights-warning" not in Page(pretrained_html).ids, "no banner for pretrained weights"
    assert "<title>STEGO run report: dino_vits8, pretrained weights (file:/models/dino.pth)</title>" in pretrained_html, (
        "the title names the backbone and where its weights came from"
    )


def test_page_is_self_contained_and_deterministic(run_dir: Path, tmp_path: Path) -> None:
    first = Path(report(run_dir, tmp_path / "a" / "report.html")["out"])
    second = Path(report(run_dir, tmp_path / "b" / "report.html")["out"])
    assert first.read_bytes() == second.read_bytes(), "the same run gave two different pages"
    html = first.read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links and all(link.startswith("data:") for link in links), f"external references: {links}"
    assert "http://" not in html and "https://" not in html, "the page mentions a remote URL"
    assert [p.name for p in first.parent.iterdir()] == ["report.html"], "a temporary file was left behind"


def test_quarantine_table_or_nothing(tmp_path: Path) -> None:
    page = Page(render(make_run(tmp_path / "some")))
    assert "quarantine" in page.ids and "quarantine-empty" not in page.ids, "a quarantined file gets a table"
    clean = Page(render(make_run(tmp_path / "none", quarantine=[])))
    assert "quarantine-empty" in clean.ids and "quarantine" not in clean.ids, "an empty list says nothing was quarantined"
    assert "Nothing quarantined." in "".join(clean.text), "the empty-quarantine sentence is shown"


def test_missing_inputs_are_named_not_fatal(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    # As evaluate leaves an unlabelled corpus: scores without methods, no per-class IoU, a blank matrix.
    (run / "metrics" / "scores.json").write_text(json.dumps({"backbone": "dino_vits8", "backbone_weights": "random"}))
    (run / "metrics" / "per_class_iou.json").write_text("{}")
    (run / "plots" / "train_loss.csv").unlink()
    page = Page(render(run))
    text = "".join(page.text)
    assert "metrics" not in page.ids, "no metric table without labels"
    assert "the validation images have no labels" in text, "the page says why there are no scores"
    assert "train_loss.csv is missing" in text, "the page names the missing loss log"
    assert len(page.images) == 3, f"only the 3 overlays remain (no blank confusion matrix), got {len(page.images)}"


def test_empty_or_missing_run_folder_is_one_sentence(tmp_path: Path) -> None:
    out = tmp_path / "out.html"
    out.write_text("old")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds none of a run's outputs") as error:
        report(tmp_path / "empty", out)
    message = str(error.value)
    assert "\n" not in message and message.endswith(".") and str(tmp_path / "empty") in message, message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report(tmp_path / "nowhere", out)
    assert out.read_text() == "old", "a failed report must leave the old page alone"


def test_malformed_json_is_one_sentence(run_dir: Path) -> None:
    (run_dir / "metrics" / "scores.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"scores\.json is not valid JSON"):
        render(run_dir)


def test_cli_arguments(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    defaults = _parser("report").parse_args(["report"])
    assert (defaults.run, defaults.out) == (".", "reports/report.html"), "documented defaults"
    assert defaults.trace == "metrics/trace/report.json", "the trace's documented default"
    out, trace = tmp_path / "reports" / "report.html", tmp_path / "trace" / "report.json"
    assert main(["report", "--no-prefect", "--run", str(run_dir), "--out", str(out), "--trace", str(trace)]) == 0, "exit 0"
    assert out.read_text(encoding="utf-8") == render(run_dir), "the CLI writes the rendered page"
    record = json.loads(trace.read_text())
    assert record["stage"] == "report" and record["status"] == "completed" and record["wall_s"] > 0, record
    printed = capsys.readouterr().out
    assert str(out) in printed and "RANDOM" in printed, f"the summary names the page and random weights: {printed!r}"


def test_overlays_and_quarantine_rows_capped_by_the_report_block(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", quarantine=[("images/train/x.jpg", "train", "empty file")] * 3)
    (run / "params.yaml").write_text("report:\n  max_overlays: 2\n  max_quarantine_rows: 1\n")
    page = Page(render(run, ReportParams(max_overlays=2, max_quarantine_rows=1)))
    assert len(page.images) == 2 + 2, "2 overlays + confusion + loss chart"
    text = "".join(page.text)
    assert "Showing the first 2 of 3." in text, "the page says overlays were left out"
    assert "Showing the first 1 of 3." in text, "the page says quarantine rows were left out"
    # The stage reads the block from the params file it is given.
    out = tmp_path / "page.html"
    stage_functions.report(str(run / "params.yaml"), str(run), str(out))
    assert out.read_text(encoding="utf-8") == render(run, ReportParams(max_overlays=2, max_quarantine_rows=1))


@pytest.mark.skipif(not chromium_available(), reason=SKIP_REASON)
def test_page_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    page = Path(report(run_dir, tmp_path / "report.html")["out"])
    n_images = len(Page(page.read_text(encoding="utf-8")).images)
    dom = run_chromium(page, "--virtual-time-budget=5000", "--dump-dom", timeout=90)
    assert dom.returncode == 0, f"chromium --dump-dom failed: {dom.stderr[-2000:]}"
    assert '<table id="metrics">' in dom.stdout and "61.23" in dom.stdout, "the rendered DOM holds the metric table"
    found = re.search(r'<body[^>]*data-images-ok="(\d+)/(\d+)"', dom.stdout)
    assert found, f"the on-load image check did not run: {dom.stdout[:300]!r}"
    loaded, total = map(int, found.groups())
    assert loaded == total == n_images > 0, f"{loaded} of {total} images loaded (page has {n_images})"

    shot = tmp_path / "shot.png"
    result = run_chromium(page, f"--screenshot={shot}", "--window-size=1200,3000", timeout=90)
    assert result.returncode == 0 and shot.is_file(), f"chromium --screenshot failed: {result.stderr[-2000:]}"
    with Image.open(shot) as picture:
        assert picture.size == (1200, 3000), f"screenshot size {picture.size}"
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 1, "the screenshot is blank"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("artifacts/quarantine.csv", b"\x8f\xa0path,split\n", r"quarantine\.csv is not a readable CSV file"),
    ("plots/train_loss.csv", b"step,loss\n1,\xe6\n", r"train_loss\.csv is not a readable CSV file"),
    ("dvc.yaml", b"stages: [\n", r"dvc\.yaml: line 2, column 1: .*; fix the YAML there"),
    ("dvc.yaml", b"\xff\xfe garbage", r"dvc\.yaml is not UTF-8 text"),
    ("dvc.yaml", b"- a\n", r"dvc\.yaml does not hold DVC stages"),
])
def test_a_damaged_csv_or_yaml_input_is_one_sentence(run_dir: Path, name: str, content: bytes, message: str) -> None:
    """Not UTF-8, not CSV or not YAML: refused in one sentence naming the file, like a damaged JSON input."""
    (run_dir / name).write_bytes(content)
    with pytest.raises(InvalidInputError, match=message) as error:
        render(run_dir)
    assert "\n" not in str(error.value), str(error.value)
