"""Benchmark: faiss exact top-k (`stego_tasks.method.neighbours.knn_graph`) vs a chunked torch matmul top-k.

Baseline: the reference's approach (STEGO's precompute_knns.py): L2-normalise, split the
queries into 16 chunks, einsum each chunk against all N vectors and take torch.topk; here
with k + 1 and self removed, so both sides answer the same question.

Data: N random unit vectors of dimension 384 (seeded), k = 7, at N = 10k and 50k by
default. Each (method, N) runs in a fresh process: wall time (median of the repeats) and
the peak RSS growth of the first call over the process's RSS just before it (VmHWM after a
reset; faiss allocates outside Python, so tracemalloc cannot see it). Both methods must
give the same neighbour sets up to float ties.

Run:  .venv/bin/python benchmarks/bench_knn.py                       (about 1 min on 2 idle CPUs)
      .venv/bin/python benchmarks/bench_knn.py --sizes 10000 50000 200000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

DIM = 384
TIE_TOLERANCE = 1e-5  # cosine similarities closer than this are float ties, either order is right


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="values of N (default: 10000 50000)")
    parser.add_argument("--k", type=int, default=7, help="neighbours per vector (default: 7)")
    parser.add_argument("--dim", type=int, default=DIM, help=f"vector dimension (default: {DIM})")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per (method, N) below 50k; median reported (default: 3)")
    parser.add_argument("--repeats-large", type=int, default=2, help="timed calls per (method, N) for N >= 50k (default: 2)")
    parser.add_argument("--torch-chunks", type=int, default=16, help="query chunks of the torch baseline, as the reference (default: 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch and faiss threads (default: 2)")
    parser.add_argument("--worker", nargs=5, metavar=("METHOD", "N", "REPEATS", "OUT", "CHUNKS"), help=argparse.SUPPRESS)
    return parser.parse_args()


def unit_vectors(n: int, dim: int, seed: int = 0):
    """Seeded random unit vectors, float32 [n, dim], made without float64 temporaries."""
    import numpy as np

    vectors = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def torch_chunked_knn(vectors, k: int, n_chunks: int = 16):
    """The reference's kNN: normalise, einsum per query chunk against all, topk; self removed.

    Args:
        vectors: float32 [N, C].
        k: neighbours wanted.
        n_chunks: query chunks (the reference uses 16; chunk = N // n_chunks rows).

    Returns:
        int64 np.ndarray [N, k], most similar first, never the row itself.
    """
    import numpy as np
    import torch

    feats = torch.nn.functional.normalize(torch.from_numpy(vectors), dim=1)
    n = feats.shape[0]
    step = max(1, n // n_chunks)  # the reference's n // 16 is 0 below 16 rows and crashes
    parts = []
    for start in range(0, n, step):
        sims = torch.einsum("nf,mf->nm", feats[start : start + step], feats)
        found = torch.topk(sims, k + 1, dim=1).indices.numpy()
        rows = np.arange(start, start + found.shape[0])
        drop = found == rows[:, None]
        drop[~drop.any(axis=1), -1] = True
        parts.append(found[~drop].reshape(found.shape[0], k))
    return np.concatenate(parts).astype(np.int64)


def _worker(method: str, n: int, repeats: int, out: str, chunks: int, k: int, dim: int, threads: int) -> None:
    """Child process: time `repeats` calls, measure the first call's peak RSS growth, save its result."""
    import faiss
    import numpy as np
    import torch
    from benchutil import emit, median, peak_rss_mib, reset_peak_rss, rss_mib

    from stego_tasks.method.neighbours import knn_graph

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    vectors = unit_vectors(n, dim)
    run = {
        "faiss": lambda: knn_graph(vectors, k),
        "torch": lambda: torch_chunked_knn(vectors, k, chunks),
    }[method]
    times, growth = [], None
    for index in range(repeats):
        before = rss_mib()
        reset_ok = reset_peak_rss()
        start = time.perf_counter()
        graph = run()
        times.append(time.perf_counter() - start)
        if index == 0:
            growth = peak_rss_mib() - before if reset_ok else float("nan")
            np.save(out, graph)
        del graph
    emit({"method": method, "n": n, "seconds": times, "median_s": median(times), "peak_rss_growth_mib": round(growth, 1),
          "input_mib": round(vectors.nbytes / 2**20, 1)})


def compare(faiss_graph, torch_graph, vectors) -> dict[str, int]:
    """Rows whose neighbour sets differ, and those that differ by more than a float tie.

    Args:
        faiss_graph: int [N, k] from knn_graph.
        torch_graph: int [N, k] from the baseline.
        vectors: the float32 [N, C] unit vectors both searched.

    Returns:
        {"rows_differ": int, "rows_differ_beyond_tie": int}.
    """
    import numpy as np

    a, b = np.sort(faiss_graph, axis=1), np.sort(torch_graph, axis=1)
    differ = np.flatnonzero(np.any(a != b, axis=1))
    beyond = 0
    for row in differ:
        query = vectors[row].astype(np.float64)
        sims_a = vectors[faiss_graph[row]].astype(np.float64) @ query
        sims_b = vectors[torch_graph[row]].astype(np.float64) @ query
        # A tie swaps the k-th neighbour for an equally similar one: sorted sims still match.
        if np.max(np.abs(np.sort(sims_a) - np.sort(sims_b))) > TIE_TOLERANCE:
            beyond += 1
    return {"rows_differ": int(differ.size), "rows_differ_beyond_tie": beyond}


def main() -> None:
    """Measure and print JSON lines plus a summary table."""
    args = _parse()
    if args.worker:
        method, n, repeats, out, chunks = args.worker
        _worker(method, int(n), int(repeats), out, int(chunks), args.k, args.dim, args.threads)
        return

    import numpy as np
    from benchutil import emit, machine, note, print_table, run_worker

    common = {"bench": "knn", **machine(), "k": args.k, "dim": args.dim, "threads": args.threads}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-knn-") as tmp:
        for n in args.sizes:
            repeats = args.repeats_large if n >= 50_000 else args.repeats
            results = {}
            for method in ("faiss", "torch"):
                note(f"knn: {method} at N={n}, {repeats} calls in a fresh process")
                out = str(Path(tmp) / f"{method}-{n}.npy")
                worker_args = ["--worker", method, str(n), str(repeats), out, str(args.torch_chunks),
                               "--k", str(args.k), "--dim", str(args.dim), "--threads", str(args.threads)]
                results[method] = run_worker(Path(__file__), worker_args)
                emit({**common, "measure": "knn_call", **results[method]})
            check = compare(np.load(Path(tmp) / f"faiss-{n}.npy"), np.load(Path(tmp) / f"torch-{n}.npy"), unit_vectors(n, args.dim))
            speedup = results["torch"]["median_s"] / results["faiss"]["median_s"]
            memory = results["torch"]["peak_rss_growth_mib"] / max(results["faiss"]["peak_rss_growth_mib"], 1e-9)
            emit({**common, "measure": "summary", "n": n, "faiss_s": round(results["faiss"]["median_s"], 3),
                  "torch_s": round(results["torch"]["median_s"], 3), "speedup_faiss_vs_torch": round(speedup, 2),
                  "faiss_peak_growth_mib": results["faiss"]["peak_rss_growth_mib"],
                  "torch_peak_growth_mib": results["torch"]["peak_rss_growth_mib"], "memory_ratio_torch_over_faiss": round(memory, 2),
                  **check, "identical": check["rows_differ_beyond_tie"] == 0})
            for method in ("torch", "faiss"):
                result = results[method]
                rows.append([n, "faiss knn_graph" if method == "faiss" else f"torch chunked ({args.torch_chunks} chunks)",
                             result["median_s"], results["torch"]["median_s"] / result["median_s"],
                             result["peak_rss_growth_mib"],
                             "" if method == "torch" else f"{check['rows_differ']} ({check['rows_differ_beyond_tie']})"])
    print_table(
        f"knn: exact cosine top-{args.k} of N random unit {args.dim}-d vectors, {args.threads} threads "
        "(speed-up and memory vs the torch baseline; last column: rows whose sets differ (beyond float ties))",
        ["N", "method", "seconds (median)", "speed-up vs torch", "peak RSS growth, MiB", "rows differ (beyond tie)"], rows,
    )


if __name__ == "__main__":
    from benchutil import stage_environment

    stage_environment()
    main()
