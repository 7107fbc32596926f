"""Benchmark: images/s of extraction's decoding (`embed.decode_image`) on 1, 2 and 4 threads.

What `extract` runs ahead of the backbone for every image (`runtime.decode_workers` threads
in the stage's process, `run_in_process`): read and decode the file, its label, then the
split's preprocessing: train images five-cropped at `--resolution` with the reference's
JPEG round trip per crop (`extract.preprocess: reference`), val images resized and centre-
cropped at `--val-resolution`. Baseline: the same calls on one thread, in the same run.

Corpus: `--corpus` (a folder with images/train, images/val and optional labels/), or by
default synthetic photos of `--image-size` (640 x 480, CocoStuff's usual size) saved as
JPEG at quality 90, with PNG label masks, like COCO's.

The point of the numbers: a GPU embeds thousands of crops a second, and decoding is CPU
work, so images/s per core says how many cores (`runtime.decode_workers`) a given GPU
needs: cores = GPU images/s / (images/s per core).

Run:  .venv/bin/python benchmarks/bench_decode.py            (about 1 min on 2 idle CPUs)
      .venv/bin/python benchmarks/bench_decode.py --corpus ../shared/data/camvid-dev
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GOAL_SCALING = 1.6  # 2 threads vs 1, on 2 CPUs


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=None, help="corpus folder (images/{train,val}, labels/...); default: synthetic JPEGs")
    parser.add_argument("--image-size", nargs=2, type=int, default=[640, 480], metavar=("W", "H"),
                        help="synthetic image size (default: 640 480)")
    parser.add_argument("--images", type=int, default=24, help="images per split decoded per measurement (default: 24)")
    parser.add_argument("--resolution", type=int, default=224, help="train crop side (default: 224)")
    parser.add_argument("--val-resolution", type=int, default=320, help="val side (default: 320)")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4], help="decoder thread counts (default: 1 2 4)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported (default: 3)")
    return parser.parse_args()


def synthetic_corpus(root: Path, n_train: int, n_val: int, size: tuple[int, int], seed: int = 0) -> Path:
    """Photo-like JPEGs (smooth colour fields plus noise) and PNG label masks in the corpus layout."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
            field = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.int16)
            noisy = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / "images" / split / f"{i:05d}.jpg", quality=90)
            label = (field[..., 0] // 52).astype(np.uint8)
            Image.fromarray(label).save(root / "labels" / split / f"{i:05d}.png")
    return root


def jobs_for(root: Path, split: str, count: int, resolution: int):
    """ChunkJobs (8 images each) over the split's first `count` images, as `extract` builds them."""
    from stego_tasks.data.embed import ChunkJob

    images = sorted(p for p in (root / "images" / split).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    labels = []
    for path in images:
        found = [p for p in (root / "labels" / split).glob(path.stem + ".*")] if (root / "labels" / split).exists() else []
        labels.append(str(found[0]) if found else None)
    jobs = []
    for start in range(0, len(images), 8):
        jobs.append(ChunkJob(
            split=split, index=start // 8, image_paths=tuple(str(p) for p in images[start : start + 8]),
            label_paths=tuple(labels[start : start + 8]), backbone_name="unused", backbone_weights="random",
            resolution=resolution, five_crop=split == "train", crop_ratio=0.5, flip=False, ignore_index=255,
            device="cpu", preprocess="reference",
        ))
    return jobs


def decode_rate(jobs, workers: int) -> float:
    """Images/s of `decode_image` over every image of `jobs` on `workers` threads, as `run_in_process` queues them."""
    from stego_tasks.data.embed import assemble_chunk, decode_image

    tasks = [(job, i) for job in jobs for i in range(len(job.image_paths))]
    began = time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="stego-decode") as pool:
        futures = [pool.submit(decode_image, job, i) for job, i in tasks]
        start = 0
        for job in jobs:
            assemble_chunk([f.result() for f in futures[start : start + len(job.image_paths)]])
            start += len(job.image_paths)
    return len(tasks) / (time.perf_counter() - began)


def main() -> None:
    """Measure and print JSON lines plus a summary table."""
    args = _parse()
    warnings.filterwarnings("ignore")
    logging.getLogger("stego").setLevel(logging.ERROR)
    from benchutil import emit, machine, median, note, print_table, verdict

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        if args.corpus:
            root, what = Path(args.corpus), f"corpus {args.corpus}"
        else:
            note(f"decode: writing {args.images} + {args.images} synthetic {args.image_size[0]}x{args.image_size[1]} JPEGs")
            root = synthetic_corpus(Path(tmp), args.images, args.images, tuple(args.image_size))
            what = f"synthetic {args.image_size[0]}x{args.image_size[1]} JPEG q90 + PNG labels"
        splits = {"train": (args.resolution, "five-crop + JPEG round trip per crop"), "val": (args.val_resolution, "resize + centre crop")}
        common = {"bench": "decode", **machine(), "cores": cores, "corpus": what}
        rows = []
        for split, (resolution, how) in splits.items():
            jobs = jobs_for(root, split, args.images, resolution)
            decode_rate(jobs[:1], 1)  # warm the file cache and PIL's plugins
            rates: dict[int, list[float]] = {n: [] for n in args.workers}
            for repeat in range(args.repeats):
                for n in args.workers:
                    rates[n].append(decode_rate(jobs, n))
                    emit({**common, "measure": "decode", "split": split, "resolution": resolution, "workers": n,
                          "repeat": repeat, "images_per_s": round(rates[n][-1], 2)})
            one = rates.get(1)
            for n in args.workers:
                ratio = median([b / a for a, b in zip(one, rates[n], strict=True)]) if one else float("nan")
                per_core = median(rates[n]) / min(n, cores)
                goal = f">= {GOAL_SCALING:g} ({verdict(ratio, GOAL_SCALING)})" if n == 2 else ""
                rows.append([f"{split} @ {resolution} px ({how})", n, median(rates[n]), per_core, ratio, goal])
                emit({**common, "measure": "decode_summary", "split": split, "workers": n, "images_per_s": round(median(rates[n]), 2),
                      "images_per_s_per_core": round(per_core, 2), "speedup_vs_1": round(ratio, 2)})
    print_table(
        f"decode: {what}, {args.images} images per split, {cores} cores, median of {args.repeats} "
        "(speed-up: median of the per-repeat ratios to 1 thread)",
        ["split", "decode threads", "images/s", "images/s per busy core", "speed-up vs 1", "goal"], rows,
    )


if __name__ == "__main__":
    from benchutil import stage_environment

    stage_environment()
    main()
