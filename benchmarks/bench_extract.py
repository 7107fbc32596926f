"""Benchmark: images/s of the real `extract` stage against a bare timm forward loop.

Real path: `stego_tasks.extract.extract` on a demo corpus (manifest from `ingest`): PNG
decode, five-crop/resize, backbone forward (plus the flipped forward on val), float16
conversion and Zarr writes. With `--n-workers 1` (the default, as params.yaml) the stage
runs its chunks in-process, decoding the next chunk in a thread; with more workers it
starts a local Dask cluster, as a user with `dask.n_workers: 2` gets.

Baseline: the same timm model (`Backbone.model.forward_features`) run in this process,
with the same torch thread count the Dask worker gets, over the very same batches already
decoded, cropped and normalised in memory. Nothing but the network runs in the timed loop.

Fixed startup costs (building the backbone in the main process and again for the chunks;
on the Dask path also the cluster start/stop and the worker's imports) do not grow with
the corpus. They are identified two
ways: measured one by one, and as the intercept of a two-point fit, T(N) and T(scale * N).
The steady-state rate is the slope of that fit. Goal: steady-state ratio >= 0.9.

Run:  .venv/bin/python benchmarks/bench_extract.py            (about 1.5 min on 2 idle CPUs)
      .venv/bin/python benchmarks/bench_extract.py --resolution 224 --n-train 16
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

GOAL = 0.9


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dino_vits8", help="backbone registry name or timm ViT name (default: dino_vits8)")
    parser.add_argument("--weights", default="random", help="backbone weights: random | auto | checkpoint path (default: random)")
    parser.add_argument("--resolution", type=int, default=112, help="network input side; 224 is the published one (default: 112)")
    parser.add_argument("--val-resolution", type=int, default=None,
                        help="extract.val_resolution, the val images' side (default: same as --resolution, as the demo's params.yaml)")
    parser.add_argument("--image-size", type=int, default=128, help="side of the demo corpus images (default: 128)")
    parser.add_argument("--n-train", type=int, default=8, help="training images of the small corpus N (default: 8)")
    parser.add_argument("--n-val", type=int, default=4, help="validation images of the small corpus N (default: 4)")
    parser.add_argument("--scale", type=int, default=2, help="the large corpus has scale x N images (default: 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="extract.batch_size: images per chunk (default: 8)")
    parser.add_argument("--n-workers", type=int, default=1, help="dask.n_workers (default: 1)")
    parser.add_argument("--threads-per-worker", type=int, default=1, help="dask.threads_per_worker (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported (default: 3)")
    return parser.parse_args()


def _warm_worker() -> float:
    """Runs on the Dask worker: time to import the extraction stack there (torch, timm, ...)."""
    start = time.perf_counter()
    import stego_tasks.extract  # noqa: F401

    return time.perf_counter() - start


def _make_corpus(root: Path, n_train: int, n_val: int, size: int) -> Path:
    """Demo corpus and its manifest (the ingest stage's output) under `root`."""
    from stego_tasks.demo_data import demo_data
    from stego_tasks.ingest import ingest

    demo_data(root / "corpus", n_train=n_train, n_val=n_val, size=size, seed=0)
    manifest = root / "manifest.parquet"
    ingest(root / "corpus", manifest, root / "quarantine.csv")
    return manifest


def _baseline_batches(manifest: Path, corpus, params, mean, std) -> list[tuple[object, bool]]:
    """The chunks `extract` would build, decoded and normalised in memory: [(batch, flip)]."""
    import numpy as np
    import torch

    from stego_tasks.data.feature_store import SPLITS, split_resolution
    from stego_tasks.data.images import load_rgb
    from stego_tasks.data.manifest import read_manifest, resolve_in_corpus
    from stego_tasks.data.preprocess import preprocess
    from stego_tasks.method.backbone import normalize

    rows = read_manifest(manifest)
    batches = []
    for split in SPLITS:
        part = rows[rows["split"] == split].sort_values("id")
        five_crop = params.five_crop and split == "train"
        for start in range(0, len(part), params.batch_size):
            crops = []
            for rel in part["path"].iloc[start : start + params.batch_size]:
                image = load_rgb(resolve_in_corpus(Path(corpus.root), rel))
                resolution = split_resolution(params, split)
                crops += [crop for crop, _ in preprocess(image, None, resolution, five_crop, params.crop_ratio)]
            tensor = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
            batches.append((normalize(tensor, mean, std).contiguous(), params.flip and split == "val"))
    return batches


def _bare_forward(model, batches) -> float:
    """Seconds for the timm forward (and flipped forward on val) over all batches."""
    import torch

    with torch.inference_mode():
        start = time.perf_counter()
        for batch, flip in batches:
            model.forward_features(batch)
            if flip:
                model.forward_features(batch.flip(-1))
        return time.perf_counter() - start


def _dask_costs(dask) -> tuple[float, float, float]:
    """(cluster start s, first-task import s on the worker, cluster close s)."""
    from stego_tasks.runtime.dask_cluster import dask_client

    start = time.perf_counter()
    context = dask_client(dask)
    client = context.__enter__()
    started = time.perf_counter()
    imports = client.submit(_warm_worker, pure=False).result()
    closing = time.perf_counter()
    context.__exit__(None, None, None)
    return started - start, imports, time.perf_counter() - closing


def main() -> None:
    """Measure and print JSON lines plus a summary table."""
    args = _parse()
    warnings.filterwarnings("ignore")
    logging.getLogger("stego").setLevel(logging.ERROR)
    logging.getLogger("distributed").setLevel(logging.ERROR)

    import torch
    from benchutil import emit, machine, median, note, print_table, timed, verdict

    from stego_tasks.config import BackboneParams, CorpusParams, DaskParams, ExtractParams
    from stego_tasks.demo_data import DEMO_CLASS_NAMES, DEMO_IGNORE_INDEX, DEMO_N_CLASSES
    from stego_tasks.extract import extract
    from stego_tasks.method.backbone import create_backbone
    from stego_tasks.runtime.dask_cluster import torch_threads_per_worker

    dask = DaskParams(address=None, n_workers=args.n_workers, threads_per_worker=args.threads_per_worker)
    val_resolution = args.val_resolution or args.resolution
    params = ExtractParams(resolution=args.resolution, val_resolution=val_resolution, batch_size=args.batch_size, device="cpu")
    backbone_params = BackboneParams(name=args.backbone, weights=args.weights)
    threads = torch_threads_per_worker(dask)
    torch.set_num_threads(threads)
    sizes = {"N": (args.n_train, args.n_val), f"{args.scale}N": (args.n_train * args.scale, args.n_val * args.scale)}
    common = {"bench": "extract", **machine(), "backbone": args.backbone, "resolution": args.resolution,
              "val_resolution": val_resolution, "torch_threads": threads}

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        setups = {}
        for label, (n_train, n_val) in sizes.items():
            manifest = _make_corpus(Path(tmp) / label, n_train, n_val, args.image_size)
            corpus = CorpusParams(
                root=str(Path(tmp) / label / "corpus"), n_classes=DEMO_N_CLASSES, ignore_index=DEMO_IGNORE_INDEX,
                class_names=DEMO_CLASS_NAMES, demo=True,
            )
            setups[label] = (manifest, corpus, n_train + n_val)
        build_s, backbone = timed(lambda: create_backbone(args.backbone, weights=args.weights))
        large = f"{args.scale}N"
        prep_s, batches = timed(lambda: _baseline_batches(setups[large][0], setups[large][1], params, backbone.mean, backbone.std))
        n_inputs = sum(b.shape[0] * (2 if flip else 1) for b, flip in batches)
        with torch.inference_mode():
            backbone.model.forward_features(batches[0][0][:1])  # first-call allocations, as the worker's first chunk
        emit({**common, "measure": "backbone_build_main_s", "seconds": round(build_s, 3)})
        # Decode + crop + resize + normalise, done once outside the baseline's timed loop.
        emit({**common, "measure": "decode_preprocess", "images": setups[large][2], "seconds": round(prep_s, 3)})

        results: dict[str, list[float]] = {"baseline_s": [], "N_s": [], f"{large}_s": []}
        start_s = import_s = close_s = 0.0
        if args.n_workers > 1:
            note("extract: Dask cluster start / first-task imports / close, once")
            start_s, import_s, close_s = _dask_costs(dask)
        results.update({"dask_start_s": [start_s], "worker_import_s": [import_s], "dask_close_s": [close_s]})
        emit({**common, "measure": "dask_fixed", "path": "dask" if args.n_workers > 1 else "in-process", "start_s": round(start_s, 3), "worker_import_s": round(import_s, 3),
              "close_s": round(close_s, 3)})
        for repeat in range(args.repeats):
            note(f"extract repeat {repeat + 1}/{args.repeats}: baseline")
            baseline_s = _bare_forward(backbone.model, batches)
            results["baseline_s"].append(baseline_s)
            emit({**common, "measure": "baseline_forward", "repeat": repeat, "images": setups[large][2], "network_inputs": n_inputs,
                  "seconds": round(baseline_s, 3), "images_per_s": round(setups[large][2] / baseline_s, 3)})
            for label, (manifest, corpus, n_images) in setups.items():
                note(f"extract repeat {repeat + 1}/{args.repeats}: extract() on {label} = {n_images} images")
                store = Path(tmp) / f"{label}-r{repeat}.zarr"
                seconds, _ = timed(lambda m=manifest, c=corpus, s=store: extract(m, s, c, backbone_params, params, dask))
                results[f"{label}_s"].append(seconds)
                emit({**common, "measure": "extract_end_to_end", "repeat": repeat, "corpus": label, "images": n_images,
                      "seconds": round(seconds, 3), "images_per_s": round(n_images / seconds, 3)})

    n_small, n_large = setups["N"][2], setups[large][2]
    dask_only = results["dask_start_s"][0] + results["dask_close_s"][0]
    fixed_known = dask_only + results["worker_import_s"][0] + 2 * build_s
    # Ratios are formed within each repeat (baseline and runs a minute apart) and then the
    # median is taken: on a shared machine the load drifts between repeats.
    per_repeat: dict[str, list[float]] = {"base_ips": [], "steady_ips": [], "steady": [], "e2e_small": [], "e2e_large": [],
                                          "minus_dask": [], "fixed_fit": []}
    for base_s, small_s, large_s in zip(results["baseline_s"], results["N_s"], results[f"{large}_s"], strict=True):
        base_ips = n_large / base_s
        slope_s = large_s - small_s
        steady_ips = (n_large - n_small) / slope_s if slope_s > 0 else float("nan")
        per_repeat["base_ips"].append(base_ips)
        per_repeat["steady_ips"].append(steady_ips)
        per_repeat["steady"].append(steady_ips / base_ips)
        per_repeat["e2e_small"].append(n_small / small_s / base_ips)
        per_repeat["e2e_large"].append(n_large / large_s / base_ips)
        per_repeat["minus_dask"].append(n_large / (large_s - dask_only) / base_ips)
        per_repeat["fixed_fit"].append(small_s - n_small / steady_ips if slope_s > 0 else float("nan"))
    med = {key: median(values) for key, values in per_repeat.items()}
    emit({**common, "measure": "per_repeat_ratios", **{k: [round(v, 3) for v in vals] for k, vals in per_repeat.items()}})
    summary = {
        **common, "measure": "summary", "baseline_images_per_s": round(med["base_ips"], 3),
        "steady_state_images_per_s": round(med["steady_ips"], 3), "steady_state_ratio": round(med["steady"], 3),
        f"end_to_end_ratio_{n_small}_images": round(med["e2e_small"], 3), f"end_to_end_ratio_{n_large}_images": round(med["e2e_large"], 3),
        f"ratio_minus_dask_start_close_{n_large}_images": round(med["minus_dask"], 3),
        "fixed_cost_fit_s": round(med["fixed_fit"], 2), "fixed_cost_identified_s": round(fixed_known, 2),
        "goal_steady_state_ratio": GOAL, "verdict": verdict(med["steady"], GOAL),
    }
    emit(summary)
    print_table(
        f"extract: {args.backbone} @ {args.resolution}px (val {val_resolution}px), {threads} torch threads, "
        f"median over {args.repeats} repeats of the per-repeat ratio (baseline = bare timm forward on pre-decoded batches)",
        ["measure", "value", "ratio vs baseline", "goal"],
        [
            ["baseline forward, images/s", med["base_ips"], 1.0, ""],
            ["extract steady state (slope), images/s", med["steady_ips"], med["steady"], f">= {GOAL} ({summary['verdict']})"],
            [f"extract end-to-end, {n_small} images", "", med["e2e_small"], ""],
            [f"extract end-to-end, {n_large} images", "", med["e2e_large"], ""],
            [f"extract minus Dask start/close, {n_large} images", "", med["minus_dask"], ""],
            [f"decode + preprocess alone (in the worker's path), {n_large} images, s", prep_s, "", ""],
            ["fixed cost from the fit, s", med["fixed_fit"], "", ""],
            ["  Dask cluster start + close, s", dask_only, "", ""],
            ["  worker imports (first task), s", results["worker_import_s"][0], "", ""],
            ["  backbone build (main + worker), s", 2 * build_s, "", ""],
        ],
    )


if __name__ == "__main__":
    from benchutil import stage_environment

    stage_environment()
    main()
