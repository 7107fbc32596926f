"""Stage `ingest`: scan a corpus, hash and probe every image, write a manifest.

Corpus layout (the STEGO custom-data layout)::

    ROOT/images/{train,val}/*.{jpg,jpeg,png,bmp,tif,tiff,webp}
    ROOT/labels/{train,val}/<same stem>.png      optional, single-channel class indices

Outputs:
- manifest (Parquet), one row per usable image: id, path, hash, width, height, mode,
  split, label_path, label_hash (see `MANIFEST_SCHEMA`).
- quarantine (CSV: path, split, reason), one row per unusable file. A bad file never
  fails the stage; it is listed with a one-sentence reason.

Ids are stable across runs: an unchanged file (same path and content hash) keeps its id,
anything new or changed gets the next unused id (kept in the Parquet metadata, so ids of
removed files are never reused). Both outputs are replaced atomically.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stego_tasks import atomic
from stego_tasks.images import (
    DEFAULT_MIN_SIZE,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    is_image_name,
    load_label,
    probe_image,
)

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
QUARANTINE_COLUMNS: tuple[str, ...] = ("path", "split", "reason")
_NEXT_ID_KEY = b"stego_tasks.next_id"
_LAYOUT = (
    "ROOT/images/{train,val}/*.{" + ",".join(sorted(e[1:] for e in IMAGE_EXTENSIONS)) + "}"
    " with optional ROOT/labels/{train,val}/<same stem>.png"
)


class EmptyCorpusError(ValueError):
    """The corpus root holds no image files where the layout expects them."""


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest run did.

    Attributes:
        n_images: usable images per split, e.g. {"train": 123, "val": 51}.
        n_quarantined: files listed in the quarantine CSV.
        n_new: usable images that got a new id (new or changed files).
        n_kept: usable images that kept their id from the previous manifest.
        n_removed: rows of the previous manifest that are gone (deleted, changed or now
            unusable).
    """

    n_images: dict[str, int]
    n_quarantined: int
    n_new: int
    n_kept: int
    n_removed: int


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large files never sit in memory.

    Args:
        path: file to hash.
        chunk_size: bytes per read.

    Returns:
        64-character lowercase hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


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
        raise ValueError(
            f"corpus path {rel_path!r} must be a non-empty relative posix path without "
            f"'..'; manifests written by ingest never contain such paths, so regenerate it."
        )
    real_root = Path(root).resolve()
    target = (real_root / pure).resolve()
    if not target.is_relative_to(real_root):
        raise ValueError(
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
        ValueError: the file lacks manifest columns.
    """
    table = pq.read_table(path)
    missing = [name for name in MANIFEST_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(
            f"{path} is not an ingest manifest: columns {missing} are missing; "
            f"rerun the ingest stage to regenerate it."
        )
    return table.select(MANIFEST_SCHEMA.names).to_pandas()


def _scan(root: Path) -> list[tuple[str, Path]]:
    """(split, path) of every file with an image extension, in a fixed order."""
    found = []
    for split in SPLITS:
        folder = root / "images" / split
        if folder.is_dir():
            names = sorted(e.name for e in os.scandir(folder) if is_image_name(e.name))
            found += [(split, folder / name) for name in names]
    return found


def _empty_corpus_error(root: Path) -> EmptyCorpusError:
    hint = ""
    if not root.is_dir():
        hint = " (the root folder does not exist)"
    elif (root / "images").is_dir() and any(
        is_image_name(e.name) for e in os.scandir(root / "images")
    ):
        hint = f" (images lie directly in {root / 'images'}; move them into images/train)"
    return EmptyCorpusError(
        f"no images found in {root / 'images' / 'train'} or {root / 'images' / 'val'}"
        f"{hint}; expected the layout {_LAYOUT}."
    )


def _check_inside(real_root: Path, path: Path, what: str) -> None:
    """Refuse files whose real location (symlinks followed) is outside the corpus."""
    if not path.resolve().is_relative_to(real_root):
        raise ImageDecodeError(
            path, f"{what} is a symlink resolving outside the corpus root (not followed)"
        )


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates
        return False
    return True


def _hash(path: Path) -> str:
    try:
        return sha256_file(path)
    except PermissionError:
        raise ImageDecodeError(path, "file is not readable (permission denied)") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"file cannot be read ({exc.strerror})") from None


def _label_facts(root: Path, real_root: Path, split: str, image: Path) -> tuple[str, str]:
    """(label_path, label_hash) for an image, ("", "") when it has no label file."""
    label = root / "labels" / split / (image.stem + LABEL_SUFFIX)
    if not label.exists() and not label.is_symlink():
        return "", ""
    rel = label.relative_to(root).as_posix()
    try:
        _check_inside(real_root, label, "label")
        return rel, _hash(label)
    except ImageDecodeError as exc:
        raise ImageDecodeError(image, f"label {rel}: {exc.reason}") from None


def _check_label(root: Path, image: Path, label_rel: str, width: int, height: int) -> None:
    """Decode the label and compare its size with the image's."""
    try:
        mask = load_label(root / label_rel)
    except ImageDecodeError as exc:
        raise ImageDecodeError(image, f"label {label_rel}: {exc.reason}") from None
    if mask.shape != (height, width):
        raise ImageDecodeError(
            image,
            f"label {label_rel} is {mask.shape[1]}x{mask.shape[0]} px but the image is "
            f"{width}x{height} px",
        )


def _inspect(root: Path, real_root: Path, split: str, path: Path, old: dict, min_size: int) -> dict:
    """One manifest row (without id) for a usable image; ImageDecodeError otherwise.

    `old` maps (path, hash) to the previous run's rows: an image whose file and label are
    both unchanged is not decoded again.
    """
    rel = path.relative_to(root).as_posix()
    _check_inside(real_root, path, "file")
    digest = _hash(path) if path.is_file() else ""
    label_rel, label_hash = _label_facts(root, real_root, split, path)
    prev = old.get((rel, digest))
    unchanged = prev and (prev["label_path"], prev["label_hash"]) == (label_rel, label_hash)
    if unchanged and min(prev["width"], prev["height"]) >= min_size:
        return {k: (int(v) if k in ("width", "height") else v) for k, v in prev.items()}
    info = probe_image(path, min_size=min_size)
    digest = digest or _hash(path)
    if label_rel:
        _check_label(root, path, label_rel, info.width, info.height)
    return {
        "path": rel,
        "hash": digest,
        "width": info.width,
        "height": info.height,
        "mode": info.mode,
        "split": split,
        "label_path": label_rel,
        "label_hash": label_hash,
    }


def _read_previous(manifest_path: Path) -> tuple[dict, int]:
    """Rows of an existing manifest keyed by (path, hash), and the next free id."""
    if not manifest_path.exists():
        return {}, 0
    try:
        table = pq.read_table(manifest_path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(
            f"the existing manifest {manifest_path} cannot be read ({exc}); delete it to "
            f"ingest from scratch (ids will then be renumbered)."
        ) from exc
    rows = read_manifest(manifest_path).to_dict("records")
    # The stored counter also covers ids of files removed since; max + 1 is the fallback
    # for manifests written by something else.
    candidates = [int(r["id"]) + 1 for r in rows] + [0]
    stored = (table.schema.metadata or {}).get(_NEXT_ID_KEY)
    if stored:
        candidates.append(int(stored))
    return {(r["path"], r["hash"]): r for r in rows}, max(candidates)


def _write_outputs(
    rows: list[dict],
    rejected: list[tuple[str, str, str]],
    next_id: int,
    manifest_path: Path,
    quarantine_path: Path,
) -> None:
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    table = table.replace_schema_metadata({_NEXT_ID_KEY: str(next_id).encode()})
    with atomic.atomic_path(manifest_path) as tmp:
        pq.write_table(table, tmp)
    with atomic.atomic_path(quarantine_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(QUARANTINE_COLUMNS)
        writer.writerows(rejected)


def ingest(
    corpus_root: Path,
    manifest_path: Path,
    quarantine_path: Path,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
) -> IngestSummary:
    """Scan, hash and probe a corpus; write the manifest and the quarantine list.

    Quarantined (listed with a reason, never fatal): undecodable, truncated, empty or
    non-image files; images under `min_size`; decompression bombs; unreadable files;
    symlinks resolving outside the corpus root; duplicates of an earlier image (same
    content; the first in split-then-name order is kept); unreadable labels and labels
    whose size differs from their image. Label values are checked by `validate`.

    Args:
        corpus_root: folder with `images/{train,val}` (and optionally `labels/...`).
        manifest_path: Parquet output; if it exists, its ids are carried over.
        quarantine_path: CSV output with columns path, split, reason.
        min_size: smallest allowed image width and height in pixels.

    Returns:
        IngestSummary of this run.

    Raises:
        EmptyCorpusError: no file with an image extension under `images/{train,val}`.
    """
    root = Path(corpus_root)
    candidates = _scan(root)
    if not candidates:
        raise _empty_corpus_error(root)
    real_root = root.resolve()
    old, next_id = _read_previous(Path(manifest_path))

    rows: list[dict] = []
    rejected: list[tuple[str, str, str]] = []
    first_of_hash: dict[str, str] = {}
    n_kept = 0
    for split, path in candidates:
        rel = path.relative_to(root).as_posix()
        if not _is_utf8(rel):
            # Parquet and CSV need UTF-8; list the name with its raw bytes escaped.
            shown = os.fsencode(rel).decode("utf-8", "backslashreplace")
            rejected.append((shown, split, "file name is not valid UTF-8; rename it"))
            continue
        try:
            row = _inspect(root, real_root, split, path, old, min_size)
        except ImageDecodeError as exc:
            rejected.append((rel, split, exc.reason))
            continue
        if row["hash"] in first_of_hash:
            rejected.append((rel, split, f"duplicate of {first_of_hash[row['hash']]}"))
            continue
        first_of_hash[row["hash"]] = rel
        prev = old.get((rel, row["hash"]))
        if prev is not None:
            row["id"] = int(prev["id"])
            n_kept += 1
        else:
            row["id"] = next_id
            next_id += 1
        rows.append(row)

    _write_outputs(rows, rejected, next_id, Path(manifest_path), Path(quarantine_path))
    return IngestSummary(
        n_images={s: sum(r["split"] == s for r in rows) for s in SPLITS},
        n_quarantined=len(rejected),
        n_new=len(rows) - n_kept,
        n_kept=n_kept,
        n_removed=len(old) - n_kept,
    )
