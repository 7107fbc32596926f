"""Contract tests between dvc.yaml and the code, and between the layers.

A stage's code deps cover everything it runs; it reads exactly the params keys it declares
and is given exactly the paths of its deps and outs; the library (`stego_tasks`) has no
import cycle and never imports Prefect, DVC, argparse or `flows`; every Prefect entrypoint
loads and every stage's flow has its stage function's typed parameters.

DVC re-runs a stage only when one of its declared deps changes, so a package module the
stage imports (directly, inside a function, or through another module) but does not
declare would leave stale results cached after an edit. The import closure is read from
the source with `ast`, so nothing is imported to compute it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

from flows import stage_functions
from flows.cli import _parser
from flows.code_deps import PACKAGE, import_closure, imported_modules
from flows.declared_params import UndeclaredParamError, declared_view
from flows.registry import STAGES, flow_of
from stego_tasks.config import DemoParams, Params, load_params
from stego_tasks.paths import PARAMS_FILE, PATHS, load_paths
from stego_tasks.report import INPUTS
from tests.conftest import REPO

# The library module a `stego <stage>` command runs, per DVC stage.
ENTRY = {name: stage.module for name, stage in STAGES.items()}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(ENTRY))
def test_stage_code_deps_cover_its_import_closure(stage: str) -> None:
    declared = {REPO / dep for dep in _stages()[stage].get("deps", []) if isinstance(dep, str)}
    needed = {p for p in import_closure(ENTRY[stage]) if p.name != "__init__.py" or p.parent.name != PACKAGE}
    # The stage function decides which params and paths reach the library, so it shapes results too.
    needed.add(REPO / "flows" / "stage_functions.py")
    missing = sorted(str(p.relative_to(REPO)) for p in needed - declared)
    assert not missing, f"dvc.yaml stage {stage} runs but does not declare: {missing}"


def test_every_stage_command_is_a_stego_command_of_its_own_name() -> None:
    for stage, spec in _stages().items():
        command = spec["cmd"].split()
        assert command[:2] == ["stego", stage.replace("_", "-")], f"stage {stage} runs {spec['cmd']!r}"


# --- params: the keys a stage reads are the keys its DVC stage declares ---------------------
#
# Each stage function in flows/stage_functions.py runs with its library call replaced by a
# recorder and with `load_params` returning a proxy that records every `block.key` read. A
# block handed on whole (to the library, which may read any key of it) counts as all its
# keys; a `declared_view` of it counts as the keys it copies. Those reads must equal the
# keys dvc.yaml declares for the stage (a whole block declared = all its keys).

# Blocks that say where work runs and how many threads and processes it uses, never what a
# stage computes: never DVC params, so changing them re-runs nothing. A stage may read them
# without declaring them, and no stage declares them.
RUNTIME_BLOCKS: dict[str, str] = {
    "runtime": "thread and process counts; tests/pipeline/test_pipeline_no_effect_params.py proves the outputs equal",
    "dask": "the cluster the chunks run on; a test proves the stores equal",
}
# The library function each stage function calls (module, attribute): the function of the
# stage's name in the stage's module (the naming rule of every stage entry point).
LIBRARY_CALLS = {name: (stage.module, name) for name, stage in STAGES.items()}


class _Block:
    """A params block that records each key read (`block.key`) in `reads`."""

    def __init__(self, name: str, block: object, reads: set[str]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_reads", reads)

    @property
    def __class__(self) -> type:  # noqa: D401 - `declared_view` builds a copy of this class
        return type(object.__getattribute__(self, "_block"))

    def __getattr__(self, key: str) -> object:
        self._reads.add(f"{self._name}.{key}")
        return getattr(self._block, key)

    def whole(self) -> set[str]:
        return {f"{self._name}.{f.name}" for f in dataclasses.fields(self._block)}


class _Params:
    """`Params` that hands out recording blocks and records top-level keys (`seed`, `preset`)."""

    def __init__(self, params: Params, reads: set[str]) -> None:
        self._params, self._reads = params, reads

    def __getattr__(self, name: str) -> object:
        value = getattr(self._params, name)
        if dataclasses.is_dataclass(value):
            return _Block(name, value, self._reads)
        self._reads.add(name)
        return value


@dataclasses.dataclass
class _Result:
    """What the replaced library calls return: a dataclass (asdict) with a model's `info`."""

    info: dict = dataclasses.field(default_factory=lambda: {"in_dim": 1})


def stage_reads(stage: str, monkeypatch: pytest.MonkeyPatch, params: Params | None = None) -> set[str]:
    """The dotted params keys `flows.stage_functions.<stage>` reads (blocks handed on whole expanded)."""
    reads: set[str] = set()

    def library_call(*args: object, **kwargs: object) -> _Result:
        for value in (*args, *kwargs.values()):
            if isinstance(value, _Block):
                reads.update(value.whole())
        return _Result()

    module, name = LIBRARY_CALLS[stage]
    monkeypatch.setattr(importlib.import_module(module), name, library_call)
    monkeypatch.setattr(stage_functions, "load_params", lambda path: _Params(params or load_params(path), reads))
    monkeypatch.setattr(stage_functions, "check_folder_output", lambda *args, **kwargs: None)
    getattr(stage_functions, stage)(params_path=str(REPO / "params.yaml"))
    # A block the `demo` block overrides (config.apply_demo_overrides) also depends on
    # corpus.demo and its override, read while the file is loaded.
    for block in (f.name for f in dataclasses.fields(DemoParams)):
        if any(key.startswith(f"{block}.") for key in reads):
            reads.update({"corpus.demo", f"demo.{block}"})
    return reads


def declared_keys(stage: str) -> set[str]:
    """The dotted keys dvc.yaml declares for `stage`, a whole block expanded to all its keys."""
    blocks = {f.name: f.type for f in dataclasses.fields(Params)}
    keys: set[str] = set()
    for entry in _stages()[stage].get("params", []):
        assert isinstance(entry, str), f"stage {stage}: params from another file ({entry}) are not expected"
        block = getattr(Params(), entry, None) if "." not in entry else None
        if dataclasses.is_dataclass(block):
            keys.update(f"{entry}.{f.name}" for f in dataclasses.fields(block))
        else:
            assert entry.split(".")[0] in blocks, f"stage {stage} declares {entry}, not a params key"
            keys.add(entry)
    return keys


def _no_effect(key: str) -> bool:
    return key.split(".")[0] in RUNTIME_BLOCKS


@pytest.mark.parametrize("stage", sorted(LIBRARY_CALLS))
def test_a_stage_reads_exactly_the_params_keys_it_declares(stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = {key for key in stage_reads(stage, monkeypatch) if not _no_effect(key)}
    declared = declared_keys(stage)
    assert not reads - declared, f"stage {stage} reads {sorted(reads - declared)}, which dvc.yaml does not declare"
    assert not declared - reads, f"dvc.yaml declares {sorted(declared - reads)} for stage {stage}, which it never reads"
    assert not {key for key in declared if _no_effect(key)}, f"stage {stage} declares a runtime key"


def test_dvc_yaml_lists_single_keys_only_where_a_stage_reads_part_of_a_block() -> None:
    # `demo.extract` / `demo.train` are the demo's override blocks, each declared whole.
    single = [(name, key) for name, stage in STAGES.items() for key in stage.params
              if "." in key and not key.startswith("demo.")]
    for name, key in single:
        block = key.split(".")[0]
        listed = {k for k in STAGES[name].params if k.startswith(f"{block}.")}
        every = {f"{block}.{f.name}" for f in dataclasses.fields(getattr(Params(), block))}
        assert listed != every, f"stage {name} lists every key of {block} one by one: declare the block whole"
    assert len(single) <= 15, f"{len(single)} single keys (at most 15): {single}"


def test_every_stage_function_is_checked() -> None:
    functions = {name for name, value in vars(stage_functions).items()
                 if inspect.isfunction(value) and value.__module__ == stage_functions.__name__ and not name.startswith("_")}
    assert functions == set(LIBRARY_CALLS) == set(_stages()), "a stage function, DVC stage and checked stage per name"


def test_the_recorder_sees_key_reads_whole_blocks_and_views(monkeypatch: pytest.MonkeyPatch) -> None:
    # Negative checks: a read the stage does not declare, and a block handed on whole.
    reads: set[str] = set()
    params = _Params(Params(), reads)
    assert params.knn.k == 7 and params.seed == 0
    view = declared_view(params.corpus, ("root",))
    assert reads == {"knn.k", "seed", "corpus.root"}, f"recorded {sorted(reads)}"
    with pytest.raises(UndeclaredParamError, match="n_classes"):
        _ = view.n_classes
    assert declared_keys("knn") == {"knn.k"} != declared_keys("ingest")
    wrong = stage_reads("validate", monkeypatch)
    assert wrong - declared_keys("ingest"), "validate's reads must not pass for ingest's declaration"


# --- paths: each stage is told exactly the paths DVC tracks for it -------------------------
#
# The stage's command line from dvc.yaml (as DVC resolves it) is parsed by the `stego`
# parser itself, so defaults count too: the paths the stage will read and write must be its
# DVC outs, plots and metrics plus its data deps.

# Deps a stage does not read but must run after.
ORDER_ONLY = {
    ("extract", PATHS["validation"]): "extract waits for validate: bad labels fail before any backbone time",
    ("extract", PATHS["weights"]): "a changed checkpoint content makes extract stale (extract hashes the file itself too)",
}
# Files `stego report` reads that no pipeline stage writes (a dep on them fails while absent).
OUTSIDE_PIPELINE = {
    PATHS["seeds"]: "written by `stego seeds`, which runs the pipeline itself",
    "dvc.yaml": "the DAG on the page; DVC refuses its own stage file as a dependency (DependencyIsStageFileError)",
}


def _resolved_stages() -> dict[str, dict[str, object]]:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        stages = {}
        for stage in repo.index.stages:
            data_deps = {str(d.def_path) for d in stage.deps
                         if not str(d.def_path).endswith(".py") and str(d.def_path) != PARAMS_FILE}
            params = load_params(REPO / PARAMS_FILE)
            data_deps.discard(params.corpus.root)  # read through corpus.root, a declared param
            stages[stage.name] = {"cmd": stage.cmd, "deps": data_deps, "outs": {str(o.def_path) for o in stage.outs}}
    return stages


def _normal(path: object) -> str:
    return PurePosixPath(str(path)).as_posix()


def _within(path: str, folder: str) -> bool:
    """`path` is `folder` or lies inside it."""
    return path == folder or path.startswith(f"{folder}/")


def path_mismatch(stage: str, cmd: str, deps: set[str], outs: set[str]) -> list[str]:
    """What is wrong between the paths `cmd` gives stage `stage` and its DVC deps and outs ([] when nothing)."""
    words = shlex.split(cmd)
    assert words[:2] == ["stego", STAGES[stage].command], f"stage {stage} runs {cmd!r}"
    args = _parser(words[1]).parse_args(words[1:])
    problems = []
    if stage == "report":
        run = Path(args.run)
        assert run == Path("."), f"the report stage must describe its own run, not {run}"
        wanted = {_normal(path) for path in INPUTS.values()} - {PARAMS_FILE}
        # A folder it reads (the stage traces) is covered by deps on files in it, and reads them.
        covered = {path for path in wanted if any(_within(path, dep) or _within(dep, path) for dep in deps)}
        problems += [f"reads {path} without a dep on it" for path in sorted(wanted - covered - set(OUTSIDE_PIPELINE))]
        problems += [f"has dep {dep}, which it does not read" for dep in sorted(deps)
                     if not any(_within(path, dep) or _within(dep, path) for path in wanted)]
        given = {_normal(args.out)}
    else:
        given = {_normal(getattr(args, option)) for option in STAGES[stage].path_params()}
        reads = given - outs
        problems += [f"is given {path}, neither an out nor a dep" for path in sorted(reads - deps)]
        problems += [f"has dep {dep}, which it is not given" for dep in sorted(deps - given)
                     if (stage, dep) not in ORDER_ONLY]
    if args.trace:  # every stage but the always-changed checks writes its trace (stego_tasks/runtime/trace.py)
        given.add(_normal(args.trace))
    problems += [f"writes {path}, not a DVC out" for path in sorted(given - deps - outs)]
    problems += [f"has out {out}, which it is not told to write" for out in sorted(outs - given)]
    return problems


def test_each_stage_reads_and_writes_exactly_its_dvc_deps_and_outs() -> None:
    stages = _resolved_stages()
    assert set(stages) == set(STAGES), "one `stego` stage command per DVC stage"
    for name, stage in stages.items():
        problems = path_mismatch(name, stage["cmd"], stage["deps"], stage["outs"])
        assert not problems, f"stage {name}: " + "; ".join(problems)
    # Negative checks: an undeclared out, a dep the stage is never given, a report input dropped.
    knn = stages["knn"]
    assert path_mismatch("knn", knn["cmd"], knn["deps"], knn["outs"] - {PATHS["knn"]})
    assert path_mismatch("knn", knn["cmd"], knn["deps"] | {PATHS["model"]}, knn["outs"])
    report = stages["report"]
    assert path_mismatch("report", report["cmd"], report["deps"] - {PATHS["confusion"]}, report["outs"])


def test_paths_are_spelled_out_only_in_paths_yaml() -> None:
    dvc_text = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    spelled = [path for path in PATHS.values() if path in dvc_text]
    assert not spelled, f"dvc.yaml spells out {spelled}; write ${{paths.<name>}} (stego_tasks/paths.yaml)"
    assert yaml.safe_load(dvc_text)["vars"] == ["stego_tasks/paths.yaml"], "dvc.yaml reads the paths file"
    assert load_paths(REPO / "stego_tasks" / "paths.yaml") == PATHS, "the package reads the file DVC reads"


# --- layers: no import cycle; the library knows nothing of Prefect, DVC or command lines ----

LIBRARY_MUST_NOT_IMPORT = ("prefect", "prefect_dask", "dvc", "argparse", "flows")
# (module, imported name): why it is not a layering breach.
ALLOWED_IMPORTS = {
    ("stego_tasks.method.weights", "argparse"): "argparse.Namespace is the one class DINO's pickled checkpoints "
                                          "hold beside the tensors; it is allowed when unpickling, no command line",
}


def _package_modules(package: str) -> dict[str, Path]:
    root = REPO / package
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def module_level_imports(path: Path, module: str) -> set[str]:
    """Modules a file imports when it is imported: top-level statements (and their if/try blocks), no
    function bodies, no `if TYPE_CHECKING:`; resolved as `imported_modules` does."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kept: list[ast.stmt] = []
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.Import | ast.ImportFrom):
            kept.append(node)
    return imported_modules(path, module, ast.Module(body=kept, type_ignores=[]))


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle of `graph` (module -> modules it imports), each once, as a path back to its start."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


@pytest.mark.parametrize("package", ["stego_tasks", "flows"])
def test_no_import_cycle(package: str) -> None:
    modules = _package_modules(package)
    graph = {name: {m for m in module_level_imports(path, name) if m in modules and m != name}
             for name, path in modules.items()}
    assert not import_cycles(graph), f"{package} has import cycles: {import_cycles(graph)}"
    # Negative check: the detector finds a two-module cycle.
    assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b", "a"]]


# Layers inside the library, lowest first; a module may import its own layer and those below.
# Top-level modules are stages (one per DVC stage), except the configuration modules (layer 0).
# The package's own `__init__` is the public API's facade: it loads `method/` names lazily, so
# nothing inside the package may import names from it (that would hide an upward import).
LAYERS = {"runtime": 1, "method": 2, "data": 3, "tools": 4}
CONFIGURATION = {"config", "params_schema", "paths", "presets", "errors"}
STAGE_LAYER = 5


def layer_of(module: str) -> int:
    """The layer of a `stego_tasks` module: 0 configuration, 1-4 the subpackages, 5 the stages."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package's own __init__
    if parts[1] in LAYERS:
        return LAYERS[parts[1]]
    return 0 if parts[1] in CONFIGURATION else STAGE_LAYER


def layering_breaches(graph: dict[str, set[str]]) -> list[str]:
    """Imports that call a layer up, from one stage into another, or into the package-top facade."""
    found = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            if target == PACKAGE and module != PACKAGE:
                found.append(f"{module} imports the public facade {PACKAGE}; import from the defining module")
            elif layer_of(target) > layer_of(module):
                found.append(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})")
            elif layer_of(module) == STAGE_LAYER and layer_of(target) == STAGE_LAYER and target != module:
                found.append(f"stage {module} imports stage {target}")
    return found


def test_library_layers_call_one_way() -> None:
    modules = _package_modules(PACKAGE)
    graph = {name: {m for m in imported_modules(path, name) if m in modules and m != name}
             for name, path in modules.items()}
    assert not layering_breaches(graph), "layering breaches:\n" + "\n".join(layering_breaches(graph))
    # Negative checks: an upward import, a stage-to-stage import and an import of the facade are caught.
    assert layering_breaches({"stego_tasks.method.head": {"stego_tasks.data.images"}})
    assert layering_breaches({"stego_tasks.validate": {"stego_tasks.ingest"}})
    assert layering_breaches({"stego_tasks.tools.sweep": {"stego_tasks", "stego_tasks.unsupervised_scores"}})
    assert not layering_breaches({"stego_tasks.train": {"stego_tasks.method.loss", "stego_tasks.config"}})


def test_public_api_at_the_package_top_is_the_method_code() -> None:
    import stego_tasks
    from stego_tasks import correspondence_loss, create_backbone, normalize, unsupervised_scores
    from stego_tasks.method import backbone, loss, metrics
    assert correspondence_loss is loss.correspondence_loss
    assert unsupervised_scores is metrics.unsupervised_scores
    assert (create_backbone, normalize) == (backbone.create_backbone, backbone.normalize)
    # Every published name resolves, and an unknown one is an AttributeError (hasattr stays honest).
    assert all(getattr(stego_tasks, name) is not None for name in stego_tasks.__all__)
    assert not hasattr(stego_tasks, "no_such_name")
    # No module only re-exports: the old paths are gone.
    for gone in ("loss", "metrics", "backbone"):
        assert not (REPO / PACKAGE / f"{gone}.py").exists()


def _forbidden(module: str, path: Path) -> list[str]:
    imported = imported_modules(path, module)
    tops = {name.split(".")[0] for name in imported}
    return sorted(top for top in tops if top in LIBRARY_MUST_NOT_IMPORT and (module, top) not in ALLOWED_IMPORTS)


def test_the_library_never_imports_prefect_dvc_argparse_or_flows(tmp_path: Path) -> None:
    found = {module: names for module, path in _package_modules(PACKAGE).items() if (names := _forbidden(module, path))}
    assert not found, f"library modules import the layers above them: {found}"
    # Negative check: an import inside a function body counts.
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from prefect import flow\n    import argparse\n")
    assert _forbidden("stego_tasks.fake", fake) == ["argparse", "prefect"]


# --- flows: deployments load, and each stage's flow has its stage function's parameters ----


def test_every_prefect_yaml_entrypoint_imports() -> None:
    from prefect import Flow

    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert deployments, "prefect.yaml declares no deployment"
    for deployment in deployments:
        file, _, name = deployment["entrypoint"].partition(":")
        module = ".".join(Path(file).with_suffix("").parts)
        flow = getattr(importlib.import_module(module), name, None)
        assert isinstance(flow, Flow), f"deployment {deployment['name']}: {deployment['entrypoint']} is not a flow"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("flows.no_such_stage")


@pytest.mark.parametrize("stage", sorted(LIBRARY_CALLS))
def test_each_stage_flow_takes_its_stage_functions_typed_parameters(stage: str) -> None:
    from prefect import Flow

    flow = flow_of(STAGES[stage])
    assert isinstance(flow, Flow) and flow.name == stage, f"the flow of stage {stage} is named {flow.name}"
    want = {name: p for name, p in inspect.signature(getattr(stage_functions, stage)).parameters.items() if name != "runner"}
    # Every flow takes one keyword more: the file its trace is written to (flows/stage_flow.py).
    want["trace"] = inspect.Parameter("trace", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")
    got = inspect.signature(flow.fn).parameters
    assert list(got) == list(want), f"flow {stage} takes {list(got)}, its stage function {list(want)}"
    for name, parameter in want.items():
        assert (got[name].annotation, got[name].default) == (parameter.annotation, parameter.default), f"{stage}: {name}"
    schema = flow.parameters.model_dump()["properties"]
    untyped = [name for name, spec in schema.items() if not ({"type", "anyOf"} & set(spec))]
    assert not untyped, f"flow {stage}: Prefect sees no type for {untyped}"


def _mirrored_test(module: Path) -> Path:
    """Where the tests of a package module live: tests/<its folder under the package>/test_<name>.py."""
    package, *inner = module.relative_to(REPO).parts
    folder = Path("tests", *inner[:-1]) if package == "stego_tasks" else Path("tests", package, *inner[:-1])
    return REPO / folder / f"test_{module.name}"


def test_every_module_has_a_test_file_at_its_mirrored_path() -> None:
    # Tests mirror the package (mmsegmentation's layout): a module's tests are found by its path.
    modules = [m for package in ("stego_tasks", "flows") for m in sorted((REPO / package).rglob("*.py"))
               if m.name != "__init__.py"]
    missing = [f"{m.relative_to(REPO)} -> {_mirrored_test(m).relative_to(REPO)}"
               for m in modules if not _mirrored_test(m).is_file()]
    assert len(modules) > 80 and not missing, f"modules without their test file: {missing}"
