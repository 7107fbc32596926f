"""The `stego` command: one subcommand per pipeline stage, each running that stage's Prefect flow.

Paths default to the layout in `dvc.yaml`, so `stego extract` alone does what the DVC
stage does. Errors a user can fix are printed as one sentence (set STEGO_DEBUG=1 for the
traceback) and exit with status 2; nothing already written is removed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

ARTIFACTS = Path("artifacts")
DEFAULTS: dict[str, str] = {
    "params": "params.yaml",
    "manifest": str(ARTIFACTS / "manifest.parquet"),
    "quarantine": str(ARTIFACTS / "quarantine.csv"),
    "validation": str(ARTIFACTS / "validation.json"),
    "features": str(ARTIFACTS / "features.zarr"),
    "knn": str(ARTIFACTS / "knn.zarr"),
    "model": str(ARTIFACTS / "model"),
    "loss_log": "plots/train_loss.csv",
    "shift_stats": "plots/shift_stats.csv",
    "predictions": str(ARTIFACTS / "predictions.zarr"),
    "crf_out": str(ARTIFACTS / "crf.zarr"),
    "scores": "metrics/scores.json",
    "per_class": "metrics/per_class_iou.json",
    "confusion": "plots/confusion.png",
    "overlays": "plots/overlays",
    "assignment": str(ARTIFACTS / "assignment.json"),
}

# Each stage: (help text saying what it reads and writes, [path options it takes]).
STAGES: dict[str, tuple[str, list[str]]] = {
    "ingest": ("Scan corpus.root; write the manifest (Parquet) and the quarantine list (CSV).", ["manifest", "quarantine"]),
    "validate": ("Check the manifest and label masks with Great Expectations; write a result JSON.", ["manifest", "validation"]),
    "extract": ("Run the frozen backbone over the manifest's images; write features to a Zarr store.", ["manifest", "features"]),
    "knn": ("Read pooled training features; write the faiss top-k neighbour graph to a Zarr store.", ["features", "knn"]),
    "train": ("Read stored features and the kNN graph; write the head + probes, the loss log and the shift diagnostics.", ["features", "knn", "model", "loss_log", "shift_stats"]),
    "cluster": ("Read features and the model; write cluster, linear and k-means predictions (Zarr).", ["features", "model", "predictions"]),
    "crf": ("Read predictions and images; write dense-CRF refined predictions (Zarr).", ["features", "predictions", "crf_out"]),
    "evaluate": ("Read labels and predictions; write metrics JSON, confusion matrix and overlays.", ["features", "predictions", "crf_out", "scores", "per_class", "confusion", "overlays", "assignment"]),
}


# Errors a user can fix (a bad path, params value, file): one sentence, exit status 2.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, RuntimeError, ConnectionError, PermissionError)


class _UserErrorConsoleFilter(logging.Filter):
    """Keeps a user error off Prefect's console, where the CLI prints it as one sentence.

    Drops the flow and task engines' records that carry a user error (with its traceback)
    and the "Finished in state Failed(...)" lines that repeat it. Only console handlers get
    this filter: the flow run's logs in the Prefect API (and UI) keep the traceback.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, USER_ERRORS):
            self.seen.append(str(error))
            return False
        if not self.seen:
            return True
        text = record.getMessage()
        return not (text.startswith("Finished in state Failed") or any(seen and seen in text for seen in self.seen))


def _quiet_user_errors_on_console() -> None:
    """Add `_UserErrorConsoleFilter` to the console handlers Prefect configured (after `import prefect`)."""
    console_filter = _UserErrorConsoleFilter()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not any(
            isinstance(f, _UserErrorConsoleFilter) for f in handler.filters
        ):
            handler.addFilter(console_filter)


# Commands outside the pipeline: (help, module providing add_arguments / main_from_args).
TOOLS: dict[str, tuple[str, str]] = {
    "predict": (
        "Segment new images with a trained run: reads IMAGES_OR_DIR and the run's artifacts/model, params.yaml and "
        "artifacts/assignment.json; writes <stem>_clusters.png (palette), <stem>_overlay.png, <stem>_classes.png "
        "and legend.json to --out.",
        "stego_tasks.predict",
    ),
    "adapt": (
        "Turn a CocoStuff-27 / Cityscapes-27 / Potsdam(-3) download into a corpus folder (images, labels, corpus.yaml).",
        "stego_tasks.adapters",
    ),
    "sweep-k": (
        "Refit the cluster probe for several K on a trained run's stored codes (reads artifacts/model and "
        "artifacts/features.zarr); writes PREFIX.json and PREFIX.png (unsupervised criterion and mIoU vs K).",
        "stego_tasks.sweep",
    ),
    "seeds": (
        "Run the pipeline for N seeds as DVC experiments (dvc exp run -S seed=...) and write mean ± sd of "
        "every method's accuracy and mIoU to metrics/seeds.json (also shown in the report).",
        "flows.seeds",
    ),
    "report": (
        "Write one self-contained HTML page for a run (metrics, IoU bars, confusion, losses, overlays, quarantine).",
        "stego_tasks.report",
    ),
}


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stego", description="Unsupervised semantic segmentation with STEGO.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo-data", help="Write the deterministic synthetic demo corpus to DIR.",
                               description="Write the labelled synthetic demo corpus (images/{train,val}, labels/{train,val}) to DIR.")
    demo.add_argument("directory", type=Path)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--n-train", type=int, default=48, help="training images (default: 48)")
    demo.add_argument("--n-val", type=int, default=16, help="validation images (default: 16)")
    demo.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    for stage, (text, options) in STAGES.items():
        sub = commands.add_parser(stage, help=text, description=f"{text} Reads params.yaml blocks as declared in dvc.yaml.")
        sub.add_argument("--params", default=DEFAULTS["params"], help="params file (default: params.yaml)")
        for option in options:
            sub.add_argument(f"--{option.replace('_', '-')}", dest=option, default=DEFAULTS[option],
                             help=f"(default: {DEFAULTS[option]})")
        sub.add_argument("--no-prefect", action="store_true", help="call the library directly, without a Prefect flow run")
        if stage == "train":
            sub.add_argument("--resume", action="store_true", help="continue from the model folder's checkpoint.pt")
    for name, (text, module) in TOOLS.items():
        sub = commands.add_parser(name, help=text, description=text)
        # Their modules import torch and friends; load them only for the command being run.
        if name == command:
            importlib.import_module(module).add_arguments(sub)
    run = commands.add_parser("run", help="Run the whole pipeline through DVC (the Prefect flow `stego`).",
                              description="Reproduce every stale DVC stage inside the Prefect flow `stego`, and record the run. "
                              "Without PREFECT_API_URL, one local Prefect server serves the flow and every stage for the run.")
    run.add_argument("--no-record", action="store_true", help="do not commit dvc.lock and metrics after a run that changed them")
    return parser


def _run_stage(stage: str, args: argparse.Namespace) -> Any:
    paths = {option: getattr(args, option) for option in STAGES[stage][1]}
    kwargs: dict[str, Any] = {"params_path": args.params, **paths}
    if stage == "train":
        kwargs["resume"] = args.resume
    if args.no_prefect:
        from flows import stage_functions

        return getattr(stage_functions, stage)(**kwargs)
    from stego_tasks.config import load_params

    load_params(args.params)  # a bad params file is refused before a flow run starts
    module = importlib.import_module(f"flows.{stage}")
    if not os.environ.get("STEGO_DEBUG"):
        _quiet_user_errors_on_console()
    return getattr(module, f"{stage}_flow")(**kwargs)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `stego` console command."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Before torch loads: idle OpenMP threads sleep instead of spinning, so a shared or busy
    # machine does not lose most of its CPU to spin-waits (train ran 1.5x faster under load).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "stego")
    # Library logs outside a flow run (e.g. `--no-prefect`) stay local instead of warning.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    logging.getLogger("stego").setLevel(logging.INFO)
    if args.command == "demo-data" or args.command in TOOLS or getattr(args, "no_prefect", False):
        # Inside a flow run Prefect's handlers print the "stego" logger (PREFECT_LOGGING_EXTRA_LOGGERS).
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    try:
        if args.command == "demo-data":
            from stego_tasks.demo_data import make_demo_corpus

            summary = make_demo_corpus(
                args.directory, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=args.seed
            )
            print(f"demo corpus written to {args.directory}: {summary}")
        elif args.command in TOOLS:
            return importlib.import_module(TOOLS[args.command][1]).main_from_args(args)
        elif args.command == "run":
            from stego_tasks.prefect_server import shared_prefect_server

            # One server for the flow and every stage DVC starts, instead of one per stage.
            with shared_prefect_server():
                from flows.stego import stego_flow

                stego_flow(record=not args.no_record)
            from stego_tasks.run_summary import summary_from_files

            print(summary_from_files(DEFAULTS["scores"], "reports/report.html"))
        else:
            _run_stage(args.command, args)
    except KeyboardInterrupt:
        print(f"stego {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if os.environ.get("STEGO_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"stego {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
