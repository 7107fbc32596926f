"""Benchmark: dense CRF images/s, `dense_crf_batch` with 2 worker processes vs 1 (serial).

Data: demo-corpus images (natural-ish: smooth sky, textures, edges), 224 x 224 by default,
with 11-class logits made from a noisy one-hot of a label map (the demo's 5 classes, split
left/right into 10, plus one class for the ignore pixels) so the CRF has real work to do.

Both runs use the published CRF parameters and the stage's call (`chunksize=1`); the
2-worker time includes starting the spawn pool, as the `crf` stage pays it. Each worker
count is timed `--repeats` times (alternating) and the median is reported. The outputs of
both must agree. Goal: speed-up >= 1.8 with 2 workers on 2 cores.

Run:  .venv/bin/python benchmarks/bench_crf.py                 (about 20 s on 2 idle CPUs)
      .venv/bin/python benchmarks/bench_crf.py --images 128 --workers 1 2 4
"""

# Worker processes are spawned and re-import this file as __mp_main__: keep the module
# level light (no torch), as the crf stage's own workers import numpy and pydensecrf only.
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL = 1.8


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="images per run (default: 32)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default: 224)")
    parser.add_argument("--classes", type=int, default=11, help="labels of the logits (default: 11)")
    parser.add_argument("--noise", type=float, default=1.5, help="std of the Gaussian noise on the 3 x one-hot logits (default: 1.5)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts; the first is the baseline (default: 1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per worker count; median reported (default: 3)")
    return parser.parse_args()


def make_inputs(n: int, size: int, classes: int, noise: float, root: Path, seed: int = 0):
    """Demo images and noisy one-hot logits.

    Args:
        n: images.
        size: image side in pixels.
        classes: labels of the logits (>= 2).
        noise: std of the noise added to 3 x one-hot.
        root: scratch folder for the demo corpus.
        seed: seed of the corpus and the noise.

    Returns:
        (list of uint8 [size, size, 3] images, list of float32 [classes, size, size] logits).
    """
    from PIL import Image

    from stego_tasks.demo_data import DEMO_IGNORE_INDEX, make_demo_corpus

    make_demo_corpus(root, n_train=max(n, 3), n_val=3, size=size, seed=seed)
    rng = np.random.default_rng(seed)
    images, logits = [], []
    for index in range(n):
        name = f"scene_{index:04d}.png"
        images.append(np.asarray(Image.open(root / "images" / "train" / name).convert("RGB")))
        label = np.asarray(Image.open(root / "labels" / "train" / name)).astype(np.int64)
        right = np.arange(size)[None, :] >= size // 2
        target = np.where(label == DEMO_IGNORE_INDEX, classes - 1, (label + 5 * right) % (classes - 1))
        onehot = np.eye(classes, dtype=np.float32)[target].transpose(2, 0, 1)
        logits.append(3.0 * onehot + rng.normal(0.0, noise, onehot.shape).astype(np.float32))
    return images, logits


def main() -> None:
    """Measure and print JSON lines plus a summary table."""
    args = _parse()
    from benchutil import emit, machine, median, note, print_table, verdict

    from stego_tasks.crf import CRFParams, dense_crf_batch

    common = {"bench": "crf", **machine(), "images": args.images, "size": args.size, "classes": args.classes}
    with tempfile.TemporaryDirectory(prefix="bench-crf-") as tmp:
        images, logits = make_inputs(args.images, args.size, args.classes, args.noise, Path(tmp))
    params = CRFParams()
    # Pool start-up alone: two tiny images cost ~nothing, so this is spawning the workers
    # (a fresh interpreter importing numpy + pydensecrf each) and shutting them down.
    tiny_images, tiny_logits = [im[:16, :16].copy() for im in images[:2]], [lg[:, :16, :16].copy() for lg in logits[:2]]
    startup: list[float] = []
    times: dict[int, list[float]] = {w: [] for w in args.workers}
    outputs: dict[int, list[np.ndarray]] = {}
    for repeat in range(args.repeats):
        for workers in args.workers:
            note(f"crf repeat {repeat + 1}/{args.repeats}: {args.images} images with workers={workers}")
            start = time.perf_counter()
            refined = dense_crf_batch(images, logits, params, workers=workers)
            seconds = time.perf_counter() - start
            times[workers].append(seconds)
            outputs.setdefault(workers, [r.argmax(0) for r in refined])
            emit({**common, "measure": "dense_crf_batch", "repeat": repeat, "workers": workers,
                  "seconds": round(seconds, 3), "images_per_s": round(args.images / seconds, 3)})
        start = time.perf_counter()
        dense_crf_batch(tiny_images, tiny_logits, params, workers=2)
        startup.append(time.perf_counter() - start)
        emit({**common, "measure": "pool_startup", "repeat": repeat, "workers": 2, "seconds": round(startup[-1], 3)})
    base = args.workers[0]
    pool_s = median(startup)
    rows = []
    for workers in args.workers:
        seconds = median(times[workers])
        ips = args.images / seconds
        # Speed-up per repeat (the two runs seconds apart), then the median: the load drifts.
        speedup = median(b / t for b, t in zip(times[base], times[workers], strict=True))
        # Without the pool's fixed start-up: the rate a long-lived pool would reach.
        steady = median(b / (t - p) for b, t, p in zip(times[base], times[workers], startup, strict=True)) if workers > 1 else 1.0
        same = all(np.array_equal(a, b) for a, b in zip(outputs[base], outputs[workers], strict=True))
        goal = f">= {GOAL} ({verdict(speedup, GOAL)})" if workers == 2 and base == 1 else ""
        emit({**common, "measure": "summary", "workers": workers, "images_per_s": round(ips, 3),
              f"speedup_vs_workers_{base}": round(speedup, 3), "speedup_without_pool_startup": round(steady, 3),
              "pool_startup_s": round(pool_s, 3), "same_labels_as_baseline": same,
              **({"goal": GOAL, "verdict": verdict(speedup, GOAL)} if goal else {})})
        rows.append([workers, ips, speedup, steady if workers > 1 else "", "yes" if same else "NO", goal])
    print_table(
        f"crf: {args.images} demo images {args.size}x{args.size}, {args.classes} classes, 10 iterations, "
        f"median of {args.repeats} (speed-up vs workers={base}, median of per-repeat ratios; pool start-up {pool_s:.2f} s)",
        ["workers", "images/s", "speed-up", "speed-up without pool start-up", "same argmax as baseline", "goal"], rows,
    )


if __name__ == "__main__":
    from benchutil import stage_environment

    stage_environment()
    main()
