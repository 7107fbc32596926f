"""Tests for `runtime.executors`: where chunked work runs and how `run_chunks` feeds it.

They prove the default chunk size, that `run_chunks` draws a chunk only when a slot is free and
hands every result back under its key, that a chunk's error or a dead worker process surfaces
(the latter as one sentence) and cancels what has not started, that `stage_executor` runs
in-process for one worker and in one spawn pool for more, and that `DaskExecutor` scatters the
arrays before submitting (a stand-in client, no cluster).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import pytest

from stego_tasks.config import CRFParams
from stego_tasks.errors import ToolFailedError
from stego_tasks.method.dense_crf import crf_chunk
from stego_tasks.runtime.executors import (
    DaskExecutor,
    InlineExecutor,
    default_chunksize,
    run_chunks,
    spawn_pool,
    stage_executor,
)


def _batch(n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`n` tiny random images uint8 [8, 8, 3] and two-class logits float32 [2, 8, 8]."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(n)]
    logits = [rng.normal(size=(2, 8, 8)).astype(np.float32) for _ in range(n)]
    return images, logits


class _RecordingExecutor(Executor):
    """Runs calls inline and records how many images each submitted chunk held."""

    def __init__(self) -> None:
        self.chunk_sizes: list[int] = []

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self.chunk_sizes.append(len(args[0]))
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


class _HeldExecutor(Executor):
    """Hands out futures that finish only when the test sets them; records what was submitted."""

    def __init__(self) -> None:
        self.futures: list[Future] = []
        self.args: list[tuple] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        self.futures.append(future)
        self.args.append(args)
        return future


def test_default_chunksize_is_about_four_tasks_per_worker():
    got = {
        (n, w): default_chunksize(n, w)
        for n, w in [(32, 2), (33, 2), (5, 2), (0, 2), (100, 1), (7, 0), (1000, 8)]
    }
    want = {(32, 2): 4, (33, 2): 5, (5, 2): 1, (0, 2): 1, (100, 1): 25, (7, 0): 2, (1000, 8): 32}
    assert got == want, f"default chunk sizes: {got}"


def test_chunks_are_read_only_when_a_slot_is_free():
    """The stage's loop draws (reads) a chunk only while fewer than max_in_flight are pending."""
    images, logits = _batch(6)
    drawn, delivered, pending_at_draw = [], [], []

    def jobs():
        for i in range(6):
            pending_at_draw.append(len(drawn) - len(delivered))
            drawn.append(i)
            yield i, ([images[i]], [logits[i]], CRFParams(), True)

    recorder = _RecordingExecutor()
    run_chunks(recorder, crf_chunk, jobs(), max_in_flight=2, on_done=lambda key, out: delivered.append(key))
    assert sorted(delivered) == list(range(6)), f"delivered chunks: {delivered}"
    assert max(pending_at_draw) < 2, f"a chunk was read while 2 were in flight: {pending_at_draw}"


def _square_all(values: list[int]) -> list[int]:
    return [v * v for v in values]


def test_results_come_back_under_their_keys_with_no_bound_on_chunks_in_flight() -> None:
    results: dict[str, list[int]] = {}
    jobs = [(f"chunk{i}", ([i, i + 1],)) for i in range(5)]
    run_chunks(InlineExecutor(), _square_all, jobs, max_in_flight=None, on_done=results.__setitem__)
    assert results == {f"chunk{i}": [i * i, (i + 1) ** 2] for i in range(5)}, results


def test_an_unbounded_run_submits_every_chunk_before_any_finishes() -> None:
    executor = _HeldExecutor()
    delivered: list[int] = []

    def finish_later() -> None:
        # Runs once run_chunks waits: by then every chunk must have been submitted.
        while len(executor.futures) < 4:
            threading.Event().wait(0.01)
        for index, future in enumerate(executor.futures):
            future.set_result([index])

    helper = threading.Thread(target=finish_later)
    helper.start()
    run_chunks(executor, _square_all, [(i, ([i],)) for i in range(4)], None, lambda key, out: delivered.append(key))
    helper.join(5)
    assert sorted(delivered) == [0, 1, 2, 3] and len(executor.args) == 4, (delivered, executor.args)


def _fails_on_two(values: list[int]) -> list[int]:
    if 2 in values:
        raise KeyError("chunk two is bad")
    return values


def test_a_chunks_own_error_surfaces_unchanged_and_later_chunks_are_not_drawn() -> None:
    delivered: list[int] = []
    drawn: list[int] = []

    def jobs():
        for i in range(6):
            drawn.append(i)
            yield i, ([i],)

    with pytest.raises(KeyError, match="chunk two is bad"):
        run_chunks(InlineExecutor(), _fails_on_two, jobs(), max_in_flight=1, on_done=lambda key, out: delivered.append(key))
    assert delivered == [0, 1] and drawn == [0, 1, 2], f"delivered {delivered}, drawn {drawn}"


def test_a_failure_cancels_the_chunks_still_waiting_to_start() -> None:
    executor = _HeldExecutor()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            run_chunks(executor, _square_all, [(i, ([i],)) for i in range(3)], 3, lambda key, out: None)
        except BaseException as error:  # handed to the test thread
            outcome.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    while len(executor.futures) < 3:
        threading.Event().wait(0.01)
    executor.futures[0].set_exception(ValueError("first chunk failed"))
    worker.join(5)
    assert [type(e) for e in outcome] == [ValueError], outcome
    assert executor.futures[1].cancelled() and executor.futures[2].cancelled(), "pending chunks were not cancelled"


def test_a_dead_worker_process_is_one_sentence_naming_the_cure() -> None:
    class Broken(Executor):
        def submit(self, fn, /, *args, **kwargs) -> Future:
            future: Future = Future()
            future.set_exception(BrokenProcessPool("a process in the pool was terminated abruptly"))
            return future

    with pytest.raises(ToolFailedError, match=r"^a worker process died .*; retry with fewer workers or smaller images\.$"):
        run_chunks(Broken(), _square_all, [(0, ([1],))], 2, lambda key, out: None)


def test_the_inline_executor_hands_an_error_back_through_the_future() -> None:
    future = InlineExecutor().submit(_fails_on_two, [2])
    assert future.done() and isinstance(future.exception(), KeyError), future
    assert InlineExecutor().submit(_square_all, [3]).result() == [9]


def test_one_worker_runs_in_this_process_and_two_in_one_spawn_pool() -> None:
    with stage_executor(1, None) as (executor, slots):
        assert isinstance(executor, InlineExecutor) and slots == 1, (executor, slots)
    with stage_executor(0, None) as (executor, slots):
        assert isinstance(executor, InlineExecutor) and slots == 1, "workers <= 1 means this process"


@pytest.mark.timeout(60)
def test_a_spawn_pool_computes_in_child_processes_and_is_shut_down_on_exit() -> None:
    with stage_executor(2, None) as (executor, slots):
        assert isinstance(executor, ProcessPoolExecutor) and slots == 2, (executor, slots)
        assert executor.submit(_square_all, [2, 3]).result(timeout=50) == [4, 9]
        pool = executor
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(_square_all, [1])
    with spawn_pool(1) as own:
        assert own._mp_context.get_start_method() == "spawn", "the pool must not fork"


class _FakeClient:
    """Stands in for a dask.distributed Client: records scatters, runs submissions inline."""

    def __init__(self) -> None:
        self.scattered: list[tuple[list, bool]] = []
        self.shut = False

    def scatter(self, data: list, hash: bool = True) -> list[str]:  # noqa: A002 - Dask's keyword
        self.scattered.append((data, hash))
        return [f"remote-{i}" for i in range(len(data))]

    def get_executor(self, pure: bool = True) -> Executor:
        assert pure is False, "identical chunks must not be merged"
        client = self

        class Inner(InlineExecutor):
            def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
                client.shut = True

        return Inner()


def _echo(*args: Any) -> list[Any]:
    return list(args)


def test_dask_executor_scatters_images_and_logits_and_passes_the_rest_inline() -> None:
    client = _FakeClient()
    executor = DaskExecutor(client)
    images, logits = ["image"], ["logits"]
    got = executor.submit(_echo, images, logits, "params", True).result()
    assert got == ["remote-0", "remote-1", "params", True], got
    assert client.scattered == [([images, logits], False)], client.scattered
    executor.shutdown()
    assert client.shut, "shutting the executor down did not reach the client's executor"
