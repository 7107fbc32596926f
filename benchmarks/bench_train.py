"""Benchmark: head training steps/s from stored features vs running the backbone each step.

Stage path: features and labels opened from a Zarr store exactly as `stego train` does
(`training_data.load_training_data`), then `train._step` (kNN positive sampling, reading the batch's
and the positives' rows, head forward on both, correspondence loss, probes, Adam) per batch.
Measured as `stego train` runs this store by default (a split within
`training_data.IN_MEMORY_BYTES` is read into memory once), and streamed (every step reads its rows
from Zarr, as any split above that budget is trained); both with `runtime.readers` threads reading
the next batches while a step runs (`training_data.BatchStream`), and streamed once more with no
read-ahead (`--readers 0`: each step reads its own rows first, as before issue 13). Goals: the
default >= 25x the baseline; streamed >= 0.95x the in-memory step of the same repeat.

Baseline (the reference's way): each step first runs the frozen backbone on the batch's
images and on their kNN positives, then the same `_step` on those fresh features. The
images are already decoded and normalised in memory, so the baseline is, if anything,
flattered. Same batch size, resolution, model and torch threads. Goal: ratio >= 25.

Memory: `stego train` is run (load + a few steps) in a fresh process on a store of N and
of 4N stored crops, and its peak RSS (VmHWM) is read. Goal: flat in N, i.e. the growth
from N to 4N is at most 10 % of the extra feature bytes stored. By default the runs stream
(`--rss-in-memory-bytes 0`): the path of every split above `training_data.IN_MEMORY_BYTES`, which
is what has to stay flat; the default N and 4N are far below that budget, so `stego train`
itself would read them into memory (pass `--rss-in-memory-bytes 1073741824` to measure that).

Run:  .venv/bin/python benchmarks/bench_train.py                    (224 px, about 1 min on 2 idle CPUs)
      .venv/bin/python benchmarks/bench_train.py --resolution 112     (quick)
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

GOAL_RATIO = 25.0
GOAL_STREAMED = 0.95  # streamed step / in-memory step, same repeat
# "Flat": going from N to 4N stored crops may raise peak RSS by at most 10 % of the extra
# feature bytes stored (a per-batch reader needs none of them in memory).
GOAL_RSS_SHARE = 0.10
N_CLASSES = 5
ROWS_PER_CHUNK = 40  # extract's chunking: batch_size 8 images x 5 crops


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dino_vits8", help="backbone registry name or timm ViT name (default: dino_vits8)")
    parser.add_argument("--weights", default="random", help="backbone weights: random | auto | checkpoint path (default: random)")
    parser.add_argument("--resolution", type=int, default=224, help="crop side in pixels (default: 224)")
    parser.add_argument("--batch-size", type=int, default=16, help="train.batch_size (default: 16)")
    parser.add_argument("--crops", type=int, default=160, help="stored crops for the speed runs (default: 160)")
    parser.add_argument("--steps", type=int, default=5, help="stage steps timed per repeat (default: 5)")
    parser.add_argument("--baseline-steps", type=int, default=1, help="baseline steps timed per repeat (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported (default: 3)")
    parser.add_argument("--rss-crops", type=int, default=128, help="N, stored crops of the small memory run (default: 128)")
    parser.add_argument("--rss-factor", type=int, default=4, help="the large memory run has factor x N crops (default: 4)")
    parser.add_argument("--rss-steps", type=int, default=5, help="training steps in each memory run (default: 5)")
    parser.add_argument("--rss-in-memory-bytes", type=int, default=0,
                        help="load_training_data's in_memory_bytes in the memory runs (default: 0, always stream)")
    parser.add_argument("--skip-streamed", action="store_true", help="skip the streamed stage speed run")
    parser.add_argument("--readers", type=int, default=2, help="runtime.readers of the stage runs (default: 2, as params.yaml)")
    parser.add_argument("--compression", default="zstd", help="extract.compression of the store (default: zstd)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both paths (default: 2)")
    parser.add_argument("--skip-rss", action="store_true", help="skip the memory runs")
    parser.add_argument("--skip-speed", action="store_true", help="skip the speed runs (memory runs only)")
    parser.add_argument("--rss-worker", nargs=5, metavar=("STORE", "KNN", "STEPS", "THREADS", "BYTES"), help=argparse.SUPPRESS)
    return parser.parse_args()


def _train_params(batch_size: int, steps: int):
    from stego_tasks.config import TrainParams

    return TrainParams(steps=steps, batch_size=batch_size, device="cpu", log_every=10**9, checkpoint_every=0)


def write_stores(
    root: Path, crops: int, dim: int, grid: int, resolution: int, seed: int = 0, compression: str = "zstd"
) -> tuple[Path, Path]:
    """Write a features store (extract's train layout and chunking) and a kNN store.

    Args:
        root: folder to write `features.zarr` and `knn.zarr` into.
        crops: stored training crops M.
        dim: feature channels C.
        grid: feature map side h = w.
        resolution: label side R.
        seed: seed of the random features and labels.
        compression: `extract.compression` of the features.

    Returns:
        (features store path, kNN store path).
    """
    import numpy as np
    import zarr

    from stego_tasks.data.feature_store import array_layout
    from stego_tasks.method.neighbours import knn_graph

    rng = np.random.default_rng(seed)
    features, knn_path = root / "features.zarr", root / "knn.zarr"
    group = zarr.open_group(str(features), mode="w", zarr_format=3).create_group("train")
    feats = group.create_array("feats", shape=(crops, dim, grid, grid), dtype="float16",
                               **array_layout("train", "feats", ROWS_PER_CHUNK, (dim, grid, grid), compression))
    labels = group.create_array("labels", shape=(crops, resolution, resolution), dtype="uint8",
                                **array_layout("train", "labels", ROWS_PER_CHUNK, (resolution, resolution)))
    pooled = np.empty((crops, dim), dtype=np.float32)
    for start in range(0, crops, ROWS_PER_CHUNK):
        stop = min(start + ROWS_PER_CHUNK, crops)
        block = rng.standard_normal((stop - start, dim, grid, grid), dtype=np.float32)
        feats[start:stop] = block.astype(np.float16)
        pooled[start:stop] = block.mean(axis=(2, 3))
        labels[start:stop] = rng.integers(0, N_CLASSES, (stop - start, resolution, resolution), dtype=np.uint8)
    group.create_array("pooled", data=pooled, chunks=(ROWS_PER_CHUNK, dim))
    group.create_array("done", data=np.ones(-(-crops // ROWS_PER_CHUNK), dtype=bool))
    graph = knn_graph(pooled, 7)
    zarr.open_group(str(knn_path), mode="w", zarr_format=3).create_array("train", data=graph)
    return features, knn_path


def _runner(data, params, seed: int, backbone=None, images=None, readers: int = 2, device=None,
            autocast: bool = False) -> tuple[Callable[[int], float], Callable[[], None]]:
    """A timed step loop over one model and optimiser state, warmed up once.

    Without `backbone`: the stage's loop, `train._step` on batches read ahead by `readers`
    threads (`training_data.BatchStream`, as `train.training_batches` gives them). With it:
    the reference's step, the backbone on the batch's images and on their kNN positives
    first (under bfloat16 autocast when `autocast`), then the same `_step` on those fresh
    features (labels read from the store).

    Returns:
        (run(steps) -> wall seconds for that many steps, close()).
    """
    import torch

    from stego_tasks.data.training_data import BatchStream, TrainingBatch
    from stego_tasks.method.batching import step_plan
    from stego_tasks.method.model import build_model
    from stego_tasks.train import _optimizers, _step

    device = torch.device("cpu") if device is None else device
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(data.in_dim, N_CLASSES, params).to(device)
    for module in model.modules().values():
        module.train()
    optimizers = _optimizers(model, params)
    plan = step_plan(data.knn, data.size, params.batch_size, seed, 0, 10**12)
    stream = BatchStream(data, plan, device, readers=0 if backbone is not None else readers)

    def stage_step() -> None:
        _step(model, optimizers, next(stream), params, generator, device, 255)

    def backbone_step() -> None:
        index, positives = next(plan)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            feats = backbone(images[torch.from_numpy(index).to(images.device)]).float()
            feats_pos = backbone(images[torch.from_numpy(positives).to(images.device)]).float()
        labels = data.label_rows(index).to(device).long()
        _step(model, optimizers, TrainingBatch(feats.clone(), feats_pos.clone(), labels), params, generator, device, 255)

    if backbone is None:
        stage_step()  # first-call allocations
    else:
        backbone_step()  # first-call allocations (and cuDNN / autocast warm-up on a GPU)
    step = stage_step if backbone is None else backbone_step

    def run(steps: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run, stream.close


def _rss_worker(store: str, knn: str, steps: int, threads: int, in_memory_bytes: int) -> None:
    """Child process: `stego train`'s data loading and `steps` steps; print peak RSS as JSON.

    `feats_stored_mib` is the split's feature bytes (what a loader holding the split would
    hold); `feats_held_mib` / `labels_held_mib` what this run actually held in memory.
    """
    import torch
    from benchutil import emit, peak_rss_mib, rss_mib

    from stego_tasks.data.training_data import load_training_data
    from stego_tasks.train import fit

    torch.set_num_threads(threads)
    after_imports = rss_mib()
    data = load_training_data(Path(store), Path(knn), 255, N_CLASSES, in_memory_bytes=in_memory_bytes)
    after_load = rss_mib()
    fit(data, N_CLASSES, _train_params(16, steps), seed=0, ignore_index=255)
    held = 0 if data.streamed else 1
    labels = data.labels
    emit({"crops": data.size, "streamed": data.streamed, "rss_after_imports_mib": round(after_imports, 1),
          "rss_after_load_mib": round(after_load, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
          "feats_stored_mib": round(data.feats.nbytes / 2**20, 1),
          "feats_held_mib": round(held * data.feats.nbytes / 2**20, 1),
          "labels_held_mib": round(0 if labels is None else held * labels.nbytes / 2**20, 1),
          "labels_dtype": None if labels is None else str(labels.dtype)})


def _speed(args, common, emit, median, note) -> dict[str, float]:
    import torch

    from stego_tasks.data.training_data import load_training_data
    from stego_tasks.method.backbone import create_backbone

    backbone = create_backbone(args.backbone, weights=args.weights)
    grid = args.resolution // backbone.patch_size
    params = _train_params(args.batch_size, args.steps)
    # The store outlives the runs: the streamed path reads it on every step.
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        store, knn = write_stores(Path(tmp), args.crops, backbone.embed_dim, grid, args.resolution, compression=args.compression)
        load_s = time.perf_counter()
        data = load_training_data(store, knn, 255, N_CLASSES)
        load_s = time.perf_counter() - load_s
        emit({**common, "measure": "load_training_data", "crops": args.crops, "streamed": data.streamed, "seconds": round(load_s, 3)})
        images = torch.rand(args.crops, 3, args.resolution, args.resolution)
        images = (images - 0.45) / 0.225  # normalised pixels; a random-weight ViT's cost does not depend on content
        runs = {"stage": _runner(data, params, seed=0, readers=args.readers)}
        if not args.skip_streamed:
            streamed = load_training_data(store, knn, 255, N_CLASSES, in_memory_bytes=0)
            runs["streamed"] = _runner(streamed, params, seed=0, readers=args.readers)
            if args.readers:
                runs["streamed_no_readahead"] = _runner(streamed, params, seed=0, readers=0)
        backbone_run, _ = _runner(data, params, seed=0, backbone=backbone, images=images)
        rates: dict[str, list[float]] = {name: [] for name in runs}
        baseline = []
        for repeat in range(args.repeats):
            for name, (run, _) in runs.items():
                note(f"train repeat {repeat + 1}/{args.repeats}: {args.steps} {name} steps")
                seconds = run(args.steps)
                rates[name].append(args.steps / seconds)
                emit({**common, "measure": f"{name}_steps", "repeat": repeat, "steps": args.steps, "seconds": round(seconds, 3),
                      "steps_per_s": round(rates[name][-1], 4)})
            note(f"train repeat {repeat + 1}/{args.repeats}: {args.baseline_steps} backbone-in-the-loop steps")
            seconds = backbone_run(args.baseline_steps)
            baseline.append(args.baseline_steps / seconds)
            emit({**common, "measure": "backbone_steps", "repeat": repeat, "steps": args.baseline_steps, "seconds": round(seconds, 3), "steps_per_s": round(baseline[-1], 4)})
        for _, close in runs.values():
            close()
    # The ratio is formed within each repeat, then the median taken: the load drifts between repeats.
    result = {"baseline": median(baseline), "load_s": load_s, "stage_streamed_from_store": data.streamed}
    for name, values in rates.items():
        result[name] = median(values)
        result[f"{name}_ratio"] = median([a / b for a, b in zip(values, baseline, strict=True)])
        result[f"{name}_vs_stage"] = median([a / b for a, b in zip(values, rates["stage"], strict=True)])
    result["ratio"] = result["stage_ratio"]
    return result


def _memory(args, common, emit, note, run_worker) -> list[dict]:
    from stego_tasks.method.backbone import create_backbone

    backbone = create_backbone(args.backbone, weights=args.weights)
    grid = args.resolution // backbone.patch_size
    runs = []
    for crops in (args.rss_crops, args.rss_crops * args.rss_factor):
        with tempfile.TemporaryDirectory(prefix="bench-train-rss-") as tmp:
            note(f"train memory: writing a store of {crops} crops, then `stego train` in a fresh process")
            store, knn = write_stores(Path(tmp), crops, backbone.embed_dim, grid, args.resolution)
            result = run_worker(Path(__file__), ["--rss-worker", str(store), str(knn), str(args.rss_steps), str(args.threads),
                                                 str(args.rss_in_memory_bytes)])
        runs.append(result)
        emit({**common, "measure": "train_peak_rss", **result})
    return runs


def main() -> None:
    """Measure and print JSON lines plus a summary table."""
    args = _parse()
    warnings.filterwarnings("ignore")
    logging.getLogger("stego").setLevel(logging.ERROR)
    if args.rss_worker:
        _rss_worker(args.rss_worker[0], args.rss_worker[1], int(args.rss_worker[2]), int(args.rss_worker[3]), int(args.rss_worker[4]))
        return

    import torch
    from benchutil import emit, machine, median, note, print_table, run_worker, verdict

    torch.set_num_threads(args.threads)
    common = {"bench": "train", **machine(), "backbone": args.backbone, "resolution": args.resolution,
              "batch_size": args.batch_size, "torch_threads": args.threads}
    rows: list[list] = []
    summary = {**common, "measure": "summary"}
    if not args.skip_speed:
        speed = _speed(args, common, emit, median, note)
        ratio = speed["ratio"]
        how = "streamed" if speed["stage_streamed_from_store"] else "in memory"
        rows += [
            ["backbone in the loop (reference), steps/s", speed["baseline"], 1.0, ""],
            [f"stored features (stage default: {how}), steps/s", speed["stage"], ratio,
             f">= {GOAL_RATIO:g} ({verdict(ratio, GOAL_RATIO)})"],
        ]
        summary.update({"crops": args.crops, "stage_streamed": speed["stage_streamed_from_store"],
                        "stage_steps_per_s": round(speed["stage"], 4),
                        "backbone_steps_per_s": round(speed["baseline"], 4), "ratio": round(ratio, 2),
                        "goal_ratio": GOAL_RATIO, "verdict_ratio": verdict(ratio, GOAL_RATIO)})
        if "streamed" in speed:
            vs = speed["streamed_vs_stage"]
            rows.append([f"stored features streamed per batch, {args.readers} readers (splits above the budget), steps/s",
                         speed["streamed"], speed["streamed_ratio"],
                         f"{vs:.3f} of in memory, >= {GOAL_STREAMED:g} ({verdict(vs, GOAL_STREAMED)})"])
            summary.update({"streamed_steps_per_s": round(speed["streamed"], 4), "readers": args.readers,
                            "compression": args.compression, "streamed_ratio": round(speed["streamed_ratio"], 2),
                            "streamed_vs_in_memory": round(vs, 3), "verdict_streamed": verdict(vs, GOAL_STREAMED)})
        if "streamed_no_readahead" in speed:
            rows.append(["streamed, no read-ahead (readers 0: each step reads first), steps/s", speed["streamed_no_readahead"],
                         speed["streamed_no_readahead_ratio"], f"{speed['streamed_no_readahead_vs_stage']:.3f} of in memory"])
            summary.update({"streamed_no_readahead_steps_per_s": round(speed["streamed_no_readahead"], 4),
                            "streamed_no_readahead_vs_in_memory": round(speed["streamed_no_readahead_vs_stage"], 3)})
    if not args.skip_rss:
        small, large = _memory(args, common, emit, note, run_worker)
        growth_mib = large["peak_rss_mib"] - small["peak_rss_mib"]
        share = growth_mib / (large["feats_stored_mib"] - small["feats_stored_mib"])
        per_crop = growth_mib / (large["crops"] - small["crops"])
        summary.update({"peak_rss_small_mib": small["peak_rss_mib"], "peak_rss_large_mib": large["peak_rss_mib"],
                        "rss_growth_ratio": round(large["peak_rss_mib"] / small["peak_rss_mib"], 2),
                        "rss_growth_over_extra_feature_bytes": round(share, 2), "peak_rss_mib_per_stored_crop": round(per_crop, 3),
                        "rss_in_memory_bytes": args.rss_in_memory_bytes, "rss_streamed": [small["streamed"], large["streamed"]],
                        "verdict_rss": verdict(share, GOAL_RSS_SHARE, higher_is_better=False)})
        for run in (small, large):
            rows.append([f"peak RSS, {run['crops']} crops ({run['feats_held_mib']:.0f} MiB features + "
                         f"{run['labels_held_mib']:.0f} MiB {run['labels_dtype']} labels held), MiB",
                         run["peak_rss_mib"], run["peak_rss_mib"] / small["peak_rss_mib"], ""])
        rows.append(["peak RSS growth per stored crop, MiB", per_crop, "", ""])
        rows.append(["peak RSS growth / extra feature bytes stored", share, "",
                     f"flat, <= {GOAL_RSS_SHARE:g} ({summary['verdict_rss']})"])
    emit(summary)
    print_table(
        f"train: {args.backbone} @ {args.resolution}px, batch {args.batch_size}, {args.threads} torch threads, "
        f"{args.readers} readers, features {args.compression}, "
        f"median of {args.repeats} (ratio: median of the per-repeat ratios)",
        ["measure", "value", "ratio", "goal"], rows,
    )


if __name__ == "__main__":
    from benchutil import stage_environment

    stage_environment()
    main()
