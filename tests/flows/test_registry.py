"""The stage registry (`flows/registry.py`): one entry and one function give a stage its
`stego` command, its Prefect flow and its `dvc.yaml` stage, with no other edit."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows import cli, registry
from flows.dvc_yaml import dvc_yaml
from flows.registry import NO_CACHE, STAGES, Stage, flow_of
from stego_tasks.paths import PARAMS_FILE, PATHS

CALLS: list[dict[str, Any]] = []


def smooth(params_path: str = PARAMS_FILE, predictions: str = PATHS["predictions"],
           k_sweep: str = PATHS["k_sweep"], passes: int = 2, dry: bool = False) -> dict[str, Any]:
    """A made-up stage: reads the predictions, writes a sweep.

    Args:
        passes: how many smoothing passes
    """
    CALLS.append({"params_path": params_path, "predictions": predictions, "k_sweep": k_sweep,
                  "passes": passes, "dry": dry})
    return {"passes": passes}


SMOOTH = Stage(smooth, "Read the predictions; write a made-up sweep.", params=("cluster",),
               outs={"k_sweep": NO_CACHE}, library="stego_tasks.knn")


@pytest.fixture
def with_smooth(monkeypatch: pytest.MonkeyPatch) -> dict[str, Stage]:
    """The registry with the made-up stage `smooth` added, as the CLI and the generator see it."""
    stages = {**STAGES, "smooth": SMOOTH}
    monkeypatch.setattr(registry, "STAGES", stages)
    monkeypatch.setattr(cli, "STAGES", stages)
    CALLS.clear()
    return stages


def test_a_new_stage_gets_a_cli_command(with_smooth: dict[str, Stage], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    trace = tmp_path / "smooth.json"
    status = cli.main(["smooth", "--no-prefect", "--predictions", "p.zarr", "--k-sweep", "out/k",
                       "--passes", "3", "--dry", "--trace", str(trace)])
    assert status == 0, capsys.readouterr().err
    assert CALLS == [{"params_path": PARAMS_FILE, "predictions": "p.zarr", "k_sweep": "out/k", "passes": 3, "dry": True}], \
        f"the stage function got {CALLS}"
    assert json.loads(trace.read_text())["stage"] == "smooth", "the command traces the stage under its name"
    with pytest.raises(SystemExit):
        cli.main(["smooth", "--help"])
    text = capsys.readouterr().out
    assert "how many smoothing passes (default: 2)" in text and f"(default: {PATHS['k_sweep']})" in text, text


def test_a_new_stage_gets_a_typed_prefect_flow(with_smooth: dict[str, Stage]) -> None:
    from prefect import Flow

    flow = flow_of(SMOOTH)
    assert isinstance(flow, Flow) and flow.name == "smooth", f"flow {flow}"
    got = inspect.signature(flow.fn).parameters
    assert list(got) == [*inspect.signature(smooth).parameters, "trace"], f"the flow takes {list(got)}"
    assert flow.parameters.model_dump()["properties"]["passes"]["type"] == "integer", "Prefect sees the types"
    assert flow_of(SMOOTH) is flow, "a stage's flow is built once"


def test_a_new_stage_gets_a_dvc_stage(with_smooth: dict[str, Stage]) -> None:
    stage = yaml.safe_load(dvc_yaml(with_smooth))["stages"]["smooth"]
    assert stage["cmd"] == ("stego smooth --predictions ${paths.predictions} --k-sweep ${paths.k_sweep} "
                            "--trace ${paths.trace}/smooth.json"), stage["cmd"]
    assert stage["deps"][:2] == ["flows/stage_functions.py", "${paths.predictions}"], "reads what it is given"
    assert "stego_tasks/knn.py" in stage["deps"] and "stego_tasks/method/neighbours.py" in stage["deps"], \
        "its code deps are its library module's import closure"
    assert stage["params"] == ["cluster"], stage["params"]
    assert stage["outs"] == [{"${paths.k_sweep}": {"cache": False}}], stage["outs"]
    assert stage["metrics"] == [{"${paths.trace}/smooth.json": {"cache": False}}], "a traced stage's trace is a metric"
    assert "smooth" not in yaml.safe_load(dvc_yaml(STAGES))["stages"], "the registry itself is untouched"


def test_every_stage_entry_point_is_named_as_its_stage() -> None:
    import importlib

    for name, stage in STAGES.items():
        library = importlib.import_module(stage.module)
        assert callable(getattr(library, name, None)), f"{stage.module} has no function {name}"
        assert stage.function.__module__ == "flows.stage_functions", f"{name}: {stage.function.__module__}"
