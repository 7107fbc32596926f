"""Content hashes of large input files, cached by the file's `stat` so an unchanged file is read once.

A backbone checkpoint is hundreds of megabytes; the features extracted with it are valid
only for its content, not its path, so every `extract` (and the `weights` stage DVC runs on
every `dvc repro`) needs its SHA-256. The cache maps (real path, size, mtime, ctime, inode)
to the digest: replacing or rewriting the file changes at least its ctime (which no tool
can set back), so a changed file is always hashed again, and an untouched one never is.

The cache is a small JSON file in `$STEGO_CACHE_DIR`, else `$XDG_CACHE_HOME/stego`, else
`~/.cache/stego`. It is only an accelerator: when it cannot be read or written, the hash is
computed from the file and nothing else changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from stego_tasks.errors import InvalidInputError

_CACHE_NAME = "sha256-by-stat.json"
# Entries kept; the oldest are dropped first (a cache of checkpoints, not of a corpus).
_MAX_ENTRIES = 256


def cache_dir() -> Path:
    """The folder of stego's caches (`$STEGO_CACHE_DIR`, `$XDG_CACHE_HOME/stego` or `~/.cache/stego`)."""
    if os.environ.get("STEGO_CACHE_DIR"):
        return Path(os.environ["STEGO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stego"


def _stat_key(path: Path) -> tuple[str, str]:
    real = os.path.realpath(path)
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInputError(f"{path} is not a regular file; pass the path of a checkpoint file.")
    return real, f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}"


def sha256_of_file(
    path: str | Path, chunk_size: int = 1 << 22, opener: Callable[[Path], BinaryIO] | None = None
) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks so a large file never sits in memory (no cache).

    Args:
        path: the file.
        chunk_size: bytes per read.
        opener: opens the file for binary reading (default `open(path, "rb")`); the corpus
            passes one that never blocks on a named pipe.

    Returns:
        64 lowercase hex characters.
    """
    digest = hashlib.sha256()
    with (opener(Path(path)) if opener is not None else open(path, "rb")) as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a regular file, from the stat-keyed cache when the file is unchanged.

    Args:
        path: the file (symlinks are followed; the cache is keyed by the real path).

    Returns:
        64 lowercase hex characters.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the path is not a regular file.
    """
    real, key = _stat_key(Path(path))
    cache_file = cache_dir() / _CACHE_NAME
    entries = _read_cache(cache_file)
    entry = entries.get(real)
    if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_of_file(real)
    # Stat again: a file rewritten while it was read must not be cached under its new stat.
    if _stat_key(Path(real))[1] == key:
        entries.pop(real, None)
        entries[real] = {"stat": key, "sha256": digest}
        _write_cache(cache_file, dict(list(entries.items())[-_MAX_ENTRIES:]))
    return digest


def _read_cache(cache_file: Path) -> dict:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache_file: Path, entries: dict) -> None:
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache_file.name}.", dir=cache_file.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entries, handle)
        os.replace(tmp, cache_file)
    except OSError:
        # A read-only or full home: the hash is still right, only not remembered.
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
