"""Smoke runs of benchmark scripts (never timed: performance claims live in benchmarks/).

`bench_gpu.py --quick` runs the GPU benchmarks' code on the CPU at tiny sizes and must write
its section, with its tables' columns, into the file `--out` names, replacing an earlier
section there and keeping the rest of the file; benchmarks/results.md is never touched.
`bench_writer.py --quick` must print a writer row per codec and writer count and the
end-to-end extraction rows, each with a rate.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "bench_gpu.py"


def test_bench_gpu_quick_runs(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    out.write_text("# Results\n\nkept above\n\n<!-- bench_gpu:begin -->\nold GPU section\n<!-- bench_gpu:end -->\n\nkept below\n")
    committed = (REPO / "benchmarks" / "results.md").read_bytes()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"bench_gpu.py --quick exited {result.returncode}:\n{result.stderr[-4000:]}"
    text = out.read_text()
    assert text.startswith("# Results\n\nkept above\n") and text.rstrip().endswith("kept below"), "the rest of the file changed"
    assert "old GPU section" not in text and text.count("<!-- bench_gpu:begin -->") == 1, "the old section was not replaced"
    assert "CPU fallback, no CUDA device" in text, "the section must name the device it ran on"
    for header in (
        "| extract | images/s | ratio vs bare forward | goal |",
        "| train | steps/s | ratio vs backbone in the loop | vs in memory | goal |",
        "| reader threads | rows/s | vs 1 reader |",
    ):
        assert header in text, f"missing table {header}"
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    for label in ("bare timm forward", "`extract` stage, steady state", "backbone in the loop (reference)",
                  "stored features, in memory", "stored features, streamed", "| 2 |"):
        row = next((r for r in rows if label in r), None)
        assert row is not None, f"no row for {label!r}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(c.replace(".", "", 1).replace("e-", "", 1).replace("e+", "", 1).isdigit() for c in cells[1:3]), \
            f"row {label!r} lacks numbers: {row}"
    assert (REPO / "benchmarks" / "results.md").read_bytes() == committed, "the committed results.md was modified"


def test_bench_writer_quick_runs_and_prints_both_tables(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_writer.py"), "--quick"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"bench_writer.py --quick exited {result.returncode}:\n{result.stderr[-4000:]}"
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    for codec in ("zstd", "none", "blosc-lz4", "blosc-zstd"):
        for writers in ("1", "2", "4", "zarr's write (before)"):
            row = next((r for r in rows if r.startswith(f"| {codec} | {writers} |")), None)
            assert row is not None, f"no writer row for {codec}, {writers}:\n{result.stdout[-3000:]}"
            rate = row.strip("|").split("|")[2].strip()
            assert rate.replace(".", "", 1).isdigit() and float(rate) > 0, f"row lacks a rate: {row}"
    for case in ("chunks replayed (backbone skipped)", "random ViT-Ti/16"):
        for writers in ("1", "2"):
            assert any(r.startswith(f"| {case}") and f"| {writers} |" in r for r in rows), f"no end-to-end row {case}, {writers}"
