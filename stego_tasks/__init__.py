"""STEGO as a library: the pipeline's stages over four layers that call one way (down).

Layers, lowest first (`tests/flows/test_contracts.py` checks the direction):
  config, params_schema, params_doc, paths, presets/   configuration: params blocks and
             their JSON schema, the published defaults (presets/defaults.yaml) and the
             presets as overrides of them, artifact paths
  runtime/   where work runs and how it is written: atomic outputs, locks, progress,
             devices, executors (spawn pool / Dask), the stage trace and provenance
  method/    STEGO's method, arrays in and out: backbone, head, loss, neighbours, inference,
             dense CRF, metrics, probes, the trained model's files
  data/      images and corpus files, preprocessing, the manifest, the Zarr features store,
             the train split as training reads it, benchmark adapters
  tools/     commands on a finished run: predict, sweep-k, seeds, report pieces
Stages, one module each (same name as the flow, params block, DVC stage and test file):
  demo_data, ingest, validate, extract, knn, train, cluster, crf, evaluate, report

The public API sits at the package top, timm style, as a facade over `method/`::

    from stego_tasks import correspondence_loss, unsupervised_scores, create_backbone, normalize

Each name is loaded on first use (a module `__getattr__`), so `import stego_tasks` stays cheap:
the CLI imports the package to parse arguments and must not pay for torch. Library modules
import from the defining module (`stego_tasks.method.loss`, ...), never from this facade.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it (the only place each name is written besides its code).
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(
        ("CorrespondenceTerms", "correspondence_loss", "feature_correlations", "random_derangements"),
        "stego_tasks.method.loss",
    ),
    **dict.fromkeys(
        ("ScoreAccumulator", "confusion_matrix", "hungarian_assignment", "scores_from_confusion",
         "unsupervised_scores"),
        "stego_tasks.method.metrics",
    ),
    **dict.fromkeys(
        ("BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "BackboneSpec", "create_backbone",
         "create_seeded_backbone", "list_backbones", "normalize"),
        "stego_tasks.method.backbone",
    ),
    **dict.fromkeys(("WeightsNotFoundError", "read_checkpoint", "weights_argument"), "stego_tasks.method.weights"),
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    """Load a public name from its defining module on first access (PEP 562), then cache it here."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'stego_tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's own names plus the lazily loaded public API, for completion and `help()`."""
    return sorted({*globals(), *_PUBLIC})
