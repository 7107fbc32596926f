"""Where chunked work runs: a Dask cluster, a local spawn pool, or this process.

All three are `concurrent.futures.Executor`s, so the `crf` stage and
`method.dense_crf.dense_crf_batch` submit to them alike, through :func:`run_chunks`.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from stego_tasks.errors import ToolFailedError

if TYPE_CHECKING:
    from stego_tasks.config import DaskParams

K = TypeVar("K")


@contextmanager
def spawn_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers start with "spawn", shut down on exit.

    "spawn" rather than fork: forking a process whose torch/OpenMP threads hold locks is
    what made the reference's pool hang. On exit, tasks not yet started are cancelled, so
    an error surfaces after the running chunks end rather than after all of them.

    Args:
        workers: Worker processes, >= 1.

    Yields:
        The pool, to pass to `dense_crf_batch` (``executor=``) or to submit to.
    """
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(Executor):
    """Submit CRF chunks to a Dask cluster, scattering the arrays first.

    Arrays passed inline would be pickled into the task graph (distributed warns above
    10 MB, and the scheduler would hold them); scattered, they go straight to a worker.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        # pure=False: identical chunks (say, a repeated image) must not be merged or
        # hashed, and hashing large arrays costs time.
        self._inner = client.get_executor(pure=False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        images, logits, *rest = args
        remote = self._client.scatter([images, logits], hash=False)
        return self._inner.submit(fn, *remote, *rest, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._inner.shutdown(wait=wait)


@contextmanager
def stage_executor(workers: int, dask: DaskParams | None) -> Iterator[tuple[Executor, int]]:
    """Where the stage's chunks run, and how many run at once.

    A Dask scheduler at ``dask.address`` when there is one; otherwise one local spawn pool
    of ``workers`` (starting a LocalCluster would cost more than the pool and bring
    nothing), or this process when ``workers`` <= 1.

    Yields:
        (executor, parallel slots). On Dask a slot is a worker process: pydensecrf holds
        the GIL, so a worker's extra threads would only take turns.
    """
    if dask is not None and dask.address:
        from stego_tasks.runtime.dask_cluster import dask_client

        with dask_client(dask) as client:
            yield DaskExecutor(client), max(1, len(client.nthreads()))
        return
    if workers <= 1:
        yield InlineExecutor(), 1
        return
    with spawn_pool(workers) as pool:
        yield pool, workers


class InlineExecutor(Executor):
    """Runs each submitted call at once in this thread (workers <= 1: no processes)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to the caller through the future, like a pool
            future.set_exception(error)
        return future


def default_chunksize(n_images: int, workers: int) -> int:
    """Images per task when the caller gives none: about four tasks per worker.

    One task per image pays a round trip per image; one task per worker leaves a worker
    idle when the other's share runs long. Four per worker keeps the tail short.

    Args:
        n_images: Images to refine, >= 0.
        workers: Worker processes (values < 1 count as 1).

    Returns:
        ceil(n_images / (4 * workers)), at least 1.
    """
    return max(1, math.ceil(n_images / (4 * max(1, workers))))


def run_chunks(
    executor: Executor,
    fn: Callable[..., list[Any]],
    jobs: Iterable[tuple[K, tuple]],
    max_in_flight: int | None,
    on_done: Callable[[K, list[Any]], None],
) -> None:
    """Submit ``fn(*args)`` for each ``(key, args)`` job, at most ``max_in_flight`` at a time.

    Jobs are drawn from ``jobs`` only when a slot is free, so a lazy iterable (reading
    each chunk from disk when needed) keeps at most ``max_in_flight`` chunks in memory.

    Args:
        executor: Where the chunks run (a spawn pool, a Dask client's executor, ...).
        fn: The worker entry point, importable at module level (spawned processes and Dask
            workers import it), returning one result per item of its chunk.
        jobs: (key, args of ``fn``) pairs.
        max_in_flight: Chunks submitted but not yet handed to ``on_done``; None: no bound.
        on_done: Called with (key, the chunk's results) as chunks finish, in completion
            order, in this thread.

    Raises:
        RuntimeError: If a worker process of a process pool dies.
        Exception: Whatever a chunk raised; chunks not yet started are cancelled.
    """
    pending = iter(jobs)
    in_flight: dict[Future, K] = {}
    exhausted = False
    try:
        while True:
            while not exhausted and (max_in_flight is None or len(in_flight) < max_in_flight):
                job = next(pending, None)
                if job is None:
                    exhausted = True
                    break
                key, args = job
                in_flight[executor.submit(fn, *args)] = key
            if not in_flight:
                return
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                on_done(in_flight.pop(future), future.result())
    except BrokenProcessPool as err:
        raise ToolFailedError(
            "a worker process died (killed for memory or crashed); "
            "retry with fewer workers or smaller images."
        ) from err
    finally:
        for future in in_flight:
            future.cancel()
