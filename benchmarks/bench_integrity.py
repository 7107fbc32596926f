"""Benchmark: the cost of checking a features store against its recorded digests.

Every stage that reads the features store first compares each stored object (chunk or
shard) of the arrays it reads with the size and crc32 recorded when it was written
(`feature_store.verify_split`: one read of the raw bytes and a crc32, no decode), and
`extract` does the same for every done chunk (`feature_store.pending_chunks`) before it
trusts it. Writing records the digests after each chunk (`store_writer.SplitWriter`: a
crc32 of the bytes it encodes; `record_chunk`, the chunk's objects read back once, does the
same for a chunk written before records existed).

Store: written by the stage's own writer (`open_split` + `store_writer.SplitWriter`) in the train
layout of `dino_vits8` features at 224 px with five-crop (384 x 28 x 28 float16 features,
224 x 224 uint8 labels, 40 crops per chunk), random values.

Measured in the same run, each repeated and the median reported:
  read      `train/feats[:]` + `train/labels[:]`: what `stego train` does with a split that
            fits its memory budget (the baseline: a plain decode of the arrays)
  verify    `verify_split(["feats", "labels"])`, the check `stego train` adds before it
  pending   `pending_chunks` on the whole split, the check a no-op `stego extract` runs
  write     `SplitWriter.write` per chunk (digests included); `record_chunk` timed apart

Ratios: verify / read (the readers' added cost) and record / write (the writer's).
Both reads come from the page cache (the store was just written), which is the worst
case for the ratio: from a cold disk both are bound by the same bytes read.

Run:  .venv/bin/python benchmarks/bench_integrity.py            (about 30 s on 2 idle CPUs)
      .venv/bin/python benchmarks/bench_integrity.py --crops 80 --repeats 2   (quick)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

GOAL_VERIFY_RATIO = 0.5  # the check may add at most half of a plain read of the same arrays


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=320, help="stored training crops (default: 320, 8 chunks)")
    parser.add_argument("--dim", type=int, default=384, help="feature channels (default: 384, ViT-S)")
    parser.add_argument("--grid", type=int, default=28, help="feature map side (default: 28, 224 px / 8)")
    parser.add_argument("--resolution", type=int, default=224, help="label side (default: 224)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per chunk; x5 crops (default: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported (default: 3)")
    return parser.parse_args()


def write_store(path: Path, args: argparse.Namespace) -> tuple[object, list[float], list[float]]:
    """Write a train split with the stage's writer; return (group, write seconds, record seconds) per chunk."""
    import numpy as np
    import zarr

    from stego_tasks.data.feature_store import open_split
    from stego_tasks.data.store_integrity import record_chunk
    from stego_tasks.data.store_writer import SplitWriter

    fingerprint = {"five_crop": True, "batch_size": args.batch_size, "resolution": args.resolution,
                   "embed_dim": args.dim, "flip": False}
    rows_per_chunk = args.batch_size * 5
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    group = open_split(root, "train", fingerprint, args.crops, args.grid)
    row_ids = np.repeat(np.arange(-(-args.crops // 5)), 5)[: args.crops].astype(np.int64)
    rng = np.random.default_rng(0)
    writer = SplitWriter(group, rows_per_chunk, row_ids)
    writes, records = [], []
    for index, start in enumerate(range(0, args.crops, rows_per_chunk)):
        n = min(rows_per_chunk, args.crops - start)
        feats = rng.standard_normal((n, args.dim, args.grid, args.grid), dtype=np.float32)
        arrays = {
            "feats": feats.astype(np.float16),
            "pooled": feats.mean(axis=(2, 3)),
            "labels": rng.integers(0, 27, (n, args.resolution, args.resolution), dtype=np.uint8),
            "crops": (np.arange(n) % 5).astype(np.int8),
        }
        begin = time.perf_counter()
        writer.write(index, arrays)
        writes.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        record_chunk(group, index)  # the digests of a chunk read back, as for a store without records
        records.append(time.perf_counter() - begin)
    return group, writes, records


def main() -> None:
    """Measure and print JSON lines plus a summary table."""
    args = _parse()
    from benchutil import emit, machine, median, note, print_table, verdict

    from stego_tasks.data.feature_store import pending_chunks
    from stego_tasks.data.store_integrity import verify_split

    common = {"bench": "integrity", **machine(), "crops": args.crops, "dim": args.dim, "grid": args.grid,
              "resolution": args.resolution}
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        store = Path(tmp) / "features.zarr"
        note(f"integrity: writing {args.crops} crops with the stage's writer")
        group, writes, records = write_store(store, args)
        nbytes = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        rows_per_chunk = args.batch_size * 5
        row_ids = group["image_ids"][:]
        read_s, verify_s, pending_s = [], [], []
        for repeat in range(args.repeats):
            note(f"integrity repeat {repeat + 1}/{args.repeats}")
            begin = time.perf_counter()
            group["feats"][:], group["labels"][:]
            read_s.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            verify_split(group, store, ["feats", "labels"])
            verify_s.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            assert pending_chunks(group, row_ids, rows_per_chunk) == [], "a freshly written chunk counts as damaged"
            pending_s.append(time.perf_counter() - begin)
            emit({**common, "measure": "repeat", "repeat": repeat, "read_s": round(read_s[-1], 4),
                  "verify_s": round(verify_s[-1], 4), "pending_s": round(pending_s[-1], 4),
                  "verify_over_read": round(verify_s[-1] / read_s[-1], 3)})
    ratios = [v / r for v, r in zip(verify_s, read_s, strict=True)]
    record_share = sum(records) / sum(writes)
    summary = {
        **common, "measure": "summary", "store_mib": round(nbytes / 2**20, 1),
        "read_s": round(median(read_s), 4), "verify_s": round(median(verify_s), 4), "pending_s": round(median(pending_s), 4),
        "verify_over_read": round(median(ratios), 3), "write_s_per_chunk": round(median(writes), 4),
        "record_s_per_chunk": round(median(records), 4), "record_over_write": round(record_share, 3),
        "verify_goal": GOAL_VERIFY_RATIO, "verdict": verdict(median(ratios), GOAL_VERIFY_RATIO, higher_is_better=False),
    }
    emit(summary)
    print_table(
        f"integrity: {args.crops} crops of {args.dim}x{args.grid}x{args.grid} float16 + {args.resolution}^2 uint8 labels "
        f"({summary['store_mib']} MiB stored), median of {args.repeats}",
        ["path", "seconds", "vs baseline", "goal"],
        [
            ["read feats + labels (baseline)", summary["read_s"], 1.0, ""],
            ["verify_split feats + labels", summary["verify_s"], summary["verify_over_read"],
             f"<= {GOAL_VERIFY_RATIO} ({summary['verdict']})"],
            ["pending_chunks, all arrays (no-op extract)", summary["pending_s"], summary["pending_s"] / summary["read_s"], ""],
            ["SplitWriter.write per chunk (baseline)", summary["write_s_per_chunk"], 1.0, ""],
            ["record_chunk per chunk (a read-back; not in the write)", summary["record_s_per_chunk"], summary["record_over_write"], ""],
        ],
    )


if __name__ == "__main__":
    from benchutil import stage_environment

    stage_environment()
    main()
