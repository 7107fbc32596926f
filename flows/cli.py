"""The `stego` command: one subcommand per pipeline stage, each running that stage's Prefect flow.

`stego <stage>` -> the stage's Prefect flow (`flows/registry.py`; `--no-prefect` skips it)
-> `flows/stage_functions.py` (params file and paths in) -> `stego_tasks/<stage>.py` (the
library, which knows nothing of command lines, Prefect or DVC). The subcommands and their
options are derived from the registry and the stage functions' signatures. The tools outside the
pipeline (`predict`, `adapt`, `sweep-k`, `seeds`, `names`, `export`) are in `flows/tools.py`.

Paths default to the layout in `stego_tasks/paths.yaml`, the file `dvc.yaml` reads too, so
`stego extract` alone does what the DVC stage does. Errors a user can fix are printed as
one sentence (set STEGO_DEBUG=1 for the traceback) and exit with status 2; nothing already
written is removed.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import logging
import os
import sys
import traceback
import typing
from typing import Any

from flows.registry import STAGES, Stage, flow_of, plain_type
from flows.tools import TOOLS, cli_int
from stego_tasks.errors import REPORT_BUG, StegoError
from stego_tasks.paths import PARAMS_FILE, PATHS
from stego_tasks.runtime.room import is_out_of_room, out_of_room

DEFAULTS: dict[str, str] = {"params": PARAMS_FILE, **PATHS}


def stage_of(command: str) -> str:
    """The stage a `stego` subcommand runs (`demo-data` -> `demo_data`)."""
    return command.replace("-", "_")


# The stage functions' `params_path` is the params file, `--params` on the command line.
FLAGS = {"params_path": "--params"}

# Errors a user can fix, printed as one sentence with exit status 2: the project's own types
# (`stego_tasks/errors.py`), and a path the user gave that is missing, unreadable, or a folder
# where a file belongs (or the reverse); open() raises those with the path in `filename`.
# Anything else is a bug: it keeps its traceback (see `main`).
USER_ERRORS: tuple[type[Exception], ...] = (StegoError, FileNotFoundError, PermissionError, IsADirectoryError,
                                            NotADirectoryError)
# What to do about such a path, by errno: the OS's own message names no fix.
_PATH_FIXES = {
    errno.ENOENT: "does not exist; check the path, or run the command that writes it first",
    errno.EACCES: "cannot be opened (permission denied); make it readable and writable, or pass another path",
    errno.EPERM: "cannot be opened (operation not permitted); make it readable and writable, or pass another path",
    errno.EISDIR: "is a folder where a file belongs; pass the path of a file",
    errno.ENOTDIR: "has a file where a folder belongs (a part of the path is a file); pass a path through folders",
}


def user_error_message(error: BaseException) -> str:
    """The one sentence printed for a user error: its own message, or for an OS error on a path what to do."""
    filename = getattr(error, "filename", None)
    if (not isinstance(error, StegoError) and isinstance(filename, str | bytes | os.PathLike)
            and getattr(error, "errno", None) in _PATH_FIXES):
        return f"{os.fsdecode(filename)} {_PATH_FIXES[error.errno]}."
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
    for stage in STAGES.values():
        sub = commands.add_parser(stage.command, help=stage.help,
                                  description=f"{stage.help} Reads the params keys flows/registry.py declares for it.")
        add_stage_arguments(sub, stage)
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


def add_stage_arguments(parser: argparse.ArgumentParser, stage: Stage) -> None:
    """The options of `stego <stage>`: one per parameter of its stage function, then --trace and --no-prefect.

    A path parameter defaults to its paths.yaml entry, a bool is a switch, and the help of
    each is its line under `Args:` in the function's docstring.
    """
    hints = typing.get_type_hints(stage.function)
    docs = argument_docs(stage.function)
    for name, parameter in stage.options().items():
        kind, default = plain_type(hints[name]), parameter.default
        text = docs.get(name, "")
        if "default" not in text:
            text = f"{text} (default: {default})".strip()
        if name == stage.positional:
            parser.add_argument(name, nargs="?", default=default, metavar="DIR", help=text)
        elif kind is bool:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_true", help=text)
        else:
            flag = FLAGS.get(name, f"--{name.replace('_', '-')}")
            parser.add_argument(flag, dest=name, type=cli_int if kind is int else kind, default=default, help=text,
                                metavar=flag.lstrip("-").upper().replace("-", "_"))
    parser.add_argument("--trace", default=stage.trace(), metavar="FILE",
                        help=f"JSON file for what the run cost: wall, CPU, memory, I/O, versions (default: {stage.trace()})")
    parser.add_argument("--no-prefect", action="store_true", help="call the library directly, without a Prefect flow run")


def argument_docs(function: Any) -> dict[str, str]:
    """Parameter -> help text, from the `name: text` lines under `Args:` in `function`'s docstring."""
    lines = inspect.getdoc(function).splitlines() if function.__doc__ else []
    args = lines[lines.index("Args:") + 1:] if "Args:" in lines else []
    found = {}
    for line in args:
        if not line.startswith("    "):
            break
        name, _, text = line.strip().partition(": ")
        found[name] = text
    return found


def _run_stage(stage: Stage, args: argparse.Namespace) -> Any:
    kwargs = {name: getattr(args, name) for name in stage.options()}
    if args.no_prefect:
        from stego_tasks.runtime.trace import StageTrace

        with StageTrace(stage.name, args.trace) as tracer:
            result = stage.function(**kwargs)
            tracer.count(result)
    else:
        from stego_tasks.config import load_params

        if kwargs.get("params_path"):
            load_params(kwargs["params_path"])  # a bad params file is refused before a flow run starts
        flow = flow_of(stage)
        if not os.environ.get("STEGO_DEBUG"):
            _quiet_user_errors_on_console()
        result = flow(**kwargs, trace=args.trace)
    if stage.done:
        print(stage.done(result))
    return result


def _process_defaults() -> None:
    """Environment defaults of every `stego` process, set before Prefect, DVC or torch load."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Before torch loads: idle OpenMP threads sleep instead of spinning, so a shared or busy
    # machine does not lose most of its CPU to spin-waits (train ran 1.5x faster under load).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "stego")
    # Library logs outside a flow run (e.g. `--no-prefect`) stay local instead of warning.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _run_pipeline(no_record: bool) -> None:
    """`stego run`: `dvc repro` inside the `stego` flow, then the compact scores table."""
    from flows.prefect_server import shared_prefect_server

    # One server for the flow and every stage DVC starts, instead of one per stage.
    with shared_prefect_server():
        from flows.stego import stego_flow

        stego_flow(record=not no_record)
    from stego_tasks.tools.run_summary import summary_from_files

    print(summary_from_files(DEFAULTS["scores"], DEFAULTS["report"]))


def _exit_status(command: str, error: BaseException) -> int:
    """Print what the user needs for `error` on stderr and return the exit status.

    A user error or a full disk is one sentence (status 2); anything else keeps its traceback
    and says how to report it (status 1).
    """
    if isinstance(error, KeyboardInterrupt):
        stage = STAGES.get(stage_of(command))
        # A stage that resumes only when asked (train) starts over when rerun as it was.
        how = ("rerun it with --resume to continue from its last checkpoint" if stage and "resume" in stage.options()
               else "rerun the same command to resume")
        print(f"stego {command}: interrupted; {how}.", file=sys.stderr)
        return 130
    if isinstance(error, USER_ERRORS):
        print(f"stego {command}: error: {user_error_message(error)}", file=sys.stderr)
        return 2
    if is_out_of_room(error):
        # A full disk or a size limit hit by a write no stage wraps (a log, Prefect's database).
        where = getattr(error, "filename", None) or "an output"
        print(f"stego {command}: error: {out_of_room(error, str(where), 0, 'what was completed before it is kept', 'rerun the same command to resume')}",
              file=sys.stderr)
        return 2
    # Not an error the user can act on: show where it happened, then how to report it.
    traceback.print_exception(error)
    print(f"stego {command}: {REPORT_BUG}.", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `stego` console command; returns the exit status."""
    _process_defaults()
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    logging.getLogger("stego").setLevel(logging.INFO)
    if args.command in TOOLS or getattr(args, "no_prefect", False):
        # Inside a flow run Prefect's handlers print the "stego" logger (PREFECT_LOGGING_EXTRA_LOGGERS).
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command in TOOLS:
            return TOOLS[args.command][2](args)
        if args.command == "run":
            _run_pipeline(args.no_record)
        else:
            _run_stage(STAGES[stage_of(args.command)], args)
    except (KeyboardInterrupt, Exception) as error:
        if os.environ.get("STEGO_DEBUG") and not isinstance(error, KeyboardInterrupt):
            raise
        return _exit_status(args.command, error)
    return 0

if __name__ == "__main__":
    sys.exit(main())
