"""End-to-end on the tiny DVC project: the keys that only say how many threads read, decode or
write (the `runtime` block: `readers`, `decode_workers`, `writers`, `crf_workers`) make no stage stale (but `report`, which reads
params.yaml whole), while a key beside them in
the same block (`extract.compression`) still does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tiny_project import set_params

from tests.conftest import always_changed, dvc_repro

pytestmark = pytest.mark.slow


def test_reader_decoder_and_writer_counts_make_no_stage_stale(project_copy: Path, project_env: dict[str, str]) -> None:
    set_params(project_copy, {("runtime", "readers"): 5, ("runtime", "decode_workers"): 3, ("runtime", "writers"): 3,
                              ("runtime", "crf_workers"): 2})
    result = dvc_repro(project_copy, project_env)
    ran = re.findall(r"^Running stage '([^']+)':", result.stdout, flags=re.MULTILINE)
    # `report` depends on params.yaml as a whole file (the page shows it), so it alone re-runs.
    assert set(ran) <= {"report"} | always_changed(project_copy), (
        f"changing the runtime block ran {ran}:\n{result.stdout}"
    )


def test_a_compression_change_is_stale_for_extract(project_copy: Path, project_env: dict[str, str]) -> None:
    from dvc.repo import Repo

    set_params(project_copy, {("extract", "compression"): "none"})
    with Repo(str(project_copy)) as repo:
        stale = {name.rsplit(":", 1)[-1] for name in repo.status()}
    assert "extract" in stale, f"extract.compression must make extract stale; dvc status: {sorted(stale)}"
