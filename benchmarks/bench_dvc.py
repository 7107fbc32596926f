"""Benchmark: `dvc repro` wall time: no-op, after a CRF-param change, and a full run.

Works on the test suite's tiny project (`tiny_project.py`: a throw-away git + DVC copy of
the repo in a temp folder, with its own DVC site cache and PREFECT_HOME), sized to run in
seconds: random-weight ViT-Ti/16 at 32 px, 30 training steps, a demo corpus of 6 + 3
images of 64 px (`tiny_project.describe()` prints the sizes it really uses). Every stage runs as `dvc.yaml` says: `stego <stage>`, one Prefect flow per
stage (each `stego` process starts its own ephemeral Prefect API server, as `make demo`
runs; `--prefect-server` points them all at one real server instead, as the tests do).

Measured, in order:
  full (cold)   first `dvc repro` (also creates the Prefect database)
  full (warm)   `dvc repro --force`, all stages again (only with --full-repeats >= 1)
  no-op         `dvc repro` with nothing changed (goal: < 3 s)
  crf change    `dvc repro` after a new crf.iterations (must run crf and what follows only)

The ratios are against the warm full run when there is one, else against the cold one.

Run:  .venv/bin/python benchmarks/bench_dvc.py          (about 2.5 min on 2 idle CPUs)
      .venv/bin/python benchmarks/bench_dvc.py --repeats 5 --full-repeats 2 --prefect-server
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

GOAL_NOOP_S = 3.0
# Upstream of `crf`: a crf-param change must run none of these (only crf and what follows it).
UPSTREAM_OF_CRF = ("demo_data", "ingest", "validate", "extract", "knn", "train", "cluster")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="no-op repros; median reported (default: 3)")
    parser.add_argument("--change-repeats", type=int, default=2, help="CRF-param changes; median reported (default: 2)")
    parser.add_argument("--full-repeats", type=int, default=0, help="forced full repros after the first (default: 0)")
    parser.add_argument("--prefect-server", action="store_true", help="run one real Prefect server for all stages")
    parser.add_argument("--keep", action="store_true", help="keep the temp project and print its path")
    return parser.parse_args()


def _environment(root: Path) -> dict[str, str]:
    venv_bin = Path(sys.executable).parent
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update({
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "GIT_TERMINAL_PROMPT": "0",
    })
    return env


def repro(project: Path, env: dict[str, str], *extra: str) -> tuple[float, list[str]]:
    """Run `dvc repro` and return (wall seconds, stages it ran)."""
    start = time.perf_counter()
    from tiny_project import run_checked

    result = run_checked(["dvc", "repro", *extra], project, env, timeout=900)
    seconds = time.perf_counter() - start
    return seconds, re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr)


def main() -> None:
    """Measure and print JSON lines plus a summary table."""
    args = _parse()
    from benchutil import emit, machine, median, note, print_table, verdict
    from tiny_project import describe, make_tiny_project, set_params

    from flows.prefect_server import start_local_server, stop_local_server

    common = {"bench": "dvc", "project": describe(), **machine(), "prefect": "server" if args.prefect_server else "ephemeral"}
    root = Path(tempfile.mkdtemp(prefix="bench-dvc-"))
    server = None
    try:
        env = _environment(root)
        project = make_tiny_project(root / "project", env)
        if args.prefect_server:
            note("dvc: starting one Prefect server for all stages")
            server = start_local_server(root / "prefect-server.log", home=Path(env["PREFECT_HOME"]), timeout=180, env=env)
            env["PREFECT_API_URL"] = server.api_url
        note("dvc: first full repro (cold: also creates the Prefect database)")
        cold, ran = repro(project, env)
        n_stages = len(ran)
        emit({**common, "measure": "full_cold", "seconds": round(cold, 2), "stages": ran})
        full = []
        for repeat in range(args.full_repeats):
            note(f"dvc: forced full repro {repeat + 1}/{args.full_repeats}")
            seconds, ran = repro(project, env, "--force")
            full.append(seconds)
            emit({**common, "measure": "full_warm", "repeat": repeat, "seconds": round(seconds, 2), "stages": ran})
        noop = []
        for repeat in range(args.repeats):
            note(f"dvc: no-op repro {repeat + 1}/{args.repeats}")
            seconds, ran = repro(project, env)
            noop.append(seconds)
            emit({**common, "measure": "noop", "repeat": repeat, "seconds": round(seconds, 2), "stages": ran})
            if ran:
                raise RuntimeError(f"a no-op `dvc repro` ran stages {ran}; the pipeline is not reproducible.")
        change, change_stages = [], []
        for repeat in range(args.change_repeats):
            iterations = 9 - repeat  # a value not seen before, so DVC's run-cache cannot answer
            set_params(project, {("crf", "iterations"): iterations})
            note(f"dvc: repro after crf.iterations = {iterations}")
            seconds, ran = repro(project, env)
            change.append(seconds)
            change_stages = ran
            emit({**common, "measure": "crf_change", "repeat": repeat, "seconds": round(seconds, 2), "stages": ran})
            if "crf" not in ran or set(ran) & set(UPSTREAM_OF_CRF):
                raise RuntimeError(f"a crf-param change ran stages {ran}; expected crf and its downstream stages only.")
    finally:
        if server is not None:
            stop_local_server(server)
        if args.keep:
            note(f"dvc: project kept at {root / 'project'}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    base = median(full) if full else cold
    summary = {**common, "measure": "summary", "full_cold_s": round(cold, 2), "full_warm_s": round(base, 2),
               "noop_s": round(median(noop), 2), "crf_change_s": round(median(change), 2),
               "noop_over_full": round(median(noop) / base, 3), "crf_change_over_full": round(median(change) / base, 3),
               "goal_noop_s": GOAL_NOOP_S, "verdict_noop": verdict(median(noop), GOAL_NOOP_S, higher_is_better=False)}
    emit(summary)
    print_table(
        f"dvc: tiny project ({n_stages} stages, {describe()}, Prefect {common['prefect']}), median of "
        f"{args.repeats} no-op / {args.change_repeats} change / {max(args.full_repeats, 1)} full",
        ["run", "seconds", f"ratio vs full ({'warm' if full else 'cold'})", "goal"],
        [
            ["full, cold (first run, new Prefect DB)", cold, cold / base, ""],
            *([["full, warm (`--force`)", base, 1.0, ""]] if full else []),
            [f"crf param change ({' + '.join(change_stages)})", median(change), median(change) / base, ""],
            ["no-op", median(noop), median(noop) / base, f"< {GOAL_NOOP_S:g} s ({summary['verdict_noop']})"],
        ],
    )


if __name__ == "__main__":
    from benchutil import stage_environment

    stage_environment()
    main()
