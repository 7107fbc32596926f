"""Shared fixtures: an isolated environment for Prefect and DVC, a tiny git + DVC project, and
one real local Prefect server for every subprocess the pipeline tests start.

Prefect reads its settings once, when it is first imported, so the isolating variables are
set when pytest loads this file, before any test module imports `prefect`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.prefect_server import (
    LocalPrefectServer,
    free_port,
    start_local_server,
    stop_process_group,
)

REPO = Path(__file__).resolve().parents[1]
# Arrays recorded once from the reference code (tests/golden/README.md says how).
GOLDEN_DIR = REPO / "tests" / "golden"
# The tiny project is shared with the benchmarks (`benchmarks/tiny_project.py`), which run
# without pytest; put its folder on the path however pytest was started.
sys.path.insert(0, str(REPO / "benchmarks"))
from tiny_project import make_tiny_project  # noqa: E402  (the `tiny_project` fixture)

# The interpreter running pytest sits beside the `stego`, `dvc` and `prefect` commands.
VENV_BIN = Path(sys.executable).parent

# Never talk to a user's Prefect server or profile, send telemetry, or prompt; for the whole
# session, since any test module may import prefect.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="stego-tests-prefect-home-"))
ISOLATION = {
    "PREFECT_HOME": str(_PREFECT_HOME),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "DVC_NO_ANALYTICS": "1",
    "GIT_TERMINAL_PROMPT": "0",
    # The checkpoint hash cache (runtime/content_hash) stays out of the user's ~/.cache.
    "STEGO_CACHE_DIR": str(_PREFECT_HOME / "stego-cache"),
}
# For the pipeline's own processes (stages, flows, workers). No hub downloads. Tiny tensors
# gain nothing from threads, and spinning OpenMP threads on a busy 2-core machine made a
# 30-step training 25 times slower (measured).
SUBPROCESS_ENV = {
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
os.environ.update(ISOLATION)
for _name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
    os.environ.pop(_name, None)
os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"

def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's Prefect home."""
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command and capture its output; fail the test with that output when it fails.

    Args:
        args: the command and its arguments.
        cwd: folder to run in.
        env: full environment (default: this process's).
        timeout: seconds before the command is killed.
        check: fail the test on a non-zero exit status.

    Returns:
        The completed process, stdout and stderr as text.
    """
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited with {result.returncode} in {cwd}:\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
        )
    return result


PrefectServer = LocalPrefectServer


def start_prefect_server(home: Path, timeout: float = 120) -> PrefectServer:
    """Start a local Prefect server with its own PREFECT_HOME and wait for /api/health.

    The services that start or change runs are off (`QUIET_SERVICES`): runs happen only when
    a test asks for one, so a scheduled deployment cannot start a run in the middle of a
    test. The task-run recorder stays on, so task runs (e.g. extract's chunks on a Dask
    cluster) can be read back from the API.

    Args:
        home: PREFECT_HOME of the server (its SQLite database and `server.log` live there).
        timeout: seconds to wait for the API to answer.

    Returns:
        The running server; stop it with `stop_process_group(server.process)`.
    """
    return start_local_server(home / "server.log", home=home, timeout=timeout)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real Prefect server for the session.

    Every `stego <stage>` that DVC starts would otherwise start its own ephemeral server
    (about 4 s each); pointed at this one with PREFECT_API_URL they only connect.
    """
    server = start_prefect_server(tmp_path_factory.mktemp("prefect-server"))
    try:
        yield server
    finally:
        stop_process_group(server.process)


@pytest.fixture(scope="session")
def project_env(prefect_server: PrefectServer) -> dict[str, str]:
    """Environment for the `dvc`, `git`, `stego` and `prefect` subprocesses of the tests."""
    return {**os.environ, **ISOLATION, **SUBPROCESS_ENV, "PREFECT_API_URL": prefect_server.api_url}


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory, project_env: dict[str, str]) -> Path:
    """A committed tiny git + DVC project (see `make_tiny_project`); nothing reproduced yet.

    Session-wide: tests must not change it; they change a `project_copy` instead.
    """
    return make_tiny_project(tmp_path_factory.mktemp("tiny-project"), project_env)


def stage_graph(project: Path) -> dict[str, set[str]]:
    """Each stage of the project's pipeline and the stages it depends on, directly or not.

    Read from DVC's own graph, so the tests follow stages added to dvc.yaml.

    Args:
        project: a DVC project folder.

    Returns:
        {stage name: names of all its upstream stages}.
    """
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        return {stage.name: {up.name for up in nx.descendants(graph, stage)} for stage in graph}


def always_changed(project: Path) -> set[str]:
    """The stages dvc.yaml marks `always_changed` (checks of outside state that run on every repro)."""
    import yaml

    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    return {name for name, stage in stages.items() if stage.get("always_changed")}


def downstream(graph: dict[str, set[str]], stage: str) -> set[str]:
    """`stage` and every stage that depends on it, directly or not."""
    return {stage} | {name for name, upstream in graph.items() if stage in upstream}


def dvc_repro(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`dvc repro` in `project`; fails the test when it fails."""
    return run([str(VENV_BIN / "dvc"), "repro", *args], project, env, timeout=400)


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory: pytest.TempPathFactory, tiny_project: Path, project_env: dict[str, str]) -> Path:
    """A copy of `tiny_project` after one full `dvc repro`, its results committed.

    That repro's stdout is in `repro-output.txt` beside the project folder.
    """
    project = tmp_path_factory.mktemp("reproduced") / "project"
    shutil.copytree(tiny_project, project, symlinks=True)
    result = dvc_repro(project, project_env)
    (project.parent / "repro-output.txt").write_text(result.stdout)
    run(["git", "add", "--all"], project, project_env)
    run(["git", "commit", "--quiet", "-m", "first run"], project, project_env)
    return project


@pytest.fixture
def project_copy(tmp_path: Path, reproduced_project: Path, project_env: dict[str, str]) -> Path:
    """A private copy of `reproduced_project` that a test may change."""
    project = tmp_path / "project"
    shutil.copytree(reproduced_project, project, symlinks=True)
    site_cache = tmp_path / "dvc-site-cache"
    run([str(VENV_BIN / "dvc"), "config", "--local", "core.site_cache_dir", str(site_cache)], project, project_env)
    return project


def _wait_for_workers(address: str, n_workers: int, processes: list[subprocess.Popen], timeout: float) -> None:
    from dask.distributed import Client

    deadline = time.monotonic() + timeout
    while True:
        dead = [p.args for p in processes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a Dask process exited while starting: {dead}")
        try:
            with Client(address, timeout="5s") as client:
                client.wait_for_workers(n_workers, timeout=max(1.0, deadline - time.monotonic()))
                return
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="session")
def dask_cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1, as on a cluster.

    Started with the `dask` command line, not `LocalCluster`, so the pipeline meets the same
    separate processes it meets on a multi-machine cluster. Yields the scheduler's address.
    """
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask-cluster")
    env = {**os.environ, **SUBPROCESS_ENV}
    # `--no-dashboard` still leaves an HTTP server on 0.0.0.0; this keeps every socket on loopback.
    http = ["--dashboard-address", "127.0.0.1:0"]
    commands = [["scheduler", "--host", "127.0.0.1", "--port", str(port), *http]] + [
        ["worker", address, "--name", f"worker-{i}", "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
         *http, "--local-directory", str(logs / f"worker-{i}")]
        for i in range(2)
    ]
    processes: list[subprocess.Popen] = []
    try:
        for index, command in enumerate(commands):
            with (logs / f"{command[0]}-{index}.log").open("w") as log:
                processes.append(subprocess.Popen(
                    [str(VENV_BIN / "dask"), *command], env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                ))
        _wait_for_workers(address, 2, processes, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            stop_process_group(process)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for a test module, restored after it.

    For modules of tiny tensors: a second thread only adds synchronisation on a busy 2-core box.
    Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
