"""The `dask` params block: local cluster on loopback, clear error for a dead scheduler."""

from __future__ import annotations

import os

import psutil
import pytest

from stego_tasks.config import DaskParams
from stego_tasks.runtime.dask_cluster import dask_client, torch_threads_per_worker
from tests.conftest import free_port


def test_unanswered_address_fails_with_one_sentence() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError) as info, dask_client(DaskParams(address=address), connect_timeout_s=2):
        pass
    message = str(info.value)
    assert message.startswith(f"no Dask scheduler answers at {address}"), f"unexpected message {message!r}"
    assert "dask.address to null" in message, f"the message must say how to run locally: {message!r}"


def test_local_cluster_runs_tasks_on_loopback() -> None:
    with dask_client(DaskParams(n_workers=1, threads_per_worker=1)) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6, "the local cluster computed a wrong sum"
        workers = client.scheduler_info()["workers"]
        assert all(address.startswith("tcp://127.0.0.1:") for address in workers), f"not on loopback: {list(workers)}"
        # Every socket the cluster listens on (scheduler, HTTP server, workers, nannies) is loopback.
        pids = {os.getpid()} | {child.pid for child in psutil.Process().children(recursive=True)}
        listening = [c.laddr for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN" and c.pid in pids]
        assert listening, "found no listening socket of the cluster"
        assert all(address.ip == "127.0.0.1" for address in listening), f"exposed beyond loopback: {listening}"


def test_threads_split_cores_between_local_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert torch_threads_per_worker(DaskParams(n_workers=2, threads_per_worker=2)) == 2, "8 cores / 4 slots"
    assert torch_threads_per_worker(DaskParams(n_workers=16)) == 1, "never fewer than one thread"
    assert torch_threads_per_worker(DaskParams(address="tcp://10.0.0.1:8786")) is None, "remote: leave as is"
