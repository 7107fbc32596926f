"""What happens when things break, proven with real processes (README, "What happens when
things break"): a SIGKILLed `stego extract` resumes with the missing chunks only and ends
equal to an uninterrupted run; a second writer is refused (the artifact lock, DVC's lock);
reruns with the same params and seed give byte-identical files; a user error is one line
with exit status 2; a manifest cannot point outside the corpus.

The expensive part, a tiny project with an extracted feature store (a random ViT-Ti/16 at
32 px over 12 + 3 demo images, 2 images per chunk, so 6 train chunks), is built once per
module. The refused commands all start at once: each spends most of its time importing torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from PIL import Image
from tiny_project import make_tiny_project

from stego_tasks.demo_data import demo_data
from stego_tasks.ingest import ingest
from stego_tasks.runtime.locking import artifact_lock
from tests.conftest import SUBPROCESS_ENV, VENV_BIN, free_port, run

STEGO = str(VENV_BIN / "stego")
DVC = str(VENV_BIN / "dvc")
N_TRAIN, N_VAL, BATCH = 12, 3, 2
N_TRAIN_CHUNKS = N_TRAIN // BATCH
STORE = Path("artifacts/features.zarr")  # the CLI's default, relative to a project
CLASS_NAMES = ["sky", "grass", "road", "building", "water"]

# A complete params.yaml: every stage of the tiny project reads it as written here.
BASE_PARAMS: dict = {
    "seed": 0,
    "corpus": {"root": "corpus", "n_classes": 5, "ignore_index": 255, "class_names": CLASS_NAMES, "demo": True},
    "backbone": {"name": "vit_tiny_patch16_224", "weights": "random"},
    # 3 writers whatever the cores: the SIGKILL lands while several chunks are being written.
    "extract": {"resolution": 32, "val_resolution": 32, "batch_size": BATCH, "device": "cpu"},
    "runtime": {"writers": 3, "crf_workers": 1},
    "knn": {"k": 3},
    "train": {"n_codes": 8, "steps": 20, "batch_size": 8, "log_every": 5, "checkpoint_every": 10, "device": "cpu"},
    "cluster": {"kmeans_iters": 10},
    "crf": {"iterations": 3},
    "evaluate": {"n_overlays": 1},
    "dask": {"address": None, "n_workers": 1, "threads_per_worker": 1},
}


def _env(**extra: str) -> dict[str, str]:
    """This process's environment for a `stego` subprocess: offline hub, one OpenMP thread."""
    env = {**os.environ, **SUBPROCESS_ENV, **extra}
    env.pop("STEGO_DEBUG", None)  # errors must be one line, not a traceback
    return env


def write_params(project: Path, changes: dict[tuple[str, str], object] | None = None) -> None:
    """Write `BASE_PARAMS` with `changes` ({(block, key): value}) to `project/params.yaml`."""
    params = {block: dict(values) if isinstance(values, dict) else values for block, values in BASE_PARAMS.items()}
    for (block, key), value in (changes or {}).items():
        params[block][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stego(project: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`stego ARGS` in `project`; with `check`, fail the test with its output when it fails."""
    return run([STEGO, *args], project, env or _env(), timeout=300, check=check)


def copy_project(source: Path, destination: Path, with_store: bool = False) -> Path:
    """Copy a tiny project (corpus, params, manifest), its feature store only when asked."""
    skip = {"features.zarr", ".features.zarr.lock", ".features.zarr.pid"} if not with_store else set()
    shutil.copytree(source, destination, ignore=lambda _dir, names: [n for n in names if n in skip])
    return destination


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project after `stego ingest` and one uninterrupted `stego extract` (6 + 2 chunks)."""
    project = tmp_path_factory.mktemp("reliability") / "reference"
    project.mkdir()
    demo_data(project / "corpus", n_train=N_TRAIN, n_val=N_VAL, size=64)
    write_params(project)
    stego(project, "ingest", "--no-prefect")
    stego(project, "extract", "--no-prefect")
    return project


def _arrays(store: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(store), mode="r")
    return {f"{split}/{name}": root[split][name][:] for split in ("train", "val") for name in root[split].array_keys()}


def _attrs(store: Path) -> dict[str, dict]:
    root = zarr.open_group(str(store), mode="r")
    return {"": dict(root.attrs), **{split: dict(root[split].attrs) for split in ("train", "val")}}


# --- 1. SIGKILL during extract -------------------------------------------------------------


def _train_done(store: Path) -> np.ndarray | None:
    """The store's train/done flags, or None while the store or the split is not created yet."""
    try:
        return zarr.open_group(str(store), mode="r")["train"]["done"][:]
    except Exception:  # noqa: BLE001 - missing, or mid-creation by the writer: not there yet
        return None


def _chunk_files(store: Path, index: int) -> dict[str, int]:
    """mtime (ns) of every file of train chunk `index` (zarr v3 keys train/<array>/c/<index>/...)."""
    files = {}
    for array in sorted(p for p in (store / "train").iterdir() if p.is_dir() and p.name != "done"):
        chunk = array / "c" / str(index)
        for path in [chunk] if chunk.is_file() else sorted(p for p in chunk.rglob("*") if p.is_file()):
            files[str(path.relative_to(store))] = path.stat().st_mtime_ns
    return files


def _live_group_members(pgid: int) -> list[str]:
    """Processes of group `pgid` that are still alive (zombies excluded), as 'pid command'."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            alive.append(f"{entry.name} {stat[stat.index('(') : stat.rindex(')') + 1]}")
    return alive


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started with `start_new_session=True` and everything in its group."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process groups from /proc")
def test_sigkilled_extract_resumes_missing_chunks_and_equals_an_uninterrupted_run(reference: Path, tmp_path: Path) -> None:
    project = copy_project(reference, tmp_path / "killed")
    store = project / STORE
    log_path = tmp_path / "killed.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [STEGO, "extract", "--no-prefect"], cwd=project, env=_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the kill reaches the Dask scheduler and workers too
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            done = _train_done(store)
            if done is not None and 0 < done.sum() < N_TRAIN_CHUNKS:
                break
            assert process.poll() is None, f"extract ended ({process.returncode}) before it could be killed mid-run:\n{log_path.read_text()[-3000:]}"
            assert done is None or done.sum() < N_TRAIN_CHUNKS, "every train chunk finished between two polls"
            assert time.monotonic() < deadline, f"no train chunk finished within 180 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        _kill_group(process)
    deadline = time.monotonic() + 15
    while (left := _live_group_members(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes of the killed extract survived SIGKILL of its group: {left}"

    done = zarr.open_group(str(store), mode="r")["train"]["done"][:]  # as the dead run left it
    finished = [int(i) for i in np.flatnonzero(done)]
    assert 0 < len(finished) < N_TRAIN_CHUNKS, f"the kill did not land mid-run: done flags {done}"
    untouched = {i: _chunk_files(store, i) for i in finished}
    for index, files in untouched.items():
        assert any("/feats/" in name for name in files), f"done chunk {index} has no feats file: {sorted(files)}"
    time.sleep(0.05)  # a rewrite within the same clock tick could keep the mtime

    rerun = stego(project, "extract", "--no-prefect")
    progress = re.findall(r"extract (train|val): (\d+)/(\d+) img", rerun.stderr)
    last = {split: (int(count), int(total)) for split, count, total in progress}
    missing = N_TRAIN_CHUNKS - len(finished)
    assert last.get("train") == (BATCH * missing, BATCH * missing), (
        f"the rerun should extract the {BATCH * missing} images of the {missing} unfinished chunks, it logged "
        f"{progress}:\n{rerun.stderr[-3000:]}"
    )
    assert last.get("val") == (N_VAL, N_VAL), f"val was never started before the kill; rerun logged {progress}"
    for index, files in untouched.items():
        assert _chunk_files(store, index) == files, f"train chunk {index} was done before the kill but was rewritten"

    want, got = _arrays(reference / STORE), _arrays(store)
    assert set(got) == set(want), f"arrays {sorted(got)} vs the uninterrupted run's {sorted(want)}"
    for name in sorted(want):
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), (
            f"{name} of the resumed store differs from the uninterrupted run's"
        )
    assert _attrs(store) == _attrs(reference / STORE), "store attributes differ from the uninterrupted run's"


# --- 2, 4, 5. Refused runs: one line, exit 2, nothing written -----------------------------


@dataclass
class Refusal:
    """A command that must be refused: where and how it runs, and what its one error line says."""

    command: str
    needles: list[str]
    project: Path = Path()
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    snapshot: dict[str, tuple[int, int, str]] | None = None  # files of a store that must not change


def _snapshot(store: Path) -> dict[str, tuple[int, int, str]]:
    """(size, mtime ns, sha256) of every file under `store`."""
    return {
        str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(store.rglob("*")) if p.is_file()
    }


def _with_params(changes: dict[tuple[str, str], object]) -> Callable[[Path, Path], Refusal]:
    def setup(reference: Path, tmp: Path) -> Refusal:
        project = copy_project(reference, tmp)
        write_params(project, changes)
        return Refusal("extract", [], project)

    return setup


def _offline_auto_weights(reference: Path, tmp: Path) -> Refusal:
    refusal = _with_params({("corpus", "demo"): False, ("backbone", "name"): "dino_vits8", ("backbone", "weights"): "auto"})(reference, tmp)
    (tmp / "empty-hub").mkdir()
    refusal.env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "empty-hub")}
    return refusal


def _empty_corpus(reference: Path, tmp: Path) -> Refusal:
    tmp.mkdir()
    for split in ("train", "val"):
        (tmp / "corpus" / "images" / split).mkdir(parents=True)
    write_params(tmp)
    return Refusal("ingest", [], tmp)


def _bad_label(reference: Path, tmp: Path) -> Refusal:
    project = copy_project(reference, tmp)
    label = sorted((project / "corpus" / "labels" / "train").glob("*.png"))[3]
    mask = np.array(Image.open(label))
    mask[:4, :4] = 7  # class 7 with n_classes 5
    Image.fromarray(mask).save(label)
    ingest(project / "corpus", project / "artifacts" / "manifest.parquet", project / "artifacts" / "quarantine.csv")
    return Refusal("validate", [f"labels/train/{label.name}", "set corpus.n_classes to at least 8 (now 5)"], project)


def _locked_store(reference: Path, tmp: Path) -> Refusal:
    project = copy_project(reference, tmp, with_store=True)
    # One chunk pending: without the lock this run would certainly write to the store.
    zarr.open_group(str(project / STORE), mode="a")["train"]["done"][2] = False
    needle = f"being written by another stego run (pid {os.getpid()})"
    return Refusal("extract", [needle, "wait for it to finish"], project, snapshot=_snapshot(project / STORE))


def _dead_scheduler(reference: Path, tmp: Path) -> Refusal:
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    refusal = _with_params({("dask", "address"): address})(reference, tmp)
    refusal.needles = [f"no Dask scheduler answers at {address}"]
    return refusal


def _escaping_manifest(path_of: Callable[[Path], str]) -> Callable[[Path, Path], Refusal]:
    def setup(reference: Path, tmp: Path) -> Refusal:
        project = copy_project(reference, tmp)
        # A real image outside the corpus: only the path check can stop it being read.
        shutil.copy2(sorted((project / "corpus" / "images" / "train").glob("*.png"))[0], project / "outside.png")
        manifest = project / "artifacts" / "manifest.parquet"
        frame = pd.read_parquet(manifest)
        row = int(np.flatnonzero(frame["split"] == "train")[0])
        escaped = path_of(project)
        frame.loc[row, "path"] = escaped
        frame.to_parquet(manifest, index=False)
        return Refusal("extract", [repr(escaped), "must be a non-empty relative posix path without '..'"], project)

    return setup


try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a dependency
    HAS_CUDA = False

# name: (setup, what the error line must contain). The setups run here; their commands run at once.
REFUSALS: dict[str, tuple[Callable[[Path, Path], Refusal], list[str]]] = {
    "cuda_on_cpu_machine": (
        _with_params({("extract", "device"): "cuda"}),
        ["device 'cuda'", "no CUDA GPU", "set it to 'auto' or 'cpu'"],
    ),
    "missing_weights_file": (
        _with_params({("corpus", "demo"): False, ("backbone", "weights"): "/nonexistent.pth"}),
        ["'/nonexistent.pth'", "does not exist", "pass an existing checkpoint path"],
    ),
    "offline_without_weights": (
        _offline_auto_weights,
        ["offline", "pass a local checkpoint path", "in the hub cache", "go online"],
    ),
    "corpus_without_images": (_empty_corpus, ["no images found in", "images/train", "expected the layout"]),
    "label_value_out_of_range": (_bad_label, []),
    "dead_dask_scheduler": (_dead_scheduler, ["set dask.address to null"]),
    "store_locked_by_another_run": (_locked_store, []),
    "manifest_path_with_dotdot": (_escaping_manifest(lambda project: "../outside.png"), []),
    "manifest_absolute_path": (_escaping_manifest(lambda project: str(project / "outside.png")), []),
}


@pytest.fixture(scope="module")
def refusals(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Refusal, subprocess.CompletedProcess]]]:
    """Set up every case of REFUSALS, run all their commands at once, and collect the results."""
    tmp = tmp_path_factory.mktemp("refusals")
    cases: dict[str, Refusal] = {}
    for name, (setup, needles) in REFUSALS.items():
        if name == "cuda_on_cpu_machine" and HAS_CUDA:
            continue
        refusal = setup(reference, tmp / name)
        refusal.needles = needles + refusal.needles
        cases[name] = refusal
    results = {}
    with ExitStack() as stack:
        stack.enter_context(artifact_lock(cases["store_locked_by_another_run"].project / STORE))
        started = {}
        for name, case in cases.items():
            started[name] = subprocess.Popen(
                [STEGO, case.command, "--no-prefect", *case.extra_args], cwd=case.project, env=_env(**case.env),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            )
            stack.callback(_kill_group, started[name])
        for name, process in started.items():
            stdout, stderr = process.communicate(timeout=300)
            results[name] = (cases[name], subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    yield results


@pytest.mark.slow  # its module fixture starts every refused run at once: about 40 s
@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_run_prints_one_line_exits_2_and_writes_nothing(name: str, refusals) -> None:
    if name == "cuda_on_cpu_machine" and HAS_CUDA:
        pytest.skip("this machine has a CUDA GPU, so extract.device: cuda is valid here")
    case, result = refusals[name]
    output = f"--- stdout ---\n{result.stdout[-2000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    assert result.returncode == 2, f"`stego {case.command}` exited with {result.returncode}, not 2:\n{output}"
    assert "Traceback" not in result.stderr, f"a user error must not print a traceback:\n{output}"
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"stego {case.command}: error: ")]
    assert len(lines) == 1, f"expected exactly one 'stego {case.command}: error:' line:\n{output}"
    for needle in case.needles:
        assert needle in lines[0], f"the error line does not say {needle!r}: {lines[0]}"
    store = case.project / STORE
    if case.snapshot is not None:
        assert _snapshot(store) == case.snapshot, "the refused run changed the locked store"
    elif case.command == "extract":
        assert not (store / "train").exists(), f"the refused run wrote features to {store}"
    if case.command == "validate":
        assert (case.project / "artifacts" / "validation.json").is_file(), "validate must still write its result JSON"


# --- 2. Two `dvc repro` at once -------------------------------------------------------------


@pytest.mark.slow
def test_second_dvc_repro_is_refused_by_dvc_lock_and_first_completes(tmp_path: Path, project_env: dict[str, str]) -> None:
    project = make_tiny_project(tmp_path / "project", project_env)
    log_path = tmp_path / "first.log"
    with log_path.open("w") as log:
        first = subprocess.Popen(
            [DVC, "repro", "validate"], cwd=project, env=project_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        # demo_data is done and ingest (a Prefect flow) is starting: the first holds DVC's lock.
        while "Running stage 'ingest'" not in log_path.read_text():
            assert first.poll() is None, f"the first repro ended early ({first.returncode}):\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"the first repro never reached ingest:\n{log_path.read_text()}"
            time.sleep(0.1)
        second = run([DVC, "repro"], project, project_env, timeout=120, check=False)
        first_still_running = first.poll() is None
        first.wait(timeout=300)
    finally:
        _kill_group(first)
    first_output = log_path.read_text()
    second_output = second.stdout + second.stderr
    assert first_still_running, "the first repro finished before the second asked for the lock: nothing was tested"
    assert second.returncode != 0, f"the second repro ran alongside the first:\n{second_output}"
    # DVC releases its repo lock while a stage's command runs; the per-output lock then refuses.
    lock_message = re.search(r"Unable to acquire lock|is busy, it is being blocked by:\s+\(PID (\d+)\)", second_output)
    assert lock_message, f"the second repro failed without DVC's lock message:\n{second_output}"
    assert lock_message.group(1) in (None, str(first.pid)), f"DVC names another holder than the first repro:\n{second_output}"
    assert "Running stage" not in second_output, f"the refused repro ran a stage:\n{second_output}"
    assert first.returncode == 0, f"the first repro failed:\n{first_output[-4000:]}"
    ran = re.findall(r"^Running stage '([^']+)':", first_output, flags=re.MULTILINE)
    assert ran == ["demo_data", "ingest", "validate"], f"the first repro ran {ran}"
    status = run([DVC, "status", "--json", "validate", "--with-deps"], project, project_env)
    assert status.stdout.strip() == "{}", f"the first repro's outputs do not match dvc.lock: {status.stdout}"


# --- 3. Determinism -------------------------------------------------------------------------

# train -> cluster -> crf -> evaluate, exactly what `stego <stage> --no-prefect` calls.
CHAIN = """
import sys
from flows import stage_functions as s
params, features, knn, out = sys.argv[1:]
s.train(params, features, knn, f"{out}/model", f"{out}/train_loss.csv")
s.cluster(params, features, f"{out}/model", f"{out}/predictions.zarr")
s.crf(params, features, f"{out}/predictions.zarr", f"{out}/crf.zarr")
s.evaluate(params, features, f"{out}/predictions.zarr", f"{out}/crf.zarr", f"{out}/scores.json",
           f"{out}/per_class_iou.json", f"{out}/confusion.png", f"{out}/overlays", f"{out}/assignment.json")
"""
SAME_BYTES = ("model/model.safetensors", "model/model.json", "train_loss.csv", "scores.json", "per_class_iou.json", "assignment.json")


@pytest.mark.slow  # a second full run: about 20 s
def test_same_params_and_seed_give_byte_identical_model_and_metrics(reference: Path, tmp_path: Path) -> None:
    from flows import stage_functions

    params, features = str(reference / "params.yaml"), str(reference / STORE)
    knn = str(tmp_path / "knn.zarr")
    stage_functions.knn(params, features, knn)
    runs = [tmp_path / "run-a", tmp_path / "run-b"]
    for out in runs:
        out.mkdir()
    # Two interpreters at once, with different hash seeds: no set or dict order may leak in.
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHAIN, params, features, knn, str(out)], cwd=reference,
            env=_env(PYTHONHASHSEED=str(seed)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for seed, out in enumerate(runs)
    ]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"the stage chain failed ({process.returncode}):\n{output[-4000:]}"
    a, b = runs
    for name in SAME_BYTES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between two identical runs"
    for store in ("predictions.zarr", "crf.zarr"):
        want, got = zarr.open_group(str(a / store), mode="r"), zarr.open_group(str(b / store), mode="r")
        assert sorted(got.array_keys()) == sorted(want.array_keys()), f"{store}: different arrays"
        for key in want.array_keys():
            assert np.array_equal(got[key][:], want[key][:]), f"{store}/{key} differs between two identical runs"
    # Not vacuous: the runs trained, logged losses and scored methods.
    loss_rows = (a / "train_loss.csv").read_text().splitlines()
    assert len(loss_rows) >= 1 + 20 // 5, f"loss log has {len(loss_rows)} lines: {loss_rows}"
    scores = json.loads((a / "scores.json").read_text())
    assert {"cluster", "cluster_crf", "linear"} <= set(scores), f"scores.json has {sorted(scores)}"
