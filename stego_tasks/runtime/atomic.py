"""Crash-safe writes: everything goes to a temporary sibling, then is renamed into place.

A stage killed half-way therefore never leaves a truncated artifact that DVC could cache.
`read_json_object` (and `read_json`, `read_csv_rows`) read back the records the stages write, with one
sentence on damage.

Nothing is replaced that a stego command did not write: a file may replace a file (a
rerun), and a folder may replace only a folder of the same kind that this project wrote
(a Zarr store, evaluate's overlay panels, a model folder) or an empty one. An
output path naming any other existing folder is refused with one sentence, before any work.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stego_tasks.errors import InvalidInputError
from stego_tasks.runtime.room import room_guard

# evaluate's overlay panels: 0000.png, 0001.png, ... and nothing else.
_OVERLAY_PANEL = re.compile(r"\d{4}\.png")
# Zarr's own metadata file at the top of every (v3) store.
ZARR_METADATA = "zarr.json"
_KIND_WORDS = {
    "empty": "an empty folder",
    "zarr": "a Zarr store",
    "overlays": "overlay panels (NNNN.png)",
}
# Folder kinds told by the files in them, registered by the module that owns those files
# (`register_folder_kind`; method/model.py registers the model folder), so this module
# knows no artifact's file names.
_KIND_FILES: dict[str, tuple[str, ...]] = {}
# A folder output other than those above says what it is in this file: {"kind": "<kind>"}.
MARKER = ".stego-artifact.json"


def register_folder_kind(kind: str, files: tuple[str, ...], words: str) -> None:
    """Let `folder_kind` call a folder holding any of `files` `kind`; `words` names it in errors."""
    _KIND_FILES[kind] = files
    _KIND_WORDS[kind] = words


def mark_folder(folder: Path, kind: str) -> None:
    """Write the marker that lets a later run of the same command replace `folder` (`folder_kind` reads it)."""
    write_json(Path(folder) / MARKER, {"kind": kind})


def folder_kind(path: Path) -> str | None:
    """What a folder holds, as far as replacing it goes.

    Args:
        path: an existing folder.

    Returns:
        "empty", "zarr" (a Zarr store: its `zarr.json`), a registered kind (the model
        folder: `register_folder_kind`), "overlays" (evaluate's numbered PNG panels), the kind named in a `MARKER` file
        (e.g. "gallery", "export"), or None for anything else: a folder stego did not write.
    """
    if (path / ZARR_METADATA).is_file():
        return "zarr"
    if (path / MARKER).is_file():
        try:
            kind = json.loads((path / MARKER).read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if isinstance(kind, str) and kind:
            return kind
    for kind, files in _KIND_FILES.items():
        if any((path / name).is_file() for name in files):
            return kind
    entries = list(path.iterdir())
    if not entries:
        return "empty"
    if all(_OVERLAY_PANEL.fullmatch(entry.name) and entry.is_file() for entry in entries):
        return "overlays"
    return None


def check_folder_output(path: str | Path, kinds: tuple[str, ...], what: str) -> None:
    """Refuse a folder output updated in place (features store, model folder) that holds something else.

    Args:
        path: the output folder.
        kinds: `folder_kind` values it may already have (an empty folder always may).
        what: the output in words, e.g. "a features store".

    Raises:
        ValueError: `path` is a file, or a folder of another kind (one sentence).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{path} is a file, but {what} is a folder; pass another path (or move the file away).")
    if path.is_dir() and folder_kind(path) not in (*kinds, "empty"):
        raise InvalidInputError(
            f"{path} is an existing folder that does not hold {what}; refusing to write into it: pass a new "
            f"path, or that of {what} stego wrote."
        )


def _words(kind: str) -> str:
    return _KIND_WORDS.get(kind, "the output of a stego command")


def _refuse_existing(target: Path) -> None:
    """Raise ValueError when `target` is a folder (or a link to one) no stego output may replace."""
    if target.is_symlink() and target.is_dir():
        raise InvalidInputError(
            f"{target} is a link to the folder {os.path.realpath(target)}; refusing to replace it: "
            "pass a path that does not exist yet, or a file."
        )
    if target.is_dir() and folder_kind(target) is None:
        raise InvalidInputError(
            f"{target} is an existing folder that stego did not write; refusing to replace it with this output: "
            "pass a new path (e.g. a file name inside that folder), or move the folder away first."
        )


def _refuse_mismatch(target: Path, tmp: Path) -> None:
    """Raise ValueError when the new output `tmp` is not the kind of thing `target` holds."""
    if target.is_symlink() and tmp.is_dir():
        raise InvalidInputError(f"{target} is a link, not a folder; refusing to replace it with a folder: pass another path.")
    if target.is_symlink() or not target.exists():
        return  # nothing there, or a link (to a file) that the rename replaces, not follows
    if target.is_dir() and not tmp.is_dir():
        raise InvalidInputError(
            f"{target} is a folder ({_words(folder_kind(target) or '')}) but this output is a file; refusing to "
            "replace the folder: pass a file path (e.g. a file name inside that folder), or remove the folder yourself."
        )
    if tmp.is_dir() and not target.is_dir():
        raise InvalidInputError(
            f"{target} is an existing file but this output is a folder; refusing to replace the file: "
            "pass another path, or remove the file yourself."
        )
    if tmp.is_dir():
        old, new = folder_kind(target), folder_kind(tmp)
        if not (old == "empty" or old == new or (old == "overlays" and new == "empty")):
            raise InvalidInputError(
                f"{target} holds {_words(old or '')}, which this output ({_words(new or 'empty')}) would replace; "
                "refusing: pass another path, or remove it yourself."
            )


def make_parent(target: Path) -> None:
    """Create the folder `target` goes in; one sentence (ValueError) when a file stands in the way."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [target.parent, *target.parent.parents] if p.exists() and not p.is_dir()), target.parent)
        raise InvalidInputError(
            f"cannot create the folder {target.parent} for {target}: {blocker} is a file; pass another path."
        ) from None


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success.

    Works for files and for directories. An existing file is replaced by a file; an
    existing folder only by a folder of the same kind that stego wrote (`folder_kind`) or
    when it is empty. An existing folder stego did not write, or a link to a folder, is
    refused before the caller does any work; a file/folder mismatch is refused after it,
    and in both cases the existing path is left exactly as it was. On an exception the
    temporary path is removed and `target` is left untouched.

    Args:
        target: final path of the artifact.
        suffix: suffix of the temporary name (some writers dispatch on it, e.g. ".png").

    Yields:
        The temporary path to write to (it does not exist yet).

    Raises:
        ValueError: one sentence, when `target` is not this output's to replace.
    """
    target = Path(target)
    _refuse_existing(target)
    make_parent(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    kept = f"every other artifact{' and the previous ' + target.name if target.exists() else ''} is kept unchanged"
    try:
        with room_guard(str(target), lambda: _bytes_under(tmp), kept,
                        "rerun the same command (or `dvc repro`), which starts from what is already written"):
            yield tmp
            if tmp.is_file():
                # Flush to disk before the rename, so a power cut cannot leave an empty file.
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
            _refuse_mismatch(target, tmp)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _bytes_under(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (0 when absent)."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def write_text(target: str | Path, text: str) -> None:
    """Atomically write `text` (UTF-8) to `target`."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, payload: Any) -> None:
    """Atomically write `payload` as indented, key-sorted JSON (byte-stable for equal data)."""
    write_text(target, json.dumps(payload, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: Path, redo: str = "rerun `dvc repro` to rewrite it") -> Any:
    """The JSON a stage wrote to `path`, or None when there is no such file.

    The one reader of the report's inputs (the report and its sections): a missing file is
    the section's to explain, a damaged one is refused in one sentence, never skipped.

    Args:
        path: a JSON file that may not exist yet.
        redo: what to do about a damaged file, for the message.

    Raises:
        ValueError: not UTF-8 JSON (one sentence naming the file and `redo`).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{path} is not valid JSON ({error}); {redo}.") from None


def read_csv_rows(path: Path, redo: str = "rerun `dvc repro` to rewrite it") -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a CSV a stage wrote to `path` (the report's loss log, quarantine list).

    Like `read_json`, damage is refused in one sentence instead of skipped.

    Args:
        path: an existing CSV file.
        redo: what to do about a damaged file, for the message.

    Returns:
        (column names, one {column: cell} per row); ([], []) for an empty file.

    Raises:
        ValueError: not UTF-8 text, or not CSV (a NUL byte, say).
    """
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (UnicodeDecodeError, csv.Error) as error:
        raise InvalidInputError(f"{path} is not a readable CSV file ({error}); {redo}.") from None


def read_json_object(path: Path, writer: str, redo: str) -> dict:
    """The JSON object a stage wrote to `path`; damage gets one sentence naming the fix.

    Args:
        path: an existing JSON file (model.json, assignment.json, ...).
        writer: what writes it, e.g. "train", for the message.
        redo: what to do about a damaged file, e.g. "rerun `stego train` to write the model again".

    Returns:
        The decoded mapping.

    Raises:
        ValueError: not UTF-8 JSON, or JSON that is not an object.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"{path}: not valid JSON ({error}); {redo}.") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: holds a JSON {type(data).__name__}, not the mapping {writer} writes; {redo}.")
    return data
