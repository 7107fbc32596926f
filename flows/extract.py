"""Prefect flow `extract`: the DVC stage `extract` as a flow run, wrapping `stego_tasks`.

With `dask.address` set, the flow is the bridge between Prefect and the Dask cluster: each
chunk of images becomes its own Prefect task run (`extract-chunk`), submitted through
prefect-dask's `DaskTaskRunner` to that cluster, so the Prefect UI shows every chunk, its
worker and its retries. The flow's own process keeps the store's lock and writes each
chunk as it completes, exactly as `stego extract --no-prefect` does; only where the
arithmetic runs changes. Without an address the stage runs as one task (in-process or on
a local cluster, as the `dask` block says).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.futures import as_completed

from flows import stage_functions
from flows.stage_flow import traced_stage
from stego_tasks.config import load_params
from stego_tasks.data.embed import ChunkJob, extract_chunk
from stego_tasks.extract import ChunkResults, ChunkRunner
from stego_tasks.paths import PARAMS_FILE, PATHS


# No retries for the whole stage (see flows/stage_flow.py): it completes the store in place
# under its lock, and a failed run is resumed by the next `stego extract`, not repeated here.
@task(name="extract", cache_policy=NONE)
def extract_task(params_path: str, manifest: str, features: str) -> dict[str, Any]:
    """Run the library's extract stage (DVC, not Prefect, decides whether it is stale)."""
    return stage_functions.extract(params_path=params_path, manifest=manifest, features=features)


# A chunk task only reads images and returns arrays (the flow writes them), so repeating it
# is safe: a worker that died or lost its connection gets two more tries.
@task(name="extract-chunk", task_run_name="extract-{job.split}-{job.index}", cache_policy=NONE, persist_result=False,
      retries=2, retry_delay_seconds=5)
def extract_chunk_task(job: ChunkJob) -> dict:
    """Decode and embed one chunk on a Dask worker; the arrays travel back to the flow."""
    return extract_chunk(job)


@contextmanager
def dask_task_runner(address: str) -> Iterator[Any]:
    """A started prefect-dask `DaskTaskRunner` on the scheduler at `address` (one-line error if none answers)."""
    from prefect_dask import DaskTaskRunner

    from stego_tasks.runtime.dask_cluster import unreachable_scheduler

    with ExitStack() as stack:
        try:
            task_runner = stack.enter_context(DaskTaskRunner(address=address))
            _ = task_runner.client  # prefect-dask connects lazily, at the first submit: connect now
        except (OSError, TimeoutError) as error:
            raise unreachable_scheduler(address, error) from None
        yield task_runner


def chunks_as_prefect_tasks(task_runner: Any) -> ChunkRunner:
    """A chunk runner that submits one `extract_chunk_task` run per chunk to `task_runner`.

    Args:
        task_runner: a started Prefect task runner (a `DaskTaskRunner` on the cluster).

    Returns:
        A `ChunkRunner` for `stego_tasks.extract.extract`; call it inside a flow run.
    """

    def run(jobs: list[ChunkJob]) -> ChunkResults:
        futures = [task_runner.submit(extract_chunk_task, parameters={"job": job}) for job in jobs]
        job_of = {future.task_run_id: job for future, job in zip(futures, jobs, strict=True)}
        for future in as_completed(futures):
            yield job_of[future.task_run_id], future.result()

    return run


@flow(name="extract", log_prints=True)
def extract_flow(
    params_path: str = PARAMS_FILE, manifest: str = PATHS["manifest"], features: str = PATHS["features"],
    *, trace: str | None = None,
) -> dict[str, Any]:
    """The extract stage as one flow run; arguments as `flows.stage_functions.extract` (but its runner).

    `trace`: the JSON file to write the stage's trace to (`flows.stage_flow.traced_stage`).
    """
    address = load_params(params_path).dask.address
    if address:
        # Connected before the store is touched: a wrong address leaves nothing behind.
        with dask_task_runner(address) as task_runner:
            return traced_stage("extract", lambda: stage_functions.extract(
                params_path=params_path, manifest=manifest, features=features, runner=chunks_as_prefect_tasks(task_runner)
            ), trace)
    return traced_stage("extract", lambda: extract_task(params_path=params_path, manifest=manifest, features=features),
                        trace)
