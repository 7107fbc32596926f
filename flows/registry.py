"""The pipeline's stages, each declared once; the CLI, the Prefect flows and `dvc.yaml` are derived from here.

No stage declares the `runtime` or `dask` block: they say where work runs and how many
threads and processes it uses, never what a stage computes, so changing them re-runs
nothing.

A stage is its function in `flows/stage_functions.py` (named as the stage: params file and
paths in, the library's `stego_tasks/<stage>.py` function of the same name called) plus one
`Stage` entry below: what DVC must know that the function's signature does not say.

From the function's signature come the stage's `stego` options (a parameter named like a
`paths.yaml` key is that path, with its default) and its Prefect flow's typed parameters;
from the entry come its params keys, which of its paths it writes (everything else it is
given, it reads), and the DVC flags. `flows/cli.py` builds one subcommand per entry,
`flow_of` one flow, and `flows/dvc_yaml.py` the stage in `dvc.yaml`; adding a stage is one
function and one entry.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from importlib import import_module
from types import MappingProxyType, NoneType, UnionType
from typing import Any

from flows import stage_functions as fn
from stego_tasks.paths import PATHS

NO_CACHE: Mapping[str, Any] = MappingProxyType({"cache": False})
PERSIST: Mapping[str, Any] = MappingProxyType({"persist": True})


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
    """One pipeline stage as DVC, the CLI and Prefect see it.

    Attributes:
        function: its stage function (its `__name__` is the stage's name).
        help: what it reads and writes, one or two sentences (`stego <stage> --help`).
        params: the params keys it reads: whole blocks (`knn`) or single keys (`corpus.root`).
        outs, metrics, plots: the paths.yaml keys it writes, each with its DVC flags
            (`NO_CACHE`, `PERSIST`); every other path it is given is a dep.
        deps: deps it is not given as a path: order-only deps or what it finds itself
            (`${paths.weights}`, `${corpus.root}`, `params.yaml`).
        reads_traces: it reads the traces of the stages declared before it (the report).
        always_changed: DVC runs it on every repro; such a check runs without Prefect and
            untraced (a trace would differ each time and make everything after it stale).
        paths: parameter -> paths.yaml key, where the parameter has another name.
        fixed: parameter -> the value DVC's command gives it (not a path).
        positional: the parameter the command takes without a flag.
        comments: a `dvc.yaml` entry (as written there) -> the comment after it; "cmd" for
            the comment above the command.
        flow: "module:attribute" of a flow of its own; None: `stage_flow(function)`.
        done: the line the CLI prints from the stage's summary; None: nothing.
        library: the library module whose import closure is the stage's code deps.
    """

    function: Callable[..., dict[str, Any]]
    help: str
    params: tuple[str, ...] = ()
    outs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    metrics: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    plots: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    deps: tuple[str, ...] = ()
    reads_traces: bool = False
    always_changed: bool = False
    paths: Mapping[str, str] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    positional: str | None = None
    comments: Mapping[str, str] = dataclasses.field(default_factory=dict)
    flow: str | None = None
    done: Callable[[dict[str, Any]], str] | None = None
    library: str | None = None

    @property
    def name(self) -> str:
        """The stage's name: its function's, its params block's, its DVC stage's."""
        return self.function.__name__

    @property
    def command(self) -> str:
        """Its `stego` subcommand: the name with dashes (`demo_data` -> `demo-data`)."""
        return self.name.replace("_", "-")

    @property
    def module(self) -> str:
        """The library module it runs (`stego_tasks.<stage>` unless `library` says otherwise)."""
        return self.library or f"stego_tasks.{self.name}"

    @property
    def traced(self) -> bool:
        """Whether it writes a trace (`<paths.trace>/<stage>.json`, a DVC metrics file)."""
        return not self.always_changed

    def trace(self) -> str | None:
        """Its default trace file; None when untraced."""
        return f"{PATHS['trace']}/{self.name}.json" if self.traced else None

    def options(self) -> dict[str, inspect.Parameter]:
        """The function's parameters a command line can give (str, int, float, bool, optional or not)."""
        hints = typing.get_type_hints(self.function)
        return {name: p for name, p in inspect.signature(self.function).parameters.items()
                if plain_type(hints.get(name)) is not None}

    def path_params(self) -> dict[str, str]:
        """Parameter -> paths.yaml key, for every parameter that is an artifact path."""
        named = {name: self.paths.get(name, name) for name in self.options()}
        return {name: key for name, key in named.items() if key in PATHS}

    def written(self) -> set[str]:
        """The paths.yaml keys it writes (outs, metrics, plots)."""
        return {*self.outs, *self.metrics, *self.plots}


def plain_type(hint: Any) -> type | None:
    """The one plain type (str, int, float, bool) of a hint, `X | None` included; None for anything else."""
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not NoneType]
        hint = args[0] if len(args) == 1 else None
    return hint if hint in (str, int, float, bool) else None


def _declare(*stages: Stage) -> dict[str, Stage]:
    return {stage.name: stage for stage in stages}


STAGES: dict[str, Stage] = _declare(
    Stage(fn.demo_data, "Read the demo_data params block (sizes, seed); write the labelled synthetic demo corpus "
          "(images/{train,val}, labels/{train,val}) to DIR.",
          params=("demo_data",), outs={"demo_corpus": {}}, positional="demo_corpus",
          done=lambda summary: f"demo corpus written: {summary}"),
    Stage(fn.ingest, "Scan corpus.root; write the manifest (Parquet) and the quarantine list (CSV).",
          params=("corpus.root", "ingest"), deps=("${corpus.root}",),
          outs={"manifest": {}, "quarantine": NO_CACHE}),
    Stage(fn.validate, "Check the manifest and label masks with Great Expectations; write a result JSON.",
          params=("corpus.root", "corpus.n_classes", "corpus.ignore_index", "ingest"),
          outs={"validation": NO_CACHE}),
    Stage(fn.weights, "Find the backbone checkpoint backbone.weights names; write its content hash (JSON), so a "
          "replaced file makes extract stale.",
          params=("backbone",), outs={"weights": NO_CACHE}, always_changed=True,
          comments={"cmd": "Runs on every repro: a checkpoint replaced at the same path changes no param, only its\n"
                           "content hash, which this writes; extract depends on it (an unchanged hash runs nothing more)."}),
    Stage(fn.extract, "Run the frozen backbone over the manifest's images; write features to a Zarr store.",
          params=("corpus.root", "corpus.ignore_index", "corpus.demo", "backbone", "extract", "demo.extract"),
          deps=("${paths.validation}", "${paths.weights}"), outs={"features": PERSIST}, flow="flows.extract:extract_flow",
          comments={"${paths.weights}": "the checkpoint's content hash (the weights stage)",
                    "demo.extract": "applies over extract while corpus.demo is true",
                    "${paths.features}": "resumable: a rerun completes the missing chunks only"}),
    Stage(fn.knn, "Read pooled training features; write the faiss top-k neighbour graph to a Zarr store.",
          params=("knn",), outs={"knn": {}}),
    Stage(fn.train, "Read stored features and the kNN graph; write the head + probes, the loss log and the shift "
          "diagnostics.",
          params=("seed", "corpus.n_classes", "corpus.ignore_index", "corpus.class_names", "corpus.demo", "train",
                  "demo.train"),
          outs={"model": PERSIST}, plots={"loss_log": NO_CACHE, "shift_stats": NO_CACHE},
          comments={"demo.train": "applies over train while corpus.demo is true",
                    "${paths.model}": "keeps the training checkpoint for `stego train --resume`"}),
    Stage(fn.cluster, "Read features and the model; write cluster, linear and k-means predictions (Zarr).",
          params=("seed", "cluster"), outs={"predictions": {}}),
    Stage(fn.crf, "Read predictions and images; write dense-CRF refined predictions (Zarr).",
          params=("crf",), outs={"crf_out": {}}),
    Stage(fn.evaluate, "Read labels (when there are any), predictions and the cluster names file; write metrics JSON "
          "(with the label-free signals), confusion matrix, overlays, the plot data DVC draws and the cluster gallery.",
          # The whole corpus block: evaluate is downstream of every stage the other corpus keys
          # shape (root: ingest; demo: extract, train), so this re-runs nothing more.
          params=("corpus", "evaluate", "preset"),
          outs={"assignment": NO_CACHE, "gallery": NO_CACHE},
          metrics={"scores": NO_CACHE, "per_class": NO_CACHE},
          plots={"confusion": NO_CACHE, "overlays": NO_CACHE, "confusion_data": NO_CACHE, "per_class_plot": NO_CACHE},
          comments={"${paths.cluster_names}": "a rename re-runs evaluate and report only",
                    "${paths.gallery}": "what each cluster found (the report shows it)"}),
    Stage(fn.report, "Read a run's metrics, plots, quarantine list and model; write one self-contained HTML page "
          "(metrics, label-free signals, cluster gallery, IoU bars, confusion, losses, overlays, quarantine).",
          params=("report",), paths={"out": "report"}, fixed={"run": "."}, outs={"report": NO_CACHE},
          deps=tuple(f"${{paths.{key}}}" for key in ("scores", "per_class", "confusion", "overlays", "gallery",
                                                     "loss_log", "quarantine", "model")) + ("params.yaml",),
          reads_traces=True,
          done=lambda summary: f"report written to {summary['out']}"
          + (" (RANDOM backbone weights: the scores mean nothing)" if summary["random_weights"] else "")),
)


def flow_of(stage: Stage) -> Any:
    """The Prefect flow of `stage`: its own (`Stage.flow`) or `stage_flow(stage.function)`, built once."""
    if stage.flow:
        module, _, attribute = stage.flow.partition(":")
        return getattr(import_module(module), attribute)
    if stage.name not in _FLOWS or _FLOWS[stage.name][0] is not stage:
        from flows.stage_flow import stage_flow  # Prefect loads only when a flow runs

        _FLOWS[stage.name] = (stage, stage_flow(stage.function))
    return _FLOWS[stage.name][1]


_FLOWS: dict[str, tuple[Stage, Any]] = {}
