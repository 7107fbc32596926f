"""The stage trace against independent measurements: a busy loop's CPU time, a file's size, a big
allocation's memory (provenance has its own tests, `test_provenance.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stego_tasks.runtime.trace import (
    PROC_IO,
    StageTrace,
    io_counters,
    numeric_leaves,
    peak_rss_bytes,
)

HAS_PROC_IO = io_counters() is not None


def _busy(seconds: float) -> int:
    end, n = time.process_time() + seconds, 0
    while time.process_time() < end:
        n += 1
    return n


def test_cpu_and_wall_time_of_a_busy_loop(tmp_path: Path) -> None:
    with StageTrace("busy", tmp_path / "busy.json") as tracer:
        _busy(0.3)
    record = json.loads((tmp_path / "busy.json").read_text())
    assert record == tracer.record, "the file holds the record"
    assert 0.28 <= record["cpu_s"] <= 0.6, f"a 0.3 s busy loop measured {record['cpu_s']} s of CPU"
    assert record["wall_s"] >= record["cpu_s"] * 0.95, f"one thread: wall {record['wall_s']} < CPU {record['cpu_s']}"
    assert record["status"] == "completed" and record["stage"] == "busy"


def test_sleeping_costs_wall_time_but_no_cpu() -> None:
    with StageTrace("sleep") as tracer:
        time.sleep(0.3)
    assert tracer.record["wall_s"] >= 0.29, f"wall {tracer.record['wall_s']}"
    assert tracer.record["cpu_s"] < 0.1, f"sleeping used {tracer.record['cpu_s']} s of CPU"
    assert tracer.record["cpu_percent"] < 30


@pytest.mark.skipif(not HAS_PROC_IO, reason=f"{PROC_IO} is not readable here")
def test_bytes_written_and_read_cover_a_file_the_block_writes_and_reads(tmp_path: Path) -> None:
    payload = np.random.default_rng(0).bytes(3 * 2**20)
    target = tmp_path / "payload.bin"
    with StageTrace("io") as tracer:
        target.write_bytes(payload)
        assert target.read_bytes() == payload
    record = tracer.record
    size = target.stat().st_size
    assert size <= record["write_bytes"] < size + 2**20, f"wrote {size} bytes, trace says {record['write_bytes']}"
    assert size <= record["read_bytes"] < size + 2**20, f"read {size} bytes, trace says {record['read_bytes']}"


def _traced_in_fresh_process(before_mib: int, block_mib: int) -> dict:
    """Run a traced block touching `block_mib` MiB in a new Python, after a peak of `before_mib` MiB.

    Returns:
        The trace record, with "seen": the RSS psutil read inside the block.
    """
    code = "\n".join([
        "import json, numpy as np, psutil",
        "from stego_tasks.runtime.trace import StageTrace",
        f"before = np.ones({before_mib} * 2**20 // 8); before.sum(); del before",
        "with StageTrace('alloc') as t:",
        f"    block = np.ones({block_mib} * 2**20 // 8); block.sum()",
        "    seen = psutil.Process().memory_info().rss / 2**20",
        "print(json.dumps({**t.record, 'seen': seen}))",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_peak_rss_is_at_least_the_rss_seen_during_a_big_allocation() -> None:
    # psutil is the independent reading. A parent as big as pytest must not leak into the
    # child's figure (ru_maxrss would carry it over exec; VmHWM does not).
    record = _traced_in_fresh_process(0, 200)
    peak, seen = record["peak_rss_mb"], record["seen"]
    assert seen >= 200, f"psutil saw {seen} MiB with 200 MiB touched"
    assert peak_rss_bytes() > 0
    # The kernel folds per-thread RSS counters into the high-water mark lazily: a few MiB may lag.
    assert 0.95 * seen <= peak <= seen + 20, f"peak RSS {peak} MiB, psutil saw {seen} MiB inside the block"


def test_peak_rss_is_the_blocks_own_after_a_bigger_earlier_peak() -> None:
    record = _traced_in_fresh_process(300, 50)
    peak = record["peak_rss_mb"]
    if record["peak_rss_scope"] == "block":
        assert peak < 250, f"a 300 MiB peak before the block leaked into its figure: {peak} MiB"
    else:
        assert peak >= 300, f"a process-wide mark must include the earlier 300 MiB: {peak} MiB"


def test_child_processes_cpu_is_counted_apart() -> None:
    code = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    with StageTrace("child") as tracer:
        subprocess.run(["python3", "-c", code], check=True)
    assert tracer.record["children_cpu_s"] >= 0.25, f"child CPU {tracer.record['children_cpu_s']}"
    assert tracer.record["cpu_s"] < 0.2, f"own CPU {tracer.record['cpu_s']} includes the child's"


def test_counts_come_from_the_summary_and_a_failure_is_recorded(tmp_path: Path) -> None:
    summary = {"rows": {"train": 12, "val": 3}, "weights_source": "random", "resumed": False, "steps": 30,
               "in_dim": 192, "cluster": {"miou": 27.2}, "params": {"n_classes": 5}}
    assert numeric_leaves(summary) == {"rows.train": 12, "rows.val": 3, "steps": 30, "in_dim": 192, "cluster.miou": 27.2,
                                       "params.n_classes": 5}
    with pytest.raises(RuntimeError), StageTrace("broken", tmp_path / "broken.json") as tracer:
        tracer.count(summary)
        raise RuntimeError("boom")
    record = json.loads((tmp_path / "broken.json").read_text())
    assert record["status"] == "failed" and record["counts"] == {"rows.train": 12, "rows.val": 3, "steps": 30}


class _FakeCuda:
    """Stands in for torch.cuda on a machine without a GPU: 3 GiB peak, device 1."""

    def __init__(self) -> None:
        self.resets = 0

    def is_initialized(self) -> bool:
        return True

    def reset_peak_memory_stats(self) -> None:
        self.resets += 1

    def max_memory_allocated(self) -> int:
        return 3 * 2**30

    def current_device(self) -> int:
        return 1

    def get_device_name(self, index: int) -> str:
        return f"Fake GPU {index}"


def test_a_process_that_uses_cuda_records_device_peak_and_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    cuda = _FakeCuda()
    fake = types.SimpleNamespace(cuda=cuda, version=types.SimpleNamespace(cuda="12.8"))
    monkeypatch.setitem(sys.modules, "torch", fake)
    with StageTrace("gpu") as tracer:
        pass
    record = tracer.record
    assert cuda.resets == 1, "the peak is reset when the stage starts"
    assert (record["device"], record["gpu_peak_mb"]) == ("cuda:1", 3072.0), record
    assert (record["provenance"]["cuda"], record["provenance"]["gpu"]) == ("12.8", "Fake GPU 1"), record["provenance"]
