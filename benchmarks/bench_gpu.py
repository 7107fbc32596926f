"""One-command GPU benchmarks: extract, train and the streamed reader, each against a same-run baseline.

On a CUDA machine (ViT-S/8 at 224 px by default, bf16 autocast as `extract.amp` gives):
  1. extract: images/s of the `extract` stage (JPEG decode on `--decode-workers` threads,
     five-crop, backbone, float16 writes; the steady state is the slope between a corpus of N
     and of 2N images) against a bare timm forward under the same autocast on the same crops
     already on the device. Goal: >= 0.9x.
  2. train: steps/s from the store, held in memory and streamed (`runtime.readers` threads
     reading ahead), against the backbone-in-the-loop step (the backbone on the batch and
     its kNN positives under bf16 autocast, then the same `train._step`). Goal: streamed
     >= 0.95x in memory.
  3. reader: rows/s of `training_data.ShardRows` with 1, 2 and 4 threads on that store.

It writes its tables to `--out` as one section, between the markers `<!-- bench_gpu:begin -->`
and `<!-- bench_gpu:end -->`, replacing that section on a rerun (appended when the file has
none) and naming the device. Default `--out`: benchmarks/results.md on CUDA; without CUDA the
same code runs on the CPU at tiny sizes (ViT-Ti/16 at 32 px) and writes only where `--out`
says, so a CPU run never replaces GPU numbers. `--quick` is a smoke run of a few seconds of
work (the test suite runs it); its numbers mean nothing.

Run:  .venv/bin/python benchmarks/bench_gpu.py                       (CUDA: about 3 min)
      .venv/bin/python benchmarks/bench_gpu.py --quick --out /tmp/gpu.md
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench_gpu:begin -->", "<!-- bench_gpu:end -->"
GOAL_EXTRACT, GOAL_STREAMED = 0.9, 0.95
N_CLASSES = 5

# Sizes per mode: backbone, train / val side, images of the small extract corpus N,
# image size, extract.batch_size, stored crops, steps, baseline steps, repeats, batches read.
SIZES = {
    "cuda": dict(backbone="dino_vits8", resolution=224, val_resolution=320, n_images=512, image_size=(640, 480),
                 chunk=8, crops=1200, steps=50, baseline_steps=10, repeats=3, batches=48),
    "cpu": dict(backbone="vit_tiny_patch16_224", resolution=64, val_resolution=64, n_images=8, image_size=(96, 72),
                chunk=4, crops=160, steps=10, baseline_steps=2, repeats=2, batches=12),
    "quick": dict(backbone="vit_tiny_patch16_224", resolution=32, val_resolution=32, n_images=4, image_size=(64, 48),
                  chunk=2, crops=40, steps=3, baseline_steps=1, repeats=1, batches=4),
}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run at tiny sizes (numbers mean nothing)")
    parser.add_argument("--out", default=None, help="Markdown file whose bench_gpu section is replaced "
                        "(default: benchmarks/results.md on CUDA, none on the CPU)")
    parser.add_argument("--backbone", default=None, help="backbone (default: dino_vits8 on CUDA, vit_tiny_patch16_224 on the CPU)")
    parser.add_argument("--weights", default="random", help="backbone weights: random | auto | path (default: random)")
    parser.add_argument("--resolution", type=int, default=None, help="train crop side (default: 224 on CUDA)")
    parser.add_argument("--val-resolution", type=int, default=None, help="val side (default: 320 on CUDA)")
    parser.add_argument("--n-images", type=int, default=None, help="train images of the small extract corpus N (default: 512 on CUDA)")
    parser.add_argument("--decode-workers", type=int, default=None, help="runtime.decode_workers (default: CPU cores - 1)")
    parser.add_argument("--readers", type=int, default=None, help="runtime.readers (default: 4 on CUDA, 2 on the CPU)")
    parser.add_argument("--compression", default="zstd", help="extract.compression of both stores (default: zstd)")
    parser.add_argument("--batch-size", type=int, default=16, help="train.batch_size (default: 16)")
    parser.add_argument("--skip-extract", action="store_true", help="skip the extract measurement")
    return parser.parse_args()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _device_name(torch) -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return "CPU fallback, no CUDA device (tiny sizes: these are not GPU numbers)"


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _corpus(root: Path, n_train: int, n_val: int, size: tuple[int, int]) -> Path:
    from bench_decode import synthetic_corpus

    from stego_tasks.ingest import ingest

    synthetic_corpus(root / "corpus", n_train, n_val, size)
    ingest(root / "corpus", root / "manifest.parquet", root / "quarantine.csv")
    return root / "manifest.parquet"


def measure_extract(cfg: dict, args, device, note) -> dict:
    """Stage images/s (steady state between N and 2N train images) and the bare forward's, same crops."""
    import torch

    from stego_tasks.config import (
        BackboneParams,
        CorpusParams,
        DaskParams,
        ExtractParams,
        RuntimeParams,
    )
    from stego_tasks.data.embed import _cached_backbone, pos_embed_mode
    from stego_tasks.extract import extract
    from stego_tasks.method.backbone import normalize
    from stego_tasks.runtime.devices import backbone_precision

    backbone_params = BackboneParams(name=cfg["backbone"], weights=args.weights)
    params = ExtractParams(resolution=cfg["resolution"], val_resolution=cfg["val_resolution"], batch_size=cfg["chunk"],
                           device=device.type, amp=True, compression=args.compression)
    n = cfg["n_images"]
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-extract-") as tmp:
        for label, count in (("warm", cfg["chunk"]), ("small", n), ("large", 2 * n)):
            root = Path(tmp) / label
            manifest = _corpus(root, count, cfg["chunk"], cfg["image_size"])
            corpus = CorpusParams(root=str(root / "corpus"), n_classes=N_CLASSES, ignore_index=255, demo=True)
            note(f"gpu: extract {count} + {cfg['chunk']} images ({label})")
            _sync(torch, device)
            began = time.perf_counter()
            extract(manifest, root / "features.zarr", corpus, backbone_params, params, DaskParams(n_workers=1),
                    runtime=RuntimeParams(decode_workers=cfg["decode_workers"]))
            _sync(torch, device)
            seconds[label] = time.perf_counter() - began
    stage = n / max(seconds["large"] - seconds["small"], 1e-9)
    # The bare forward: the stage's own cached network, the same chunks of five-crops, pre-decoded on the device.
    from stego_tasks.method.backbone import create_backbone

    probe = create_backbone(cfg["backbone"], weights=args.weights)
    weights = "random" if probe.weights_source == "random" else args.weights
    model = _cached_backbone(cfg["backbone"], weights, device.type, False, pos_embed_mode(probe, params.preprocess))
    crops = 5 * cfg["chunk"]
    pixels = torch.randint(0, 256, (crops, cfg["resolution"], cfg["resolution"], 3), dtype=torch.uint8, device=device)
    use_bf16 = backbone_precision(device, True) == "bf16"

    def forward() -> None:
        batch = normalize(pixels.permute(0, 3, 1, 2), model.mean, model.std)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            model(batch)

    forward()
    chunks = max(1, n // cfg["chunk"])
    _sync(torch, device)
    began = time.perf_counter()
    for _ in range(chunks):
        forward()
    _sync(torch, device)
    bare = chunks * cfg["chunk"] / (time.perf_counter() - began)
    return {"stage_images_per_s": stage, "bare_images_per_s": bare, "ratio": stage / bare,
            "end_to_end_images_per_s": 2 * n / seconds["large"], "precision": backbone_precision(device, True)}


def measure_train(cfg: dict, args, device, note) -> tuple[dict, list]:
    """Steps/s held in memory and streamed (readers ahead) vs the backbone in the loop; and the reader's rows/s."""
    import torch
    from bench_reader import reader_rows_per_s
    from bench_train import _runner, _train_params, write_stores
    from benchutil import median

    from stego_tasks.data.training_data import load_training_data
    from stego_tasks.method.backbone import create_backbone

    backbone = create_backbone(cfg["backbone"], weights=args.weights)
    model = backbone.to(device)
    grid = cfg["resolution"] // backbone.patch_size
    params = _train_params(args.batch_size, cfg["steps"])
    rates: dict[str, list[float]] = {"in_memory": [], "streamed": [], "backbone_in_loop": []}
    reads = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-train-") as tmp:
        note(f"gpu: writing a store of {cfg['crops']} crops")
        store, knn = write_stores(Path(tmp), cfg["crops"], backbone.embed_dim, grid, cfg["resolution"], compression=args.compression)
        held = load_training_data(store, knn, 255, N_CLASSES, in_memory_bytes=1 << 40)
        streamed = load_training_data(store, knn, 255, N_CLASSES, in_memory_bytes=0)
        images = ((torch.rand(cfg["crops"], 3, cfg["resolution"], cfg["resolution"]) - 0.45) / 0.225).to(device)
        use_bf16 = device.type == "cuda"
        runs = {
            "in_memory": _runner(held, params, 0, readers=cfg["readers"], device=device),
            "streamed": _runner(streamed, params, 0, readers=cfg["readers"], device=device),
            "backbone_in_loop": _runner(held, params, 0, backbone=model, images=images, device=device, autocast=use_bf16),
        }
        for repeat in range(cfg["repeats"]):
            for name, (run, _) in runs.items():
                steps = cfg["baseline_steps"] if name == "backbone_in_loop" else cfg["steps"]
                note(f"gpu: train repeat {repeat + 1}/{cfg['repeats']}: {steps} {name} steps")
                rates[name].append(steps / run(steps))
        for _, close in runs.values():
            close()
        feats = streamed.feats
        from bench_reader import _batches

        for readers in (1, 2, 4):
            batches = _batches(cfg["crops"], 2 * args.batch_size, cfg["batches"], seed=readers)
            reads.append((readers, reader_rows_per_s(feats, batches, readers)))
    ratio = {name: median([a / b for a, b in zip(values, rates["backbone_in_loop"], strict=True)]) for name, values in rates.items()}
    streamed_vs = median([a / b for a, b in zip(rates["streamed"], rates["in_memory"], strict=True)])
    result = {name: median(values) for name, values in rates.items()}
    result.update({f"{name}_ratio": value for name, value in ratio.items()}, streamed_vs_in_memory=streamed_vs)
    return result, reads


def section(device_name: str, cfg: dict, args, extract: dict | None, train: dict, reads: list, machine: dict) -> str:
    """The Markdown section bench_gpu writes (between its markers)."""
    from benchutil import verdict

    def f(value: float) -> str:
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"

    lines = [
        BEGIN,
        "## GPU benchmarks (`bench_gpu.py`)",
        "",
        f"Device: **{device_name}**; {machine['cpus']} CPUs ({_cores()} usable), {machine['date']}, 1-minute load "
        f"{machine['load_1min']}; torch {machine['torch']}. Backbone `{cfg['backbone']}` ({args.weights} weights), "
        f"train crops {cfg['resolution']} px, val {cfg['val_resolution']} px, features `{args.compression}`, "
        f"decode workers {cfg['decode_workers']}, readers {cfg['readers']}, train batch {args.batch_size}"
        f"{', --quick (smoke run: the numbers mean nothing)' if args.quick else ''}.",
        "",
    ]
    if extract is not None:
        lines += [
            "| extract | images/s | ratio vs bare forward | goal |",
            "|---|---|---|---|",
            f"| bare timm forward, same crops on the device ({extract['precision']}) | {f(extract['bare_images_per_s'])} | 1 | |",
            f"| `extract` stage, steady state (N to 2N images) | {f(extract['stage_images_per_s'])} | {f(extract['ratio'])} | "
            f">= {GOAL_EXTRACT:g} ({verdict(extract['ratio'], GOAL_EXTRACT)}) |",
            f"| `extract` stage, end to end on 2N images | {f(extract['end_to_end_images_per_s'])} | "
            f"{f(extract['end_to_end_images_per_s'] / extract['bare_images_per_s'])} | |",
            "",
        ]
    vs = train["streamed_vs_in_memory"]
    lines += [
        "| train | steps/s | ratio vs backbone in the loop | vs in memory | goal |",
        "|---|---|---|---|---|",
        f"| backbone in the loop (reference) | {f(train['backbone_in_loop'])} | 1 | | |",
        f"| stored features, in memory | {f(train['in_memory'])} | {f(train['in_memory_ratio'])} | 1 | |",
        f"| stored features, streamed ({cfg['readers']} readers) | {f(train['streamed'])} | {f(train['streamed_ratio'])} | "
        f"{f(vs)} | >= {GOAL_STREAMED:g} ({verdict(vs, GOAL_STREAMED)}) |",
        "",
        "| reader threads | rows/s | vs 1 reader |",
        "|---|---|---|",
        *[f"| {n} | {f(rate)} | {f(rate / reads[0][1])} |" for n, rate in reads],
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace the bench_gpu section of `path` (or append one), keeping everything else."""
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    new = pattern.sub(lambda _: text, old, count=1) if pattern.search(old) else old.rstrip("\n") + ("\n\n" if old else "") + text
    path.write_text(new)


def main() -> int:
    args = _parse()
    warnings.filterwarnings("ignore")
    logging.getLogger("stego").setLevel(logging.ERROR)
    import torch
    from benchutil import emit, machine, note

    cuda = torch.cuda.is_available()
    cfg = dict(SIZES["quick" if args.quick else "cuda" if cuda else "cpu"])
    for key in ("backbone", "resolution", "val_resolution", "n_images"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["decode_workers"] = args.decode_workers or max(1, _cores() - 1)
    cfg["readers"] = args.readers if args.readers is not None else (4 if cuda else 2)
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(min(2, _cores()))
    facts = {**machine(), "torch": torch.__version__}
    common = {"bench": "gpu", **facts, "device": _device_name(torch), "quick": args.quick, **cfg}
    extract = None if args.skip_extract else measure_extract(cfg, args, device, note)
    if extract is not None:
        emit({**common, "measure": "extract", **extract})
    train, reads = measure_train(cfg, args, device, note)
    emit({**common, "measure": "train", **train})
    emit({**common, "measure": "reader", "rows_per_s": dict(reads)})
    text = section(_device_name(torch), cfg, args, extract, train, reads, facts)
    print(text)
    out = Path(args.out) if args.out else (HERE / "results.md" if cuda else None)
    if out is not None:
        write_section(out, text)
        note(f"gpu: section written to {out}")
    else:
        note("gpu: no CUDA device and no --out: nothing written (pass --out FILE to keep the CPU numbers)")
    return 0


if __name__ == "__main__":
    import sys

    from benchutil import stage_environment

    stage_environment()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
