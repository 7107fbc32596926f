"""One local Prefect server for a whole pipeline run, instead of one per stage.

Without `PREFECT_API_URL`, every `stego <stage>` process that DVC starts would start its own
ephemeral Prefect server: about 7 s per stage before any work, half of a demo-sized
`dvc repro` (benchmarks/README.md, finding 5). `stego run` starts one server here, points
itself and every stage at it through `PREFECT_API_URL`, and stops it at the end. The server
uses the usual `PREFECT_HOME` database, so the runs stay visible afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from stego_tasks.errors import ToolFailedError

# Services that start, time out or cancel runs on their own. Off, so a scheduled deployment
# cannot start a second pipeline in the middle of this one; task runs are still recorded.
QUIET_SERVICES = {
    f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"
    for name in (
        "SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "REPOSSESSOR",
        "TRIGGERS", "EVENT_LOGGER", "MARKETING",
    )
}


@dataclass
class LocalPrefectServer:
    """A running `prefect server start`: its API URL, process (own group) and log file."""

    api_url: str
    process: subprocess.Popen
    log: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prefect_command() -> str:
    beside = Path(sys.executable).parent / "prefect"
    return str(beside) if beside.exists() else "prefect"


def start_local_server(
    log: Path, home: Path | None = None, timeout: float = 120, env: Mapping[str, str] | None = None
) -> LocalPrefectServer:
    """Start `prefect server start` on 127.0.0.1 (free port, UI off) and wait for /api/health.

    Args:
        log: file for the server's output.
        home: PREFECT_HOME of the server (its SQLite database); default the caller's.
        timeout: seconds to wait for the API to answer.
        env: the server's environment (default: this process's).

    Returns:
        The running server; stop it with `stop_local_server`.

    Raises:
        RuntimeError: the server exited or did not answer in time (with the log's tail).
    """
    port = free_port()
    server_env = {**(os.environ if env is None else env), "PREFECT_SERVER_UI_ENABLED": "false", **QUIET_SERVICES}
    server_env.pop("PREFECT_API_URL", None)
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        server_env["PREFECT_HOME"] = str(home)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        process = subprocess.Popen(
            [_prefect_command(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = LocalPrefectServer(f"http://127.0.0.1:{port}/api", process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ToolFailedError(f"prefect server exited with {process.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    stop_local_server(server)
    raise ToolFailedError(f"prefect server did not answer within {timeout:.0f} s; see {log}:\n{log.read_text()[-2000:]}")


def stop_process_group(process: subprocess.Popen, grace: float = 15) -> None:
    """Stop a process started with `start_new_session=True` and everything it started.

    SIGTERM to the group first (Prefect, uvicorn and Dask shut down cleanly on it), then SIGKILL.
    """
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
    except ProcessLookupError:
        pass


def stop_local_server(server: LocalPrefectServer, grace: float = 15) -> None:
    """Stop a server from `start_local_server` (its whole process group)."""
    stop_process_group(server.process, grace)


@contextmanager
def shared_prefect_server() -> Iterator[str]:
    """Make sure this process and its children talk to one Prefect server; yield its API URL.

    An existing `PREFECT_API_URL` (a running server, Prefect Cloud) is used as it is.
    Otherwise a local server is started for the duration and `PREFECT_API_URL` is set in
    `os.environ`, which the stage subprocesses inherit; both are undone on exit. Must run
    before `prefect` is imported, which reads its settings once.
    """
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        yield existing
        return
    log = Path(tempfile.gettempdir()) / f"stego-prefect-server-{os.getpid()}.log"
    server = start_local_server(log)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url
    finally:
        _flush_prefect_queues()
        os.environ.pop("PREFECT_API_URL", None)
        stop_local_server(server)
        log.unlink(missing_ok=True)


def _flush_prefect_queues(timeout_s: float = 5.0) -> None:
    """Send the logs and events Prefect still holds before their server goes away.

    Otherwise they are flushed at interpreter exit, to a stopped server, and Prefect
    prints "Error logging to API" after a run that went well.
    """
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        # Best effort: a failed flush must not fail a run that finished.
        with suppress(Exception):
            service.drain_all(timeout=timeout_s)
