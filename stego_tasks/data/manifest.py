"""The manifest `ingest` writes and every later stage reads: one row per usable image.

Columns (`MANIFEST_SCHEMA`): id, path (posix, relative to the corpus root), hash (SHA-256),
width, height, mode, split, label_path, label_hash. Paths from a manifest go through
:func:`resolve_in_corpus`, so no row can point outside the corpus.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stego_tasks.data.corpus_files import open_regular
from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.runtime.content_hash import sha256_of_file

SPLITS: tuple[str, ...] = ("train", "val")
LABEL_SUFFIX = ".png"
MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("path", pa.string()),
        ("hash", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("mode", pa.string()),
        ("split", pa.string()),
        ("label_path", pa.string()),
        ("label_hash", pa.string()),
    ]
)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a corpus file (`runtime.content_hash.sha256_of_file`), opened without blocking.

    Args:
        path: file to hash.
        chunk_size: bytes per read.

    Returns:
        64-character lowercase hex digest.
    """
    # Never a plain open(): on a named pipe it would wait for a writer forever.
    return sha256_of_file(path, chunk_size, opener=open_regular)


def resolve_in_corpus(root: Path, rel_path: str) -> Path:
    """Turn a manifest path into a real path, refusing anything that leaves the corpus.

    Args:
        root: corpus root.
        rel_path: posix path relative to `root`, as stored in the manifest.

    Returns:
        The resolved absolute path (symlinks followed), inside the resolved root.

    Raises:
        ValueError: `rel_path` is empty, absolute, contains `..`, or resolves outside.
    """
    pure = PurePosixPath(rel_path)
    if not rel_path or pure.is_absolute() or ".." in pure.parts:
        raise InvalidInputError(
            f"corpus path {rel_path!r} must be a non-empty relative posix path without "
            f"'..'; manifests written by ingest never contain such paths, so regenerate it."
        )
    real_root = Path(root).resolve()
    target = (real_root / pure).resolve()
    if not target.is_relative_to(real_root):
        raise InvalidInputError(
            f"corpus path {rel_path!r} resolves to {target}, outside the corpus root "
            f"{real_root}; replace that symlink with the file itself."
        )
    return target


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest written by `ingest`.

    Args:
        path: the Parquet manifest.

    Returns:
        DataFrame with the `MANIFEST_SCHEMA` columns, one row per usable image.

    Raises:
        FileNotFoundError: there is no manifest (one sentence naming the stage that writes it).
        ValueError: the file is not a readable Parquet file, or lacks manifest columns.
    """
    if not Path(path).exists():
        raise MissingInputError(f"{path} does not exist; run the ingest stage (`stego ingest`) first.")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise InvalidInputError(
            f"{path} is not a readable Parquet manifest ({str(error).splitlines()[0]}); "
            "rerun the ingest stage to regenerate it."
        ) from None
    missing = [name for name in MANIFEST_SCHEMA.names if name not in table.column_names]
    if missing:
        raise InvalidInputError(
            f"{path} is not an ingest manifest: columns {missing} are missing; "
            f"rerun the ingest stage to regenerate it."
        )
    return table.select(MANIFEST_SCHEMA.names).to_pandas()
