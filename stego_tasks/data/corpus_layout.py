"""The corpus layout ingest reads, ``ROOT/images/{train,val}`` with optional ``ROOT/labels/{train,val}``:
every entry of those folders sorted into image candidates and listed rows, from `stat` alone.

Rows for entries that were never meant as images start with `SKIPPED_PREFIX`; the others
are quarantined. Names that are not valid UTF-8 are shown escaped, since the manifest
(Parquet) and the quarantine list (CSV) hold UTF-8 only.
"""

from __future__ import annotations

import os
from pathlib import Path

from stego_tasks.data.corpus_files import (
    IMAGE,
    IMAGE_EXTENSIONS,
    QUARANTINED,
    SKIPPED,
    classify_entry,
    is_image_name,
)
from stego_tasks.data.manifest import SPLITS
from stego_tasks.errors import InvalidInputError

# Reasons of rows for entries that were never meant as images (not quarantined) start so.
SKIPPED_PREFIX = "skipped: "
LAYOUT = (
    "ROOT/images/{train,val}/*.{" + ",".join(sorted(e[1:] for e in IMAGE_EXTENSIONS)) + "}"
    " with optional ROOT/labels/{train,val}/<same stem>.png"
)


class EmptyCorpusError(InvalidInputError):
    """The corpus root holds no image files where the layout expects them."""


def scan(root: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str, str]]]:
    """Sort the entries of `images/{train,val}` (from `stat` alone, nothing is opened).

    Returns:
        (split, path) of every image candidate in a fixed order, and (path, split,
        reason) rows for every other entry: quarantined ones (reason as is) and skipped
        ones (reason prefixed `SKIPPED_PREFIX`), including entries of `images/` beside
        the split folders.
    """
    found: list[tuple[str, Path]] = []
    listed: list[tuple[str, str, str]] = []
    for split in SPLITS:
        folder = root / "images" / split
        if folder.is_dir():
            for name in list_dir(folder):
                status, reason = classify_entry(folder / name)
                if status == IMAGE:
                    found.append((split, folder / name))
                else:
                    listed.append(listed_row(root, folder / name, split, status, reason))
    if (root / "images").is_dir() and found:
        for name in list_dir(root / "images"):
            if name not in SPLITS:
                listed.append(listed_row(root, root / "images" / name, "", SKIPPED, "not in images/train or images/val"))
    return found, listed


def list_dir(folder: Path) -> list[str]:
    """Sorted entry names of a folder; a folder that cannot be listed says so in one sentence."""
    try:
        return sorted(entry.name for entry in os.scandir(folder))
    except OSError as exc:
        raise InvalidInputError(
            f"{folder} cannot be listed ({exc.strerror or type(exc).__name__}); make it readable and rerun ingest."
        ) from None


def shown_path(rel: str) -> str:
    """A path as the CSV can hold it: undecodable bytes escaped (Parquet and CSV need UTF-8)."""
    return rel if is_utf8(rel) else os.fsencode(rel).decode("utf-8", "backslashreplace")


def listed_row(root: Path, path: Path, split: str, status: str, reason: str) -> tuple[str, str, str]:
    shown = shown_path(path.relative_to(root).as_posix())
    return shown, split, reason if status == QUARANTINED else SKIPPED_PREFIX + reason


def unused_labels(root: Path, used: set[str]) -> list[tuple[str, str, str]]:
    """Skipped rows for entries of `labels/{train,val}` that no image uses."""
    rows = []
    for split in SPLITS:
        folder = root / "labels" / split
        if not folder.is_dir():
            continue
        for name in list_dir(folder):
            rel = f"labels/{split}/{name}"
            if rel in used:
                continue
            status, reason = classify_entry(folder / name)
            if status == IMAGE:
                reason = f"label without an image named {Path(name).stem}.* in images/{split}"
            rows.append((shown_path(rel), split, SKIPPED_PREFIX + reason))
    return rows


def empty_corpus_error(root: Path) -> EmptyCorpusError:
    hint = ""
    if not root.is_dir():
        hint = " (the root folder does not exist)"
    elif (root / "images").is_dir() and any(
        is_image_name(e.name) for e in os.scandir(root / "images")
    ):
        hint = f" (images lie directly in {root / 'images'}; move them into images/train)"
    return EmptyCorpusError(
        f"no images found in {root / 'images' / 'train'} or {root / 'images' / 'val'}"
        f"{hint}; expected the layout {LAYOUT}."
    )


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates
        return False
    return True


def labels_by_stem(root: Path) -> dict[str, dict[str, list[str]]]:
    """Entry names of `labels/{split}` by stem, per split (empty where there is no folder)."""
    names: dict[str, dict[str, list[str]]] = {}
    for split in SPLITS:
        folder = root / "labels" / split
        by_stem: dict[str, list[str]] = {}
        for name in list_dir(folder) if folder.is_dir() else []:
            by_stem.setdefault(Path(name).stem, []).append(name)
        names[split] = by_stem
    return names
