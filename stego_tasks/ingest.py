"""Stage `ingest`: scan a corpus, hash and probe every image, write a manifest.

Corpus layout (the STEGO custom-data layout)::

    ROOT/images/{train,val}/*.{jpg,jpeg,png,bmp,tif,tiff,webp}
    ROOT/labels/{train,val}/<same stem>.png      optional, single-channel class indices

Outputs:
- manifest (Parquet), one row per usable image: id, path, hash, width, height, mode,
  split, label_path, label_hash (see `MANIFEST_SCHEMA`).
- quarantine (CSV: path, split, reason), one row per entry of the scanned folders that
  did not become a manifest row. A bad file never fails the stage; it is listed with a
  one-sentence reason. Entries that are not meant as images (hidden files such as
  .DS_Store or ._x.jpg, sub-folders, other file types, labels without an image) are
  listed too, with a reason starting "skipped: "; every other row is quarantined.
  Nothing in the corpus is ever opened unless `stat` says it is a regular file (a named
  pipe would block the scan forever), and the stage ends with one summary line
  ("ingest: N images ingested, M quarantined, K skipped; see <quarantine csv>").

Ids are stable across runs: an unchanged file (same path and content hash) keeps its id,
anything new or changed gets the next unused id (kept in the Parquet metadata, so ids of
removed files are never reused). Both outputs are replaced atomically.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stego_tasks.data.corpus_files import (
    IMAGE,
    classify_entry,
    is_image_name,
)
from stego_tasks.data.corpus_layout import (
    SKIPPED_PREFIX,
    empty_corpus_error,
    is_utf8,
    labels_by_stem,
    scan,
    shown_path,
    unused_labels,
)
from stego_tasks.data.images import (
    DEFAULT_MIN_SIZE,
    ImageDecodeError,
    label_fits_uint8,
    load_label,
    probe_image,
)
from stego_tasks.data.manifest import (
    LABEL_SUFFIX,
    MANIFEST_SCHEMA,
    SPLITS,
    read_manifest,
    sha256_file,
)
from stego_tasks.errors import InvalidInputError
from stego_tasks.runtime import atomic

log = logging.getLogger("stego")

QUARANTINE_COLUMNS: tuple[str, ...] = ("path", "split", "reason")
_NEXT_ID_KEY = b"stego_tasks.next_id"
# The acceptance rules a manifest was written under. Rows of a manifest written under other
# (older) rules are decoded and checked again instead of being trusted as unchanged; they
# keep their ids. Bump when a check is added.
_RULES_KEY = b"stego_tasks.ingest_rules"
_RULES = b"2"


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
        n_skipped: entries listed as skipped (hidden files, sub-folders, other file
            types, labels without an image); not counted in `n_quarantined`.
    """

    n_images: dict[str, int]
    n_quarantined: int
    n_new: int
    n_kept: int
    n_removed: int
    n_skipped: int = 0


def _check_inside(real_root: Path, path: Path, what: str) -> None:
    """Refuse files whose real location (symlinks followed) is outside the corpus."""
    if not path.resolve().is_relative_to(real_root):
        raise ImageDecodeError(
            path, f"{what} is a symlink resolving outside the corpus root (not followed)"
        )


def _hash(path: Path) -> str:
    try:
        return sha256_file(path)
    except PermissionError:
        raise ImageDecodeError(path, "file is not readable (permission denied)") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"file cannot be read ({exc.strerror})") from None


def _label_facts(root: Path, real_root: Path, split: str, image: Path, names: dict[str, list[str]]) -> tuple[str, str]:
    """(label_path, label_hash) for an image, ("", "") when it has no label file.

    `names` maps stems to the entries of `labels/<split>`. A label under another name than
    <stem>.png (x.jpg, x.PNG) is refused rather than ignored: ignoring it would train the
    image as unlabelled without a word.
    """
    candidates = names.get(image.stem, [])
    label = root / "labels" / split / (image.stem + LABEL_SUFFIX)
    if label.name not in candidates:
        others = sorted(n for n in candidates if is_image_name(n))
        if not others:
            return "", ""
        other = f"labels/{split}/{others[0]}"
        suffix = Path(others[0]).suffix.lower()
        if suffix in (".jpg", ".jpeg"):
            reason = "labels must be lossless PNG: JPEG compression changes class ids"
        elif suffix == LABEL_SUFFIX:
            reason = f"labels must be named {label.name} (lower-case .png)"
        else:
            reason = f"labels must be lossless PNG files named {label.name}"
        raise ImageDecodeError(image, f"label {other}: {reason}")
    rel = label.relative_to(root).as_posix()
    status, reason = classify_entry(label)
    if status != IMAGE:
        raise ImageDecodeError(image, f"label {rel}: {reason}")
    try:
        _check_inside(real_root, label, "label")
        return rel, _hash(label)
    except ImageDecodeError as exc:
        raise ImageDecodeError(image, f"label {rel}: {exc.reason}") from None


def _check_label(root: Path, image: Path, label_rel: str, width: int, height: int) -> None:
    """Decode the label, check that it holds uint8 class ids, and compare its size with the image's."""
    try:
        mask = load_label(root / label_rel)
    except ImageDecodeError as exc:
        raise ImageDecodeError(image, f"label {label_rel}: {exc.reason}") from None
    too_wide = label_fits_uint8(mask)
    if too_wide:
        raise ImageDecodeError(image, f"label {label_rel}: {too_wide}")
    if mask.shape != (height, width):
        raise ImageDecodeError(
            image,
            f"label {label_rel} is {mask.shape[1]}x{mask.shape[0]} px but the image is "
            f"{width}x{height} px",
        )


def _inspect(
    root: Path, real_root: Path, split: str, path: Path, old: dict, min_size: int, names: dict[str, list[str]]
) -> dict:
    """One manifest row (without id) for a usable image; ImageDecodeError otherwise.

    `old` maps (path, hash) to the previous run's rows: an image whose file and label are
    both unchanged is not decoded again.
    """
    rel = path.relative_to(root).as_posix()
    _check_inside(real_root, path, "file")
    digest = _hash(path)
    label_rel, label_hash = _label_facts(root, real_root, split, path, names)
    prev = old.get((rel, digest))
    unchanged = prev and (prev["label_path"], prev["label_hash"]) == (label_rel, label_hash)
    if unchanged and min(prev["width"], prev["height"]) >= min_size:
        return {k: (int(v) if k in ("width", "height") else v) for k, v in prev.items()}
    info = probe_image(path, min_size=min_size)
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


def _ambiguous_stems(
    candidates: list[tuple[str, Path]], label_names: dict[str, dict[str, list[str]]]
) -> dict[tuple[str, str], str]:
    """Quarantine reasons for images that share a stem with another image of their split.

    A label is paired with its image by stem, and `stego predict` names its outputs by stem,
    so dup.png and dup.jpg cannot both be used: which one labels/train/dup.png belongs to
    is unknowable, and guessing would train (or score) a mask against the wrong picture.
    """
    by_stem: dict[tuple[str, str], list[str]] = {}
    for split, path in candidates:
        by_stem.setdefault((split, path.stem), []).append(path.name)
    reasons = {}
    for (split, stem), names in by_stem.items():
        if len(names) < 2:
            continue
        labels = [n for n in label_names[split].get(stem, []) if is_image_name(n)]
        label = f", and the label labels/{split}/{labels[0]} could belong to any of them" if labels else ""
        reasons[split, stem] = (
            f"ambiguous: {len(names)} images in images/{split} share the stem '{stem}' ({', '.join(sorted(names))}){label}; "
            "keep one of them, or rename the others (with their own labels)"
        )
    return reasons


def _read_previous(manifest_path: Path) -> tuple[dict, int, bool]:
    """Rows of an existing manifest keyed by (path, hash), the next free id, and whether
    its rows were accepted under the current rules (so unchanged ones need no new check)."""
    if not manifest_path.exists():
        return {}, 0, True
    if manifest_path.is_dir():  # pyarrow would read it as a dataset: it is no earlier manifest to delete
        raise InvalidInputError(
            f"{manifest_path} is a folder but the manifest is a file; refusing to write over the folder: pass a file "
            "path (e.g. a file name inside that folder), or move the folder away first."
        )
    try:
        table = pq.read_table(manifest_path)
    except (OSError, pa.ArrowException) as exc:
        raise InvalidInputError(
            f"the existing manifest {manifest_path} cannot be read ({exc}); delete it to "
            f"ingest from scratch (ids will then be renumbered)."
        ) from exc
    rows = read_manifest(manifest_path).to_dict("records")
    # The stored counter also covers ids of files removed since; max + 1 is the fallback
    # for manifests written by something else.
    candidates = [int(r["id"]) + 1 for r in rows] + [0]
    metadata = table.schema.metadata or {}
    stored = metadata.get(_NEXT_ID_KEY)
    if stored:
        candidates.append(int(stored))
    return {(r["path"], r["hash"]): r for r in rows}, max(candidates), metadata.get(_RULES_KEY) == _RULES


def _write_outputs(
    rows: list[dict],
    rejected: list[tuple[str, str, str]],
    next_id: int,
    manifest_path: Path,
    quarantine_path: Path,
) -> None:
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    table = table.replace_schema_metadata({_NEXT_ID_KEY: str(next_id).encode(), _RULES_KEY: _RULES})
    with atomic.atomic_path(manifest_path) as tmp:
        pq.write_table(table, tmp)
    with atomic.atomic_path(quarantine_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(QUARANTINE_COLUMNS)
        writer.writerows(rejected)


def _check_candidate(
    root: Path, real_root: Path, split: str, path: Path, ambiguity: str | None, trusted_old: dict,
    min_size: int, labels: dict[str, list[str]],
) -> tuple[dict | None, tuple[str, str, str] | None]:
    """One candidate image: (its manifest row, None), or (None, its quarantine row: path, split, reason).

    `ambiguity` is the reason when another image of the split shares its stem (else None);
    `trusted_old` the previous manifest's rows whose probes may be reused (empty if untrusted).
    """
    rel = path.relative_to(root).as_posix()
    if ambiguity is not None:
        return None, (rel, split, ambiguity)
    if not is_utf8(rel):
        # Parquet and CSV need UTF-8; list the name with its raw bytes escaped.
        return None, (shown_path(rel), split, "file name is not valid UTF-8; rename it")
    try:
        return _inspect(root, real_root, split, path, trusted_old, min_size, labels), None
    except ImageDecodeError as exc:
        return None, (rel, split, exc.reason)
    except OSError as exc:  # anything the checks above did not foresee: listed, never fatal
        return None, (rel, split, f"file cannot be read ({exc.strerror or type(exc).__name__})")


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
    symlinks resolving outside the corpus root, broken symlinks and symlink loops;
    images sharing a stem with another image of their split (dup.png and dup.jpg: a
    label, and predict's outputs, are matched by stem, so neither can be used);
    folders, named pipes, sockets and devices named like images; duplicates of an
    earlier image (same content; the first in split-then-name order is kept);
    unreadable labels, labels that are not PNG (JPEG changes class ids), labels with
    values above 255 or colour/alpha channels, and labels whose size differs from their
    image. Skipped (listed with a "skipped: " reason): hidden entries, sub-folders,
    other file types, entries of images/ beside the split folders, and labels without
    an image. Label values against n_classes are checked by `validate`.

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
    candidates, listed = scan(root)
    if not candidates:
        raise empty_corpus_error(root)
    old, next_id, trusted = _read_previous(Path(manifest_path))
    label_names = labels_by_stem(root)
    rows, rejected, used_labels, n_kept, next_id = _checked_rows(
        root, candidates, label_names, old, old if trusted else {}, next_id, min_size
    )

    quarantined = rejected + [row for row in listed if not row[2].startswith(SKIPPED_PREFIX)]
    skipped = [row for row in listed if row[2].startswith(SKIPPED_PREFIX)] + unused_labels(root, used_labels)
    _write_outputs(rows, quarantined + skipped, next_id, Path(manifest_path), Path(quarantine_path))
    log.info(
        "ingest: %d images ingested, %d quarantined, %d skipped; see %s",
        len(rows), len(quarantined), len(skipped), quarantine_path,
    )
    return IngestSummary(
        n_images={s: sum(r["split"] == s for r in rows) for s in SPLITS}, n_quarantined=len(quarantined),
        n_new=len(rows) - n_kept, n_kept=n_kept, n_removed=len(old) - n_kept, n_skipped=len(skipped),
    )


def _checked_rows(
    root: Path,
    candidates: list[tuple[str, Path]],
    label_names: dict[str, dict[str, list[str]]],
    old: dict,
    trusted_old: dict,
    next_id: int,
    min_size: int,
) -> tuple[list[dict], list[tuple[str, str, str]], set[str], int, int]:
    """Check every candidate image in order and give each kept one its id.

    An image already in the previous manifest (same path and content) keeps its id; a new
    one takes the next free id; a later copy of an earlier image's content is rejected.

    Returns:
        (manifest rows, rejections (path, split, reason), labels accounted for by an image,
        number of ids kept, next free id).
    """
    ambiguous = _ambiguous_stems(candidates, label_names)
    real_root = root.resolve()
    rows: list[dict] = []
    rejected: list[tuple[str, str, str]] = []
    first_of_hash: dict[str, str] = {}
    used_labels: set[str] = set()
    n_kept = 0
    for split, path in candidates:
        rel = path.relative_to(root).as_posix()
        # Whatever its fate, the image's label is accounted for by the image's row.
        used_labels.update(f"labels/{split}/{n}" for n in label_names[split].get(path.stem, []) if is_image_name(n))
        row, rejection = _check_candidate(root, real_root, split, path, ambiguous.get((split, path.stem)),
                                          trusted_old, min_size, label_names[split])
        if rejection is not None:
            rejected.append(rejection)
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
    return rows, rejected, used_labels, n_kept, next_id
