"""The `stego` command: one subcommand per pipeline stage, each running that stage's Prefect flow.

`stego <stage>` -> `flows/<stage>.py` (the flow; `--no-prefect` skips it) ->
`flows/stage_functions.py` (params file and paths in) -> `stego_tasks/<stage>.py` (the
library, which knows nothing of command lines, Prefect or DVC). The tools outside the
pipeline (`predict`, `adapt`, `sweep-k`, `seeds`, `names`, `export`) are in `flows/tools.py`.

Paths default to the layout in `stego_tasks/paths.yaml`, the file `dvc.yaml` reads too, so
`stego extract` alone does what the DVC stage does. Errors a user can fix are printed as
one sentence (set STEGO_DEBUG=1 for the traceback) and exit with status 2; nothing already
written is removed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from flows.tools import TOOLS
from stego_tasks.errors import REPORT_BUG, StegoError
from stego_tasks.paths import PARAMS_FILE, PATHS
from stego_tasks.runtime.room import is_out_of_room, out_of_room

DEFAULTS: dict[str, str] = {"params": PARAMS_FILE, **PATHS}

# Each stage: (help text saying what it reads and writes, [path options it takes]).
STAGES: dict[str, tuple[str, list[str]]] = {
    "demo_data": ("Read the demo_data params block (sizes, seed); write the labelled synthetic demo corpus "
                  "(images/{train,val}, labels/{train,val}) to DIR.", []),
    "ingest": ("Scan corpus.root; write the manifest (Parquet) and the quarantine list (CSV).", ["manifest", "quarantine"]),
    "validate": ("Check the manifest and label masks with Great Expectations; write a result JSON.", ["manifest", "validation"]),
    "weights": ("Find the backbone checkpoint backbone.weights names; write its content hash (JSON), so a replaced "
                "file makes extract stale.", ["weights"]),
    "extract": ("Run the frozen backbone over the manifest's images; write features to a Zarr store.", ["manifest", "features"]),
    "knn": ("Read pooled training features; write the faiss top-k neighbour graph to a Zarr store.", ["features", "knn"]),
    "train": ("Read stored features and the kNN graph; write the head + probes, the loss log and the shift diagnostics.", ["features", "knn", "model", "loss_log", "shift_stats"]),
    "cluster": ("Read features and the model; write cluster, linear and k-means predictions (Zarr).", ["features", "model", "predictions"]),
    "crf": ("Read predictions and images; write dense-CRF refined predictions (Zarr).", ["features", "predictions", "crf_out"]),
    "evaluate": ("Read labels (when there are any), predictions and the cluster names file; write metrics JSON (with the "
                 "label-free signals), confusion matrix, overlays, the plot data DVC draws and the cluster gallery.",
                 ["features", "predictions", "crf_out", "scores", "per_class", "confusion", "overlays", "assignment",
                  "confusion_data", "per_class_plot", "gallery", "cluster_names"]),
    "report": ("Read a run's metrics, plots, quarantine list and model; write one self-contained HTML page "
               "(metrics, label-free signals, cluster gallery, IoU bars, confusion, losses, overlays, quarantine).", []),
}


# Stages DVC runs on every repro (`always_changed`): a trace would differ each time, so
# dvc.lock, the metrics and the report would be stale after every no-op repro.
UNTRACED = frozenset({"weights"})


def trace_of(stage: str) -> str | None:
    """The default trace file of a stage: `<paths.trace>/<stage>.json` (a DVC metrics file); None when untraced."""
    return None if stage in UNTRACED else f"{PATHS['trace']}/{stage}.json"


def command_of(stage: str) -> str:
    """The `stego` subcommand of a stage: its name with dashes (`demo_data` -> `demo-data`)."""
    return stage.replace("_", "-")


def stage_of(command: str) -> str:
    """The stage a `stego` subcommand runs (`demo-data` -> `demo_data`)."""
    return command.replace("-", "_")


# Errors a user can fix, printed as one sentence with exit status 2: the project's own types
# (`stego_tasks/errors.py`), and a missing or unreadable path the user gave (open() raises those
# with the path in the message). Anything else is a bug: it keeps its traceback (see `main`).
USER_ERRORS: tuple[type[Exception], ...] = (StegoError, FileNotFoundError, PermissionError)


def is_user_error(error: BaseException | None) -> bool:
    """Whether `error` is one the CLI prints as one sentence (the console filter uses the same rule)."""
    return isinstance(error, USER_ERRORS) or is_out_of_room(error)


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
        if is_user_error(error):
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


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stego", description="Unsupervised semantic segmentation with STEGO.")
    commands = parser.add_subparsers(dest="command", required=True)
    for stage, (text, options) in STAGES.items():
        sub = commands.add_parser(command_of(stage), help=text,
                                  description=f"{text} Reads params.yaml blocks as declared in dvc.yaml.")
        if stage == "demo_data":
            sub.add_argument("directory", type=Path, nargs="?", default=Path(DEFAULTS["demo_corpus"]),
                             help=f"(default: {DEFAULTS['demo_corpus']})")
            for option, meaning in (("seed", "seed of every draw"), ("n_train", "training images"),
                                    ("n_val", "validation images"), ("size", "image side in pixels")):
                sub.add_argument(f"--{option.replace('_', '-')}", dest=option, type=int, default=None,
                                 help=f"{meaning} (default: demo_data.{option} of the params file)")
        if stage == "report":
            sub.add_argument("--run", type=Path, default=Path("."), metavar="DIR",
                             help="project folder of a run, after `dvc repro` (default: .)")
            sub.add_argument("--out", type=Path, default=Path(DEFAULTS["report"]), metavar="FILE",
                             help=f"HTML file to write (default: {DEFAULTS['report']})")
            sub.add_argument("--params", default=None, help="params file (default: params.yaml of --run)")
        else:
            sub.add_argument("--params", default=DEFAULTS["params"], help="params file (default: params.yaml)")
        for option in options:
            sub.add_argument(f"--{option.replace('_', '-')}", dest=option, default=DEFAULTS[option],
                             help=f"(default: {DEFAULTS[option]})")
        sub.add_argument("--trace", default=trace_of(stage), metavar="FILE",
                         help=f"JSON file for what the run cost: wall, CPU, memory, I/O, versions (default: {trace_of(stage)})")
        sub.add_argument("--no-prefect", action="store_true", help="call the library directly, without a Prefect flow run")
        if stage == "train":
            sub.add_argument("--resume", action="store_true", help="continue from the model folder's checkpoint.pt")
    for name, (text, add_arguments, _) in TOOLS.items():
        sub = commands.add_parser(name, help=text, description=text)
        # Their library modules import torch and friends; set up only the command being run.
        if name == command:
            add_arguments(sub)
    run = commands.add_parser("run", help="Run the whole pipeline through DVC (the Prefect flow `stego`).",
                              description="Reproduce every stale DVC stage inside the Prefect flow `stego`, and record the run. "
                              "Without PREFECT_API_URL, one local Prefect server serves the flow and every stage for the run.")
    run.add_argument("--no-record", action="store_true", help="do not commit dvc.lock and metrics after a run that changed them")
    return parser


def _stage_kwargs(stage: str, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `flows.stage_functions.<stage>` (and its flow) from parsed options."""
    kwargs: dict[str, Any] = {"params_path": args.params, **{option: getattr(args, option) for option in STAGES[stage][1]}}
    if stage == "demo_data":
        kwargs.update(demo_corpus=str(args.directory), seed=args.seed, n_train=args.n_train, n_val=args.n_val, size=args.size)
    if stage == "report":
        kwargs.update(run=str(args.run), out=str(args.out))
        if args.params is None:
            kwargs["params_path"] = str(Path(args.run) / PARAMS_FILE)
    if stage == "train":
        kwargs["resume"] = args.resume
    return kwargs


def _run_stage(stage: str, args: argparse.Namespace) -> Any:
    kwargs = _stage_kwargs(stage, args)
    if args.no_prefect:
        from flows import stage_functions
        from stego_tasks.runtime.trace import StageTrace

        with StageTrace(stage, args.trace) as tracer:
            result = getattr(stage_functions, stage)(**kwargs)
            tracer.count(result)
    else:
        from stego_tasks.config import load_params

        load_params(kwargs["params_path"])  # a bad params file is refused before a flow run starts
        module = importlib.import_module(f"flows.{stage}")
        if not os.environ.get("STEGO_DEBUG"):
            _quiet_user_errors_on_console()
        result = getattr(module, f"{stage}_flow")(**kwargs, trace=args.trace)
    if stage == "demo_data":
        print(f"demo corpus written to {args.directory}: {result}")
    if stage == "report":
        random = " (RANDOM backbone weights: the scores mean nothing)" if result["random_weights"] else ""
        print(f"report written to {result['out']}{random}")
    return result


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
    if args.command in TOOLS or getattr(args, "no_prefect", False):
        # Inside a flow run Prefect's handlers print the "stego" logger (PREFECT_LOGGING_EXTRA_LOGGERS).
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    try:
        if args.command in TOOLS:
            return TOOLS[args.command][2](args)
        elif args.command == "run":
            from flows.prefect_server import shared_prefect_server

            # One server for the flow and every stage DVC starts, instead of one per stage.
            with shared_prefect_server():
                from flows.stego import stego_flow

                stego_flow(record=not args.no_record)
            from stego_tasks.tools.run_summary import summary_from_files

            print(summary_from_files(DEFAULTS["scores"], DEFAULTS["report"]))
        else:
            _run_stage(stage_of(args.command), args)
    except KeyboardInterrupt:
        print(f"stego {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if os.environ.get("STEGO_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"stego {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as error:
        if os.environ.get("STEGO_DEBUG"):
            raise
        if is_out_of_room(error):
            # A full disk or a size limit hit by a write no stage wraps (a log, Prefect's database).
            where = getattr(error, "filename", None) or "an output"
            print(f"stego {args.command}: error: {out_of_room(error, str(where), 0, 'what was completed before it is kept', 'rerun the same command to resume')}",
                  file=sys.stderr)
            return 2
        # Not an error the user can act on: show where it happened, then how to report it.
        traceback.print_exc()
        print(f"stego {args.command}: {REPORT_BUG}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
