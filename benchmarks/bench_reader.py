"""Benchmark: the streamed training reader and the features' codecs (`extract.compression`).

For each codec the store offers (zstd, none, blosc-lz4, blosc-zstd), a train split of
`--crops` rows is written in `extract`'s layout (`feature_store.array_layout`: one shard
per extraction chunk of 40 rows, one-row inner chunks) and measured:

- size: bytes on disk per row against the raw float16 row;
- write: rows/s of writing whole shards (the encode `extract` pays per chunk);
- decode limit: rows/s of decoding rows already in memory, one thread (raw: a copy): the
  most a reader thread can do;
- zarr: rows/s of the path `gather_rows` took before (`array[row]`, one row per call),
  one thread: the same-run baseline;
- readers: rows/s of `training_data.ShardRows` (one `pread` + decode per row) with 1, 2 and
  4 threads, each reading its own batches of 32 random rows (a step's 16 rows and their 16
  kNN positives). Goal: 2 readers >= 1.6x one (on 2 CPUs).

The store is read from a warm page cache, so this is the CPU cost of reading; a cold disk
adds its own latency (which more readers hide, as they keep several reads in flight).

Loss check (`--loss-store`, default the demo's artifacts/features.zarr when it exists): its
train features and labels are copied into a store per codec, and `train.fit` runs
`--loss-steps` steps streamed from each, against the same run on the values held in memory
(the float16 store). Lossless codecs must give identical losses and models.

Features: `--weights` and `--corpus` choose what is stored: by default a random-weight
backbone on the synthetic demo images (so the script runs offline); pass a DINO checkpoint
and a folder of photos for sizes that hold for real features. `--feature-crops` crops are
computed and tiled up to `--crops` rows.

Run:  .venv/bin/python benchmarks/bench_reader.py                          (about 2 min on 2 idle CPUs)
      .venv/bin/python benchmarks/bench_reader.py --weights /models/dino_deitsmall8_300ep_pretrain.pth \\
          --backbone dino_vits8_300ep --corpus /data/camvid/images/train
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

CODECS = ("zstd", "none", "blosc-lz4", "blosc-zstd")
ROWS_PER_CHUNK = 40  # extract's chunking: batch_size 8 images x 5 crops
GOAL_SCALING = 1.6
N_CLASSES = 5


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dino_vits8", help="backbone that computes the stored features (default: dino_vits8)")
    parser.add_argument("--weights", default="random", help="its weights: random | auto | checkpoint path (default: random)")
    parser.add_argument("--corpus", default=None, help="folder of images to embed (default: synthetic demo images)")
    parser.add_argument("--features", default=None, help="a .npy of float16 features [n, C, h, w] to store instead of "
                        "computing them (written by --save-features; pass the --resolution they were made at)")
    parser.add_argument("--save-features", default=None, help="save the computed features to this .npy")
    parser.add_argument("--resolution", type=int, default=224, help="crop side (default: 224)")
    parser.add_argument("--feature-crops", type=int, default=40, help="crops run through the backbone (default: 40)")
    parser.add_argument("--crops", type=int, default=480, help="rows of each store, the computed crops tiled (default: 480)")
    parser.add_argument("--codecs", nargs="+", choices=CODECS, default=list(CODECS), help="codecs to measure")
    parser.add_argument("--readers", nargs="+", type=int, default=[1, 2, 4], help="reader thread counts (default: 1 2 4)")
    parser.add_argument("--batch", type=int, default=32, help="rows per batch read (default: 32)")
    parser.add_argument("--batches", type=int, default=24, help="batches read per measurement (default: 24)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; the median is reported (default: 5)")
    parser.add_argument("--loss-store", default="artifacts/features.zarr", help="store for the loss check (default: the demo's)")
    parser.add_argument("--loss-steps", type=int, default=20, help="training steps of the loss check (default: 20)")
    parser.add_argument("--skip-loss", action="store_true", help="skip the loss check")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    return parser.parse_args()


# (name, channels, patch) of the backbones the presets use or offer.
BACKBONES = (("ViT-S/8", 384, 8), ("ViT-S/16", 384, 16), ("ViT-B/8", 768, 8), ("ViT-B/16", 768, 16))
# Corpora for the scale table: (name, train images, val images); five-crop on train.
CORPORA = (("CocoStuff-27", 49_000, 5_000), ("Cityscapes-27", 2_975, 500))


def row_bytes(split: str, dim: int, patch: int, resolution: int) -> dict[str, int]:
    """Raw bytes per stored row of every array of a split, from `feature_store`'s own specs."""
    import numpy as np

    from stego_tasks.data.feature_store import _split_specs

    fingerprint = {"resolution": resolution, "embed_dim": dim, "flip": split == "val"}
    specs = _split_specs(split, fingerprint, resolution // patch)
    return {name: int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for name, (shape, dtype) in specs.items()}


def size_tables(ratios: dict[str, float], resolution: int = 224, val_resolution: int = 320) -> tuple[list, list]:
    """Bytes per train crop and val image per backbone, and store totals at corpus scale.

    `ratios`: measured size / raw of the features per codec (labels, images and the small
    arrays are counted raw: an upper bound, labels shrink a lot under zstd).
    """
    per_row, totals = [], []
    for name, dim, patch in BACKBONES:
        train, val = row_bytes("train", dim, patch, resolution), row_bytes("val", dim, patch, val_resolution)
        feats_train, feats_val = train["feats"], val["feats"] + val["feats_flip"]
        rest_train, rest_val = sum(train.values()) - feats_train, sum(val.values()) - feats_val
        per_row.append([name, f"[{dim}, {resolution // patch}, {resolution // patch}]", feats_train / 2**10,
                        sum(train.values()) / 2**10, sum(val.values()) / 2**10,
                        *[(feats_train * r + rest_train) / 2**10 for r in ratios.values()]])
        for corpus, n_train, n_val in CORPORA:
            raw = 5 * n_train * sum(train.values()) + n_val * sum(val.values())
            coded = [5 * n_train * (feats_train * r + rest_train) + n_val * (feats_val * r + rest_val) for r in ratios.values()]
            totals.append([corpus, name, f"{5 * n_train} + {n_val}", raw / 2**30, *[c / 2**30 for c in coded]])
    return per_row, totals


def compute_features(backbone_name: str, weights: str, corpus: str | None, resolution: int, crops: int, note=print):
    """float16 features [crops, C, R/p, R/p] of five-crops of `corpus` images (default: synthetic demo images)."""
    import numpy as np
    import torch

    from stego_tasks.data.images import load_rgb
    from stego_tasks.data.preprocess import preprocess
    from stego_tasks.method.backbone import create_backbone, normalize

    with tempfile.TemporaryDirectory(prefix="bench-reader-corpus-") as tmp:
        if corpus is None:
            from stego_tasks.demo_data import demo_data

            demo_data(Path(tmp), n_train=max(3, -(-crops // 5)), n_val=3, size=max(128, resolution), seed=0)
            corpus = str(Path(tmp) / "images" / "train")
        paths = sorted(p for p in Path(corpus).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        inputs = []
        for path in paths:
            inputs += [crop for crop, _ in preprocess(load_rgb(path), None, resolution, True, 0.5, "reference")]
            if len(inputs) >= crops:
                break
    backbone = create_backbone(backbone_name, weights=weights, pos_embed="dino")
    note(f"reader: embedding {min(crops, len(inputs))} crops with {backbone_name} ({backbone.weights_source})")
    batch = torch.from_numpy(np.stack(inputs[:crops])).permute(0, 3, 1, 2)
    out = []
    with torch.inference_mode():
        for start in range(0, batch.shape[0], 8):
            out.append(backbone(normalize(batch[start : start + 8], backbone.mean, backbone.std)).float().numpy().astype(np.float16))
    return np.concatenate(out), backbone


def write_split(path: Path, feats, labels, compression: str):
    """A train split of `feats` / `labels` in extract's layout with `compression`; returns (group, write seconds of feats)."""
    import zarr

    from stego_tasks.data.feature_store import array_layout

    group = zarr.open_group(str(path), mode="w", zarr_format=3).create_group("train")
    arrays = {}
    for name, values in (("feats", feats), ("labels", labels)):
        layout = array_layout("train", name, ROWS_PER_CHUNK, values.shape[1:], compression)
        arrays[name] = group.create_array(name, shape=values.shape, dtype=values.dtype, fill_value=0, **layout)
    seconds = 0.0
    for start in range(0, feats.shape[0], ROWS_PER_CHUNK):
        stop = min(start + ROWS_PER_CHUNK, feats.shape[0])
        began = time.perf_counter()
        arrays["feats"][start:stop] = feats[start:stop]
        seconds += time.perf_counter() - began
        arrays["labels"][start:stop] = labels[start:stop]
    return group, seconds


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.name != "zarr.json")


def decode_limit(array, rows: int = 64) -> float:
    """Rows/s of decoding `array`'s stored rows already in memory, one thread (the codec's own cost)."""
    import numpy as np

    from stego_tasks.data.shard_rows import ShardRows

    reader = ShardRows.open(array)
    out = np.empty(array.shape[1:], dtype=array.dtype)
    rows = min(rows, array.shape[0])
    blobs = []
    for row in range(rows):
        shard, local = divmod(row, reader.rows_per_shard)
        path, index = reader._index(shard)
        with open(path, "rb") as handle:
            handle.seek(int(index[local, 0]))
            blobs.append(handle.read(int(index[local, 1])))
    began = time.perf_counter()
    for blob in blobs:
        if reader._decode is None:
            out[...] = np.frombuffer(blob, dtype=array.dtype).reshape(out.shape)
        else:
            reader._decode(blob, out=out)
    return rows / (time.perf_counter() - began)


def _batches(size: int, batch: int, count: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, size, batch) for _ in range(count)]


def zarr_rows_per_s(array, batches) -> float:
    """Rows/s of zarr's single-row reads (the path before `ShardRows`), one thread."""
    import numpy as np

    began = time.perf_counter()
    for index in batches:
        np.stack([array[int(row)] for row in np.unique(index)])
    return sum(len(np.unique(b)) for b in batches) / (time.perf_counter() - began)


def reader_rows_per_s(array, batches, readers: int) -> float:
    """Rows/s of `ShardRows` with `readers` threads, each batch read whole by one thread (as `BatchStream` does)."""
    from stego_tasks.data.shard_rows import ShardRows, gather_rows

    reader = ShardRows.open(array)
    gather_rows(array, batches[0][:2], reader)  # warm the shard indices' cache, as a training run has
    for index in batches:
        reader.gather(index[:1])
    began = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        rows = sum(len(r) for r in pool.map(lambda b: gather_rows(array, b, reader), batches))
    return rows / (time.perf_counter() - began)


def _loss_check(args, emit, common, note) -> list[list]:
    """Losses of `fit` streamed from a copy of the loss store per codec vs the in-memory float16 values."""
    import numpy as np
    import torch
    import zarr

    from stego_tasks.config import TrainParams
    from stego_tasks.data.training_data import TrainingData, load_training_data
    from stego_tasks.method.neighbours import knn_graph, pool_features
    from stego_tasks.train import fit

    source = Path(args.loss_store)
    if not (source / "train").exists():
        note(f"reader: no store at {source}; loss check skipped")
        return []
    train = zarr.open_group(str(source), mode="r")["train"]
    feats, labels = train["feats"][:], train["labels"][:]
    knn = knn_graph(pool_features(feats), 7)
    params = TrainParams(steps=args.loss_steps, batch_size=16, device="cpu", log_every=1, checkpoint_every=0)
    held = TrainingData(torch.from_numpy(feats), torch.from_numpy(labels), knn)
    _, reference = fit(held, N_CLASSES, params, seed=0, ignore_index=255)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-reader-loss-") as tmp:
        for codec in args.codecs:
            store = Path(tmp) / f"{codec}.zarr"
            write_split(store, feats, labels, codec)
            zarr.open_group(str(store), mode="a")["train"].create_array("done", data=np.ones(1, dtype=bool))
            zarr.open_group(str(Path(tmp) / f"{codec}-knn.zarr"), mode="w", zarr_format=3).create_array("train", data=knn)
            data = load_training_data(store, Path(tmp) / f"{codec}-knn.zarr", 255, N_CLASSES, in_memory_bytes=0)
            _, got = fit(data, N_CLASSES, params, seed=0, ignore_index=255)
            worst = max(abs(a[k] - b[k]) for a, b in zip(got, reference, strict=True) for k in a if k != "step")
            same = got == reference
            emit({**common, "measure": "loss_check", "codec": codec, "steps": args.loss_steps, "crops": int(feats.shape[0]),
                  "max_abs_loss_difference": worst, "identical": same})
            rows.append([codec, f"{feats.shape[0]} crops of {source}", args.loss_steps, worst, "yes" if same else "NO"])
    return rows


def main() -> None:
    """Measure and print JSON lines plus summary tables."""
    args = _parse()
    warnings.filterwarnings("ignore")
    logging.getLogger("stego").setLevel(logging.ERROR)

    import numpy as np
    import torch
    import zarr
    from benchutil import emit, machine, median, note, print_table, verdict

    torch.set_num_threads(args.threads)
    if args.features:
        feats, source = np.load(args.features), f"features from {args.features}"
    else:
        feats, backbone = compute_features(args.backbone, args.weights, args.corpus, args.resolution, args.feature_crops, note)
        source = backbone.weights_source
        if args.save_features:
            np.save(args.save_features, feats)
    tiles = -(-args.crops // feats.shape[0])
    feats = np.concatenate([feats] * tiles)[: args.crops]
    labels = np.random.default_rng(0).integers(0, N_CLASSES, (args.crops, args.resolution, args.resolution), dtype=np.uint8)
    common = {"bench": "reader", **machine(), "backbone": args.backbone, "weights": source,
              "resolution": args.resolution, "row_bytes": int(feats[0].nbytes), "crops": args.crops}
    raw = feats[0].nbytes
    table, scaling = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:
        for codec in args.codecs:
            note(f"reader: writing a {args.crops}-row store with {codec}")
            group, write_s = write_split(Path(tmp) / f"{codec}.zarr", feats, labels, codec)
            size = disk_bytes(Path(tmp) / f"{codec}.zarr" / "train" / "feats") / args.crops
            array = zarr.open_group(str(Path(tmp) / f"{codec}.zarr"), mode="r")["train"]["feats"]
            results: dict[str, list[float]] = {"decode_limit": [], "zarr": [], **{f"readers_{n}": [] for n in args.readers}}
            for repeat in range(args.repeats):
                batches = _batches(args.crops, args.batch, args.batches, seed=repeat)
                results["decode_limit"].append(decode_limit(array))
                results["zarr"].append(zarr_rows_per_s(array, batches[: max(2, args.batches // 4)]))
                for n in args.readers:
                    results[f"readers_{n}"].append(reader_rows_per_s(array, batches, n))
                emit({**common, "measure": "read", "codec": codec, "repeat": repeat,
                      **{k: round(v[-1], 1) for k, v in results.items()}})
            med = {k: median(v) for k, v in results.items()}
            one = results.get("readers_1")
            ratios = {n: median([b / a for a, b in zip(one, results[f"readers_{n}"], strict=True)]) for n in args.readers} if one else {}
            scaling[codec] = ratios.get(2, float("nan"))
            summary = {**common, "measure": "codec_summary", "codec": codec, "bytes_per_row": round(size),
                       "size_vs_raw": round(size / raw, 3), "write_rows_per_s": round(args.crops / write_s, 1),
                       **{f"{k}_rows_per_s": round(v, 1) for k, v in med.items()},
                       **{f"readers_{n}_over_1": round(r, 2) for n, r in ratios.items()}}
            emit(summary)
            table.append([codec, size / 2**10, size / raw, args.crops / write_s, med["decode_limit"], med["zarr"],
                          *[med[f"readers_{n}"] for n in args.readers],
                          ratios.get(2, float("nan")), verdict(ratios.get(2, float("nan")), GOAL_SCALING)])
    print_table(
        f"reader: {args.backbone} ({source}) features at {args.resolution} px, row {raw / 2**10:.0f} KiB raw, "
        f"{args.crops} rows, batches of {args.batch} random rows, warm page cache, median of {args.repeats}",
        ["codec", "KiB/row", "size vs raw", "write rows/s", "decode limit rows/s (1 thread)", "zarr rows/s (before)",
         *[f"{n} reader{'s' if n > 1 else ''} rows/s" for n in args.readers], "2 readers / 1", f"goal >= {GOAL_SCALING:g}"],
        table,
    )
    ratios = {row[0]: row[2] for row in table}
    per_row, totals = size_tables(ratios, args.resolution, 320)
    emit({**common, "measure": "store_sizes", "size_vs_raw": ratios,
          "per_row_kib": {r[0]: [round(v, 1) if isinstance(v, float) else v for v in r[1:]] for r in per_row}})
    print_table(f"store bytes per row (KiB), train crops at {args.resolution} px, val images at 320 px (features + flipped "
                f"features + labels + RGB), features at each codec's measured size; other arrays raw",
                ["backbone", "train features", "train features raw", "train crop raw", "val image raw",
                 *[f"train crop, {c}" for c in ratios]], per_row)
    print_table("store size at corpus scale (GiB): five-crop train + val", ["corpus", "backbone", "train crops + val images",
                "raw", *ratios], totals)
    if not args.skip_loss:
        rows = _loss_check(args, emit, common, note)
        if rows:
            print_table("loss check: fit streamed from each codec's store vs the same float16 values held in memory",
                        ["codec", "data", "steps", "max abs loss difference", "identical losses"], rows)


if __name__ == "__main__":
    from benchutil import stage_environment

    stage_environment()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
