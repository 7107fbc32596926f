"""Progress lines when not on a terminal: rate, ETA, and no duplicate final line."""

from __future__ import annotations

import logging

import pytest

from stego_tasks.runtime.progress import Progress


def test_log_lines_report_count_rate_and_no_duplicate_final(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stego")
    with Progress(4, "extract train", unit="img", log_every_s=3600) as progress:
        for _ in range(4):
            progress.update(1, loss=0.5)
    lines = [r.getMessage() for r in caplog.records if r.name == "stego"]
    assert len(lines) == 1, f"expected only the final line (interval not reached), got {lines}"
    assert lines[0].startswith("extract train: 4/4 img ("), f"unexpected line {lines[0]!r}"
    assert "img/s, ETA 0 s" in lines[0] and "loss=0.5" in lines[0], f"missing rate/ETA/postfix in {lines[0]!r}"


def test_close_logs_partial_progress(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stego")
    progress = Progress(10, "train", unit="step", log_every_s=3600)
    progress.update(3)
    progress.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "stego"]
    assert len(lines) == 1 and lines[0].startswith("train: 3/10 step"), f"got {lines}"
