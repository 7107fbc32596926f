"""Benchmark: what tracing a stage costs (`stego_tasks.runtime.trace.StageTrace`), against no trace.

Three measurements, each against its untraced baseline in the same process run:
  1. fixed cost: an empty block under `StageTrace` with its JSON written (clock and rusage
     reads, /proc/self/io twice, provenance: package metadata and two `git` calls), in ms;
  2. ratio on a real stage-sized call: `method.neighbours.knn_graph` (faiss exact top-k,
     N x 384, k = 7) traced vs untraced, in alternating order, median of the per-repeat
     ratios of wall time and of this process's CPU time (the one load disturbs least);
  3. the progress hook: `Progress.update` with one listener (a no-op callback, what the
     flows register) vs none, in ns per update.

Run:  .venv/bin/python benchmarks/bench_trace.py            (about 30 s on 2 idle CPUs)
      .venv/bin/python benchmarks/bench_trace.py --rows 50000 --repeats 7
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchutil import REPO, emit, machine, median, note, stage_environment


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the kNN call (default: 10000)")
    parser.add_argument("--repeats", type=int, default=7, help="repeats of each measurement (default: 7)")
    parser.add_argument("--updates", type=int, default=200_000, help="progress updates per repeat (default: 200000)")
    return parser.parse_args()


def fixed_cost_ms(folder: Path, repeats: int) -> tuple[float, float]:
    """(median ms of an empty traced block with its file written, median ms of an empty block)."""
    from stego_tasks.runtime.trace import StageTrace

    traced, bare = [], []
    for index in range(repeats * 4):
        start = time.perf_counter()
        with StageTrace("empty", folder / f"empty-{index}.json", folder=REPO):
            pass
        traced.append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        bare.append(1000 * (time.perf_counter() - start))
    return median(traced), median(bare)


def stage_ratio(folder: Path, rows: int, repeats: int) -> dict[str, float]:
    """Medians of a kNN call traced and untraced: wall and CPU seconds, and their per-repeat ratios.

    The order alternates between repeats; the CPU ratio is the one a loaded shared machine
    disturbs least (other processes' work is not this process's CPU time).
    """
    import numpy as np

    from stego_tasks.method.neighbours import knn_graph
    from stego_tasks.runtime.trace import StageTrace

    vectors = np.random.default_rng(0).standard_normal((rows, 384)).astype(np.float32)
    knn_graph(vectors[:1000], 7)  # warm-up: faiss and BLAS loaded outside the timings

    def plain() -> None:
        knn_graph(vectors, 7)

    def traced(index: int) -> None:
        with StageTrace("knn", folder / f"knn-{index}.json", folder=REPO) as tracer:
            tracer.count({"rows": int(knn_graph(vectors, 7).shape[0])})

    times: dict[str, list[float]] = {"plain_wall": [], "plain_cpu": [], "traced_wall": [], "traced_cpu": []}
    for index in range(repeats):
        order = [("plain", plain), ("traced", lambda index=index: traced(index))]
        for name, call in order if index % 2 == 0 else order[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            times[f"{name}_wall"].append(time.perf_counter() - wall)
            times[f"{name}_cpu"].append(time.process_time() - cpu)
        note(f"kNN {rows} rows: untraced {times['plain_wall'][-1]:.3f} s ({times['plain_cpu'][-1]:.3f} s CPU), "
             f"traced {times['traced_wall'][-1]:.3f} s ({times['traced_cpu'][-1]:.3f} s CPU)")
    result = {key: median(values) for key, values in times.items()}
    for kind in ("wall", "cpu"):
        result[f"{kind}_ratio"] = median(t / p for t, p in zip(times[f"traced_{kind}"], times[f"plain_{kind}"], strict=True))
    return result


def progress_ns(updates: int, repeats: int) -> tuple[float, float]:
    """(ns per update with one no-op listener, ns per update without), medians."""
    from stego_tasks.runtime.progress import Progress, progress_listener

    def count(listened: bool) -> float:
        with Progress(updates, "bench", log_every_s=3600) as progress:
            start = time.perf_counter()
            if listened:
                with progress_listener(lambda desc, n, total: None):
                    for _ in range(updates):
                        progress.update()
            else:
                for _ in range(updates):
                    progress.update()
            return 1e9 * (time.perf_counter() - start) / updates

    with_hook, without = [], []
    for _ in range(repeats):
        without.append(count(False))
        with_hook.append(count(True))
    return median(with_hook), median(without)


def main() -> None:
    stage_environment()
    args = _parse()
    facts = machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fixed, empty = fixed_cost_ms(folder, args.repeats)
        emit({"bench": "trace", "measure": "fixed_ms", "traced_ms": round(fixed, 2), "untraced_ms": round(empty, 4), **facts})
        knn = stage_ratio(folder, args.rows, args.repeats)
        emit({"bench": "trace", "measure": "knn_ratio", "rows": args.rows, **{k: round(v, 4) for k, v in knn.items()}, **facts})
    hook, bare = progress_ns(args.updates, args.repeats)
    emit({"bench": "trace", "measure": "progress_ns", "with_listener_ns": round(hook), "without_ns": round(bare), **facts})
    print("\n| measurement | traced | untraced baseline | ratio or cost |\n|---|---|---|---|")
    print(f"| empty stage, trace written | {fixed:.1f} ms | {empty * 1000:.1f} us | +{fixed:.1f} ms per stage run |")
    print(f"| kNN call, {args.rows} x 384, k = 7: wall | {knn['traced_wall']:.3f} s | {knn['plain_wall']:.3f} s "
          f"| {knn['wall_ratio']:.3f}x |")
    print(f"| kNN call, {args.rows} x 384, k = 7: CPU | {knn['traced_cpu']:.3f} s | {knn['plain_cpu']:.3f} s "
          f"| {knn['cpu_ratio']:.3f}x |")
    print(f"| `Progress.update`, one listener | {hook:.0f} ns | {bare:.0f} ns | +{hook - bare:.0f} ns per update |")


if __name__ == "__main__":
    main()
