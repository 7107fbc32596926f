"""Crash-safe writes: everything goes to a temporary sibling, then is renamed into place.

A stage killed half-way therefore never leaves a truncated artifact that DVC could cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success.

    Works for files and for directories (a directory target is replaced whole).
    On an exception the temporary path is removed and `target` is left untouched.

    Args:
        target: final path of the artifact.
        suffix: suffix of the temporary name (some writers dispatch on it, e.g. ".png").

    Yields:
        The temporary path to write to (it does not exist yet).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if tmp.is_file():
            # Flush to disk before the rename, so a power cut cannot leave an empty file.
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(target: str | Path, text: str) -> None:
    """Atomically write `text` (UTF-8) to `target`."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, payload: Any) -> None:
    """Atomically write `payload` as indented, key-sorted JSON (byte-stable for equal data)."""
    write_text(target, json.dumps(payload, indent=2, sort_keys=True, allow_nan=True) + "\n")
