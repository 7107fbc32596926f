"""Stage `weights`: record the identity of the backbone checkpoint, so DVC sees a replaced file.

`backbone.weights` is a string (a path, `auto` or `random`), and DVC tracks params by value:
a checkpoint overwritten at the same path (a newer download, a fine-tuned backbone) would
change no param, and `dvc repro` would keep the features of the old weights. This stage
runs on every `dvc repro` (`always_changed`), finds the file the backbone would load, and
writes its content hash to `artifacts/weights.json`. `extract` depends on that file, so it
re-runs exactly when the checkpoint's content changed; an unchanged checkpoint writes the
same bytes, and nothing downstream runs. The hash is cached by the file's stat
(`runtime/content_hash`), so a large checkpoint is read once, not on every repro.

Nothing heavy is loaded: no torch, no model, unless the backbone is a timm name outside
the table (its geometry comes from timm).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stego_tasks.config import BackboneParams
from stego_tasks.method.registry import BACKBONES, BackboneSpec
from stego_tasks.method.weights import WeightsNotFoundError, weights_file
from stego_tasks.runtime import atomic
from stego_tasks.runtime.content_hash import cached_sha256

log = logging.getLogger("stego")


def _spec(name: str) -> BackboneSpec:
    if name in BACKBONES:
        return BACKBONES[name]
    # A timm name outside the table: its geometry comes from timm.
    from stego_tasks.method.backbone import backbone_spec

    return backbone_spec(name)


def weights_identity(backbone: BackboneParams) -> dict[str, Any]:
    """What the backbone's weights are, by content: the checkpoint's SHA-256 and size.

    Args:
        backbone: the `backbone` block (name, weights).

    Returns:
        {"backbone", "weights", "sha256", "size", "found"}: sha256 and size are None for
        random weights and when no file is found, a missing path or a folder included
        (`found` then says why, in one sentence; `extract` refuses or, for the demo, falls
        back to random weights). No absolute path is recorded, so the identity is the same
        on every machine holding the file.

    Raises:
        ValueError: an unknown backbone name.
    """
    spec = _spec(backbone.name)
    identity: dict[str, Any] = {"backbone": spec.name, "weights": str(backbone.weights), "sha256": None, "size": None}
    try:
        path, source = weights_file(spec, backbone.weights)
    except WeightsNotFoundError as error:
        identity["found"] = f"no checkpoint: {str(error).split(':', 1)[0]}"
        return identity
    if path is None:
        identity["found"] = "random weights"
        return identity
    identity.update(sha256=cached_sha256(path), size=path.stat().st_size, found="hub" if source.startswith("hub") else "file")
    return identity


def weights(backbone: BackboneParams, out: Path) -> dict[str, Any]:
    """Write `weights_identity` to `out` (JSON), atomically; bytes change only when the identity does.

    Args:
        backbone: the `backbone` block.
        out: the identity file (`paths.weights`).

    Returns:
        The identity written.
    """
    identity = weights_identity(backbone)
    atomic.write_json(out, identity)
    sha = identity["sha256"]
    log.info("weights: %s %s (%s)", identity["backbone"], f"sha256 {sha[:12]}..." if sha else "", identity["found"])
    return identity
