"""Benchmark: `dvc repro` wall time: no-op, after a CRF-param change, and a full run.

Works on a throw-away copy of the project (the files `git ls-files` lists in the repo, plus
new not-ignored sources, outputs excluded, in a temp folder, with its own git repo, DVC site cache and PREFECT_HOME), sized to run in
seconds: random-weight ViT-Ti/16 at 32 px, 30 training steps, a demo corpus of 8 + 4
images of 64 px. Every stage runs as `dvc.yaml` says: `stego <stage>`, one Prefect flow per
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_NOOP_S = 3.0
TINY_PARAMS = {
    ("demo_data", "n_train"): 8,
    ("demo_data", "n_val"): 4,
    ("demo_data", "size"): 64,
    ("backbone", "name"): "vit_tiny_patch16_224",
    ("backbone", "weights"): "random",
    ("extract", "resolution"): 32,
    ("extract", "val_resolution"): 32,
    ("train", "steps"): 30,
}
# Outputs of a run and the environment: never copied into the throw-away project.
NOT_COPIED = ("artifacts/", "data/", "metrics/", "plots/", "dvc.lock", ".venv/", "benchmarks/", "tests/")
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


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(args)}` exited with {result.returncode} in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def set_params(project: Path, updates: dict[tuple[str, ...], object]) -> None:
    """Set keys of `project/params.yaml` in place (comments kept when ruamel.yaml is there).

    Args:
        project: folder holding params.yaml.
        updates: {(block, key): value}.
    """
    path = project / "params.yaml"
    try:
        from ruamel.yaml import YAML

        yaml = YAML()
        params = yaml.load(path.read_text())
    except ImportError:
        import yaml

        params = yaml.safe_load(path.read_text())
    for keys, value in updates.items():
        block = params
        for key in keys[:-1]:
            block = block[key]
        if keys[-1] not in block:
            raise KeyError(f"params.yaml has no key {'.'.join(keys)}; update TINY_PARAMS in {__file__}.")
        block[keys[-1]] = value
    with path.open("w") as handle:
        if "YAML" in locals():
            yaml.dump(params, handle)
        else:
            yaml.safe_dump(params, handle, sort_keys=False)


def make_project(root: Path, env: dict[str, str]) -> Path:
    """Copy the repo's tracked files into `root/project` and make it a tiny git + DVC project.

    Args:
        root: temp folder (the project, site cache and Prefect home go inside).
        env: environment for git and dvc.

    Returns:
        The project folder.
    """
    from benchutil import REPO

    project = root / "project"
    # Tracked files plus new, not-ignored ones (a stage module not committed yet), never outputs.
    listed = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO, env).stdout.splitlines()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(NOT_COPIED):
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    _run(["git", "init", "--quiet"], project, env)
    if not (project / ".dvc" / "config").exists():
        _run(["dvc", "init", "--quiet"], project, env)
    _run(["dvc", "config", "--local", "core.site_cache_dir", str(root / "dvc-site-cache")], project, env)
    set_params(project, TINY_PARAMS)
    return project


def repro(project: Path, env: dict[str, str], *extra: str) -> tuple[float, list[str]]:
    """Run `dvc repro` and return (wall seconds, stages it ran)."""
    start = time.perf_counter()
    result = _run(["dvc", "repro", *extra], project, env)
    seconds = time.perf_counter() - start
    return seconds, re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr)


def main() -> None:
    """Measure and print JSON lines plus a summary table."""
    args = _parse()
    from benchutil import emit, machine, median, note, print_table, verdict

    from flows.prefect_server import start_local_server, stop_local_server

    common = {"bench": "dvc", **machine(), "prefect": "server" if args.prefect_server else "ephemeral"}
    root = Path(tempfile.mkdtemp(prefix="bench-dvc-"))
    server = None
    try:
        env = _environment(root)
        project = make_project(root, env)
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
        f"dvc: tiny project ({n_stages} stages, ViT-Ti/16 random @ 32 px, Prefect {common['prefect']}), median of "
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
