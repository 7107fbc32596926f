"""Quality, not speed: the cluster probe's init (random vs codes) and fixed vs `auto` shifts.

For one features store and kNN graph, trains the head twice (the params' fixed shifts, and
`shifts: auto` at the median), and scores the cluster probe on the labelled val split
(Hungarian mIoU, no flip, no CRF, as the reference's validation) twice per head: the probe
trained from randn centroids beside the head (`probe_init: random`, the reference), and the
probe refitted on the final codes (`probe_init: codes`). Same seed, same batches.

    python benchmarks/measure_protocol.py --features artifacts/features.zarr --knn artifacts/knn.zarr \
        --params params.yaml [--steps 1000] [--seeds 0 1 2]

Prints one markdown table row per (shifts, seed) and the mean; the numbers quoted in the
README came from this script (benchmarks/results.md says on what).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from stego_tasks.config import load_params
from stego_tasks.data.feature_store import read_split
from stego_tasks.data.training_data import IN_MEMORY_BYTES, load_training_data
from stego_tasks.method.selection import ValScorer, refit_cluster_probe
from stego_tasks.method.shift_stats import auto_shifts, correlation_samples
from stego_tasks.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--knn", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the params' train.steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    torch.set_num_threads(2)
    params = load_params(args.params)
    corpus, train = params.corpus, params.train
    if args.steps:
        train = dataclasses.replace(train, steps=args.steps)
    data = load_training_data(args.features, args.knn, corpus.ignore_index, corpus.n_classes)
    scorer = ValScorer(read_split(args.features, "val"), corpus.n_classes, torch.device("cpu"), in_memory_bytes=IN_MEMORY_BYTES)
    rows = []
    print("| shifts | seed | b intra / kNN / random | probe random: mIoU / acc | probe codes: mIoU / acc | live clusters random / codes |")
    print("|---|---|---|---|---|---|")
    for setting in ("fixed", "auto"):
        for seed in args.seeds:
            shifts = tuple(train.shifts) if setting == "fixed" else auto_shifts(correlation_samples(
                data, batch_size=train.batch_size, feature_samples=train.feature_samples,
                neg_samples=train.neg_samples, pointwise=train.pointwise, seed=seed), train.shift_quantile)
            started = time.monotonic()
            model, _ = fit(data, corpus.n_classes, dataclasses.replace(train, shifts=shifts), seed, corpus.ignore_index)
            random_scores = scorer.score(model.head, model.cluster_probe)
            refit = refit_cluster_probe(model.head, data.feature_rows, data.size, model.cluster_probe.n_clusters, train, seed)
            codes_scores = scorer.score(model.head, refit)
            live = [_live(probe, model.head, scorer) for probe in (model.cluster_probe, refit)]
            rows.append((setting, random_scores["miou"], codes_scores["miou"]))
            print(f"| {setting} | {seed} | {' / '.join(f'{b:.3f}' for b in shifts)} | "
                  f"{random_scores['miou']:.1f} / {random_scores['accuracy']:.1f} | "
                  f"{codes_scores['miou']:.1f} / {codes_scores['accuracy']:.1f} | {live[0]} / {live[1]} |"
                  f" <!-- {time.monotonic() - started:.0f} s -->", flush=True)
    for setting in ("fixed", "auto"):
        picked = [(r, c) for s, r, c in rows if s == setting]
        print(f"| {setting} | mean | | {np.mean([r for r, _ in picked]):.1f} | {np.mean([c for _, c in picked]):.1f} | |")


@torch.no_grad()
def _live(probe, head, scorer: ValScorer) -> int:
    """Clusters that win at least one val pixel."""
    head.eval()
    used = set()
    for start in range(0, scorer.feats.shape[0], scorer.batch):
        used |= set(probe.predict(head(scorer.feature_batch(start))).unique().tolist())
    return len(used)


if __name__ == "__main__":
    main()
