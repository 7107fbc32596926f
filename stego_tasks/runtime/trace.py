"""What a stage run cost, as Nextflow's trace records it: one JSON per stage, a DVC metric.

`StageTrace` measures the code run inside its `with` block:

    wall_s          elapsed time (monotonic clock)
    cpu_s           CPU time of this process, all its threads (user + system)
    cpu_percent     cpu_s / wall_s x 100 (above 100 when threads ran in parallel)
    children_cpu_s  CPU time of child processes that ended inside the block and were
                    waited for (a process pool, `git`); processes on other machines or a
                    Dask cluster that outlive the block are not counted
    peak_rss_mb     this process's peak resident memory inside the block: the kernel's
                    high-water mark VmHWM, reset when the block starts (`peak_rss_scope`
                    "block"). Where it cannot be reset, VmHWM since the process started
                    ("process"); without /proc, ru_maxrss ("process"), which Linux also
                    carries over from the parent across exec. Child processes' peaks are
                    not recorded: their ru_maxrss inherits the parent's across exec, so it
                    would report this process's size, not theirs
    read_bytes / write_bytes       bytes this process read and wrote through system
                    calls (/proc/self/io rchar / wchar: files, pipes and sockets, page cache included)
    disk_read_bytes / disk_write_bytes  the part that reached the storage layer
    device          "cpu", or the CUDA device when this process initialised CUDA, with
    gpu_peak_mb     torch.cuda.max_memory_allocated over the block
    counts          what the stage processed, from its summary: the numbers under an item
                    name of `COUNT_KEYS` (images, rows, steps, chunks, ...), not its scores
                    or settings

On a system without /proc (not Linux) the byte counts are null.
"""

from __future__ import annotations

import datetime
import logging
import resource
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from stego_tasks.runtime import atomic
from stego_tasks.runtime.provenance import provenance

PROC_IO = Path("/proc/self/io")
PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
_IO_FIELDS = {"rchar": "read_bytes", "wchar": "write_bytes", "read_bytes": "disk_read_bytes",
              "write_bytes": "disk_write_bytes"}
# Summary keys that count processed items; `counts` keeps the numbers under one of these names.
COUNT_KEYS = frozenset({
    "images", "rows", "steps", "clusters", "chunks_computed", "chunks_total", "n_images", "n_labelled", "n_new",
    "n_kept", "n_removed", "n_quarantined", "n_skipped", "n_train", "n_val",
})
# ru_maxrss is in kibibytes on Linux, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024

log = logging.getLogger("stego")


def io_counters(path: Path = PROC_IO) -> dict[str, int] | None:
    """This process's cumulative I/O byte counts ({"read_bytes", "write_bytes", "disk_read_bytes",
    "disk_write_bytes"}), or None where /proc/self/io cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return None
    counters = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in _IO_FIELDS:
            counters[_IO_FIELDS[name.strip()]] = int(value)
    return counters


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """This process's VmHWM in bytes, or ru_maxrss where /proc/self/status cannot be read."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT


def numeric_leaves(summary: Any, prefix: str = "") -> dict[str, float]:
    """The numbers of a stage's summary, flattened to dotted keys ({"rows": {"train": 3}} -> {"rows.train": 3}).

    Booleans, strings and lists are left out: they are not counts.
    """
    if isinstance(summary, dict):
        found: dict[str, float] = {}
        for key, value in summary.items():
            found.update(numeric_leaves(value, f"{prefix}{key}."))
        return found
    if isinstance(summary, (int, float)) and not isinstance(summary, bool):
        return {prefix.rstrip("."): summary}
    return {}


def _mb(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def _cuda() -> Any:
    # Only a process that already uses CUDA is asked about it; tracing never initialises it.
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_initialized() else None


class StageTrace:
    """Measure one stage run; `record` holds the results after the block.

    Args:
        stage: the stage's name, recorded in the trace.
        path: JSON file to write when the block ends (None: measure only).
        folder: the run's project folder, for the git commit of the provenance.
    """

    def __init__(self, stage: str, path: str | Path | None = None, folder: str | Path = ".") -> None:
        self.stage = stage
        self.path = None if path is None else Path(path)
        self.folder = folder
        self.counts: dict[str, float] = {}
        self.record: dict[str, Any] = {}

    def __enter__(self) -> StageTrace:
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self._peak_scope = "block" if reset_peak_rss() else "process"
        self._started = datetime.datetime.now(datetime.timezone.utc)
        self._io = io_counters()
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def count(self, summary: Any) -> None:
        """Record what the stage processed: the numbers of its summary under a `COUNT_KEYS` name."""
        self.counts = {key: value for key, value in numeric_leaves(summary).items()
                       if COUNT_KEYS & set(key.split(".")) and "params" not in key.split(".")}

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        peak = peak_rss_bytes()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        io_after = io_counters()
        cuda = _cuda()
        record: dict[str, Any] = {
            "stage": self.stage,
            "status": "failed" if exc_type is not None else "completed",
            "started": self._started.isoformat(timespec="milliseconds"),
            "ended": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "cpu_percent": round(100.0 * cpu / wall, 1) if wall > 0 else None,
            "children_cpu_s": round(children.ru_utime + children.ru_stime
                                    - self._children.ru_utime - self._children.ru_stime, 3),
            "peak_rss_mb": _mb(peak),
            "peak_rss_scope": self._peak_scope,
            **{name: (None if self._io is None or io_after is None else io_after[name] - self._io[name])
               for name in _IO_FIELDS.values()},
            "device": "cpu" if cuda is None else f"cuda:{cuda.current_device()}",
            "gpu_peak_mb": None if cuda is None else _mb(cuda.max_memory_allocated()),
            "counts": self.counts,
            "provenance": provenance(self.folder),
        }
        self.record = record
        if self.path is not None:
            try:
                atomic.write_json(self.path, record)
            except Exception:
                if exc_type is None:
                    raise
                # The stage's own failure is the one to report (a full disk fails both writes).
                log.warning("could not write the trace %s of the failed stage %s", self.path, self.stage)
