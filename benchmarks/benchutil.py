"""Small helpers shared by the benchmark scripts: JSON lines, medians, tables, peak memory.

Every script prints one JSON object per measurement on stdout (machine-readable, one per
line) and a short human table at the end. Memory is read from the kernel, not from Python,
because faiss, torch and zarr allocate outside the Python heap where tracemalloc is blind.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def stage_environment() -> None:
    """Set what `stego` sets before torch loads, so the library runs as the stages run it.

    `flows.cli.main` defaults OMP_WAIT_POLICY to PASSIVE (idle OpenMP threads sleep
    instead of spinning); an explicit value in the environment wins, e.g. ACTIVE to measure
    the spinning default. Call before anything imports torch, faiss or numpy's BLAS.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def emit(record: dict[str, Any]) -> None:
    """Print one measurement as a JSON line on stdout, flushed at once.

    Args:
        record: JSON-serialisable measurement; a `bench` key names the script.
    """
    print(json.dumps(record, sort_keys=False), flush=True)


def note(message: str) -> None:
    """Print a progress message on stderr, so stdout stays pure JSON lines plus the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """Facts that make a number comparable: date, host CPU count, load, Python.

    Returns:
        {"date": ISO date-time (UTC), "cpus": int, "load_1min": float, "python": str,
        "omp_wait_policy": str}.
    """
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "cpus": os.cpu_count(),
        "load_1min": round(load, 2),
        "python": platform.python_version(),
        # Spin-waiting OpenMP threads are what a busy shared machine punishes most.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }


def median(values: Iterable[float]) -> float:
    """Median of the repeats (robust to one slow repeat on a shared machine), NaNs left out.

    Returns:
        The median of the finite values, NaN when there is none.
    """
    finite = [value for value in values if value == value]
    return float(statistics.median(finite)) if finite else float("nan")


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Run `function` once and return (wall seconds, its result)."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) so the next peak belongs to what follows.

    Returns:
        True when the kernel accepted the reset (Linux >= 4.0), else False.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line on this system.")


def rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """Peak resident set size (VmHWM) of this process in MiB, since start or the last reset."""
    return _status_kib("VmHWM") / 1024


def run_worker(script: Path, args: Sequence[str], timeout: float = 900) -> dict[str, Any]:
    """Run `script` in a fresh interpreter and return the last JSON line it printed.

    Used for memory measurements: a fresh process has no allocator state or caches from
    earlier measurements.

    Args:
        script: the benchmark script (it must handle the given worker arguments).
        args: its command-line arguments.
        timeout: seconds before the child is killed.

    Returns:
        The child's last stdout JSON object.
    """
    result = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"worker {script.name} {' '.join(args)} exited with {result.returncode}:\n{result.stderr[-3000:]}"
        )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker {script.name} {' '.join(args)} printed no JSON line:\n{result.stdout[-2000:]}")
    return json.loads(lines[-1])


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a Markdown table (pastes straight into benchmarks/README.md).

    Args:
        title: one line printed above the table.
        header: column names.
        rows: one sequence of cells per row; floats are shown with 3 significant digits
            (whole numbers from 100 up).
    """

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
        return str(value)

    print(f"\n{title}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(cell(value) for value in row) + " |")


def verdict(value: float, goal: float, higher_is_better: bool = True) -> str:
    """'met' or 'MISSED' for a measured value against its goal ('n/a' when it is NaN)."""
    if value != value:
        return "n/a"
    ok = value >= goal if higher_is_better else value <= goal
    return "met" if ok else "MISSED"
