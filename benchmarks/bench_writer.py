"""Benchmark: the features store's writer with 1, 2 and 4 writer threads, per codec.

Writer: for each codec `extract.compression` offers (zstd, none, blosc-lz4, blosc-zstd), a
train split in `extract`'s layout (`feature_store.open_split`: 40 rows per chunk, sharded
features and labels) is written chunk by chunk by `store_writer.SplitWriter` on 1, 2 and 4
threads, all chunks queued at once, as `extract` does with `runtime.writers` threads:
rows/s of whole rows (float16 features [C, h, w], labels, pooled, ids, crops), digests and
done flags included. Same-run baselines:
  - zarr's write, 1 thread: `array[rows] = values` per array, then `record_chunk` and the
    flag (what `extract` did before the parallel writer);
  - codec alone on N threads: the features' codec encoding the same rows on N threads,
    nothing else (none: a copy). It says how far this machine let N threads scale at that
    moment, which on a shared machine is often less than its core count.
Also per run: cores busy (the process's CPU seconds over wall seconds: what the machine
gave) and rows per CPU second (flat across writer counts when threads add no overhead).
Goal: 2 writers >= 1.7x one (zstd, 2 CPUs).

Extraction end to end (`--extract-images` > 0): the real `extract` stage (plan, checks,
writes, done flags), in-process, with `runtime.writers` 1 (before) and 2 (after), alternated
in each repeat, in two cases: its chunks replayed from memory at the stored rows' size (the
backbone's cost removed: extraction at accelerator rate, where writing is all that is left),
and a random ViT-Ti/16 at 224 px on demo images (a CPU backbone, the fastest there is).

Features: `--features-from` computes `--feature-crops` crops with a random-weight backbone
on demo images (default: ViT-S/8 at 224 px, rows of 588 KiB) and tiles them to the rows.

Run:  .venv/bin/python benchmarks/bench_writer.py              (about 3 min on 2 idle CPUs)
      .venv/bin/python benchmarks/bench_writer.py --quick      (a smoke run, not for the README)
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CODECS = ("zstd", "none", "blosc-lz4", "blosc-zstd")
BATCH = 8  # images per chunk; x 5 crops = 40 rows, extract's default chunk
GOAL_SCALING = 1.7


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dino_vits8", help="backbone computing the stored rows (default: dino_vits8)")
    parser.add_argument("--resolution", type=int, default=224, help="crop side (default: 224)")
    parser.add_argument("--feature-crops", type=int, default=8, help="crops run through the backbone (default: 8)")
    parser.add_argument("--chunks", type=int, default=8, help="chunks of 40 rows written per measurement (default: 8)")
    parser.add_argument("--codecs", nargs="+", choices=CODECS, default=list(CODECS), help="codecs to measure")
    parser.add_argument("--writers", nargs="+", type=int, default=[1, 2, 4], help="writer thread counts (default: 1 2 4)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats, interleaved; the median is reported (default: 5)")
    parser.add_argument("--extract-images", type=int, default=64, help="train images of the replayed end-to-end run (half "
                        "that for the real ViT-Ti/16); 0 skips both (default: 64)")
    parser.add_argument("--extract-resolution", type=int, default=224, help="its crop side (default: 224)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.backbone, args.resolution, args.feature_crops, args.chunks = "vit_tiny_patch16_224", 32, 2, 2
        args.repeats, args.extract_images, args.extract_resolution = 1, 16, 32
    return args


def make_rows(args: argparse.Namespace, note) -> dict:
    """One chunk's arrays (40 rows): computed features tiled, pooled, demo-like labels, crops."""
    import numpy as np
    from bench_reader import compute_features

    feats, _ = compute_features(args.backbone, "random", None, args.resolution, args.feature_crops, note=note)
    rows = BATCH * 5
    tiled = np.concatenate([feats] * -(-rows // feats.shape[0]))[:rows]
    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 27, (rows, args.resolution // 8, args.resolution // 8), dtype=np.uint8), 8, axis=1)
    return {
        "feats": np.ascontiguousarray(tiled),
        "pooled": tiled.astype(np.float32).mean(axis=(2, 3)),
        "labels": np.ascontiguousarray(np.repeat(labels, 8, axis=2)),
        "crops": (np.arange(rows) % 5).astype(np.int8),
    }


def new_split(path: Path, compression: str, arrays: dict, n_chunks: int):
    """An empty train split laid out by the stage for `n_chunks` chunks; returns (group, row ids)."""
    import numpy as np
    import zarr

    from stego_tasks.data.feature_store import open_split

    dim, grid = arrays["feats"].shape[1], arrays["feats"].shape[2]
    fingerprint = {"five_crop": True, "batch_size": BATCH, "resolution": arrays["labels"].shape[1], "embed_dim": dim,
                   "flip": False}
    if compression != "zstd":
        fingerprint["compression"] = compression
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    group = open_split(root, "train", fingerprint, n_chunks * BATCH * 5, grid)
    return group, np.repeat(np.arange(n_chunks * BATCH), 5).astype(np.int64)


def write_parallel(path: Path, compression: str, arrays: dict, n_chunks: int, writers: int) -> float:
    """Seconds to write `n_chunks` chunks with `SplitWriter` on `writers` threads."""
    from stego_tasks.data.store_writer import SplitWriter

    group, row_ids = new_split(path, compression, arrays, n_chunks)
    writer = SplitWriter(group, BATCH * 5, row_ids)
    start = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(lambda index: writer.write(index, arrays), range(n_chunks)))
    return time.perf_counter() - start


def write_zarr(path: Path, compression: str, arrays: dict, n_chunks: int) -> float:
    """Seconds to write the same chunks with zarr's own writes (the path before the parallel writer)."""
    from stego_tasks.data.store_integrity import record_chunk

    group, row_ids = new_split(path, compression, arrays, n_chunks)
    rows = BATCH * 5
    start = time.perf_counter()
    for index in range(n_chunks):
        part = slice(index * rows, (index + 1) * rows)
        for name, values in arrays.items():
            group[name][part] = values
        group["image_ids"][part] = row_ids[part]
        record_chunk(group, index)
        group["done"][index] = True
    return time.perf_counter() - start


def codec_alone(compression: str, arrays: dict, n_chunks: int, writers: int) -> float:
    """Seconds for the features' codec alone to encode the same feature rows on `writers` threads."""
    import numpy as np

    from stego_tasks.data.feature_store import DEFAULT_COMPRESSION, feature_compressors

    if compression == DEFAULT_COMPRESSION:
        from zarr.codecs import ZstdCodec

        codecs = (ZstdCodec(),)
    else:
        codecs = feature_compressors(compression) or ()
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.dtype import Float16

    spec = ArraySpec(shape=arrays["feats"].shape[1:], dtype=Float16(), fill_value=0, config=ArrayConfig.from_dict({}),
                     prototype=default_buffer_prototype())
    rows = [default_buffer_prototype().buffer.from_array_like(row.reshape(-1).view(np.uint8)) for row in arrays["feats"]]

    def encode(_: int) -> None:
        for row in rows:
            if not codecs:
                bytes(row.as_numpy_array())
            for codec in codecs:
                codec._encode_sync(row, spec)

    start = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(encode, range(n_chunks)))
    return time.perf_counter() - start


def replay_runner(arrays: dict):
    """A runner that hands out stored-size results at once: `extract` with the backbone's cost removed."""
    import numpy as np

    val = {name: values[: BATCH] for name, values in arrays.items()}
    val.update(feats_flip=val["feats"][:, :, :, ::-1].copy(), crops=np.zeros(BATCH, np.int8),
               images=np.repeat(val["labels"][..., None], 3, axis=3))
    results = {"train": arrays, "val": val}

    def run(jobs):
        for job in jobs:
            rows = len(job.image_paths) * (5 if job.five_crop else 1)
            yield job, {name: values[:rows] for name, values in results[job.split].items()}

    return run


def run_extract(tmp: Path, manifest: Path, corpus_root: Path, writers: int, backbone: str, resolution: int,
                runner=None) -> float:
    """Seconds of one `extract` run (in-process, random weights) with `runtime.writers` = `writers`."""
    import shutil

    from stego_tasks.config import (
        BackboneParams,
        CorpusParams,
        DaskParams,
        ExtractParams,
        RuntimeParams,
    )
    from stego_tasks.extract import extract

    store = tmp / f"extract-{writers}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    params = ExtractParams(resolution=resolution, val_resolution=resolution, batch_size=BATCH, device="cpu")
    corpus = CorpusParams(root=str(corpus_root), n_classes=5, ignore_index=255, demo=True)
    start = time.perf_counter()
    extract(manifest, store, corpus, BackboneParams(name=backbone, weights="random"), params,
            DaskParams(n_workers=1, threads_per_worker=1), runner=runner, runtime=RuntimeParams(writers=writers))
    return time.perf_counter() - start


def bench_writer(args, tmp: Path, arrays: dict, stamp) -> list[list]:
    """Interleaved repeats of every codec and writer count; returns the table's rows."""
    from benchutil import emit, median, note

    rows_per_run = args.chunks * BATCH * 5
    times: dict[tuple[str, str, int], list[float]] = {}
    cpu: dict[tuple[str, str, int], list[float]] = {}  # CPU seconds of the process (all threads)
    for repeat in range(args.repeats):
        note(f"writer repeat {repeat + 1}/{args.repeats}")
        for codec in args.codecs:
            runs = [("zarr", 1)] + [(kind, n) for n in args.writers for kind in ("writer", "codec")]
            for kind, n in runs:
                began = time.process_time()
                if kind == "zarr":
                    seconds = write_zarr(tmp / "zarr.zarr", codec, arrays, args.chunks)
                elif kind == "writer":
                    seconds = write_parallel(tmp / f"w{n}.zarr", codec, arrays, args.chunks, n)
                else:
                    seconds = codec_alone(codec, arrays, args.chunks, n)
                times.setdefault((codec, kind, n), []).append(seconds)
                cpu.setdefault((codec, kind, n), []).append(time.process_time() - began)
                emit({**stamp(), "measure": kind, "codec": codec, "threads": n, "repeat": repeat,
                      "rows_per_s": round(rows_per_run / seconds, 1), "cores_busy": round(cpu[(codec, kind, n)][-1] / seconds, 2)})
    table = []
    for codec in args.codecs:
        rate = {key[1:]: rows_per_run / median(value) for key, value in times.items() if key[0] == codec}
        # What the machine gave: cores busy (CPU s / wall s) and rows per CPU second, medians.
        busy = {key[1:]: median(c / t for c, t in zip(cpu[key], times[key], strict=True)) for key in times if key[0] == codec}
        per_cpu = {key[1:]: median(rows_per_run / c for c in cpu[key]) for key in times if key[0] == codec}
        one = rate[("writer", 1)]
        for n in args.writers:
            ratio, machine_ratio = rate[("writer", n)] / one, rate[("codec", n)] / rate[("codec", 1)]
            goal = f">= {GOAL_SCALING}" if codec == "zstd" and n == 2 else ""
            table.append([codec, n, rate[("writer", n)], ratio, rate[("writer", n)] / rate[("zarr", 1)], busy[("writer", n)],
                          per_cpu[("writer", n)], machine_ratio, goal and f"{goal} ({'met' if ratio >= GOAL_SCALING else 'MISSED'})"])
            emit({**stamp(), "measure": "summary", "codec": codec, "writers": n, "rows_per_s": round(rate[("writer", n)], 1),
                  "vs_one_writer": round(ratio, 3), "vs_zarr_write": round(rate[("writer", n)] / rate[("zarr", 1)], 3),
                  "codec_alone_scaling": round(machine_ratio, 3), "cores_busy": round(busy[("writer", n)], 2),
                  "rows_per_cpu_s": round(per_cpu[("writer", n)], 1)})
        table.append([codec, "zarr's write (before)", rate[("zarr", 1)], rate[("zarr", 1)] / one, 1.0, busy[("zarr", 1)],
                      per_cpu[("zarr", 1)], "", ""])
    return table


def bench_extract(args, tmp: Path, arrays: dict, stamp) -> list[list]:
    """Alternated `extract` runs with 1 and 2 writers: chunks replayed (accelerator rate) and a real ViT-Ti/16."""
    from bench_extract import _make_corpus
    from benchutil import emit, median, note

    replay = _make_corpus(tmp / "replay", args.extract_images, BATCH, 64)
    real = _make_corpus(tmp / "real", args.extract_images // 2, 4, args.extract_resolution + 32)
    cases = {
        f"chunks replayed (backbone skipped), {args.backbone} rows": (
            replay, args.extract_images + BATCH, args.backbone, args.resolution, replay_runner(arrays)),
        f"random ViT-Ti/16 at {args.extract_resolution} px": (
            real, args.extract_images // 2 + 4, "vit_tiny_patch16_224", args.extract_resolution, None),
    }
    table = []
    for case, (manifest, images, *setting) in cases.items():
        run_extract(tmp, manifest, manifest.parent / "corpus", 1, *setting)  # warm-up: imports, page cache
        times: dict[int, list[float]] = {1: [], 2: []}
        for repeat in range(args.repeats):
            for writers in (1, 2):
                note(f"extract, {case}: repeat {repeat + 1}/{args.repeats}, {writers} writers")
                times[writers].append(run_extract(tmp, manifest, manifest.parent / "corpus", writers, *setting))
                emit({**stamp(), "measure": "extract", "case": case, "writers": writers, "repeat": repeat,
                      "images_per_s": round(images / times[writers][-1], 2)})
        one = images / median(times[1])
        table += [[case, w, images / median(times[w]), images / median(times[w]) / one] for w in (1, 2)]
    return table


def main() -> None:
    """Measure and print JSON lines plus the summary tables."""
    args = _parse()
    warnings.filterwarnings("ignore")
    logging.getLogger("stego").setLevel(logging.ERROR)
    from benchutil import machine, note, print_table

    common = {"bench": "writer", "resolution": args.resolution, "chunks": args.chunks}

    def stamp() -> dict:
        return {**common, **machine()}  # the load at each measurement
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as name:
        tmp = Path(name)
        arrays = make_rows(args, note)
        row_kib = sum(a[0].nbytes for a in arrays.values()) / 2**10
        table = bench_writer(args, tmp, arrays, stamp)
        print_table(
            f"writer: {args.chunks} chunks of 40 rows ({tuple(arrays['feats'].shape[1:])} float16 features, "
            f"{row_kib:.0f} KiB raw per row), median of {args.repeats} interleaved repeats",
            ["codec", "writers", "rows/s", "vs 1 writer", "vs zarr's write", "cores busy", "rows per CPU s",
             "codec alone, N threads vs 1", "goal"], table,
        )
        if args.extract_images:
            rows = bench_extract(args, tmp, arrays, stamp)
            print_table(
                f"extract end to end, in-process, {BATCH} images per chunk (five-crop train + flipped val), "
                f"median of {args.repeats} alternated repeats",
                ["run", "writers", "images/s", "vs 1 writer"], rows,
            )


if __name__ == "__main__":
    from benchutil import stage_environment

    stage_environment()
    main()
