"""The files of a corpus folder, looked at safely: what each entry is, and opening one without blocking.

`classify_entry` sorts a folder's entries from `lstat`/`stat` alone (images, skipped entries,
quarantined ones), and `is_hidden` is the one rule for dot-files that ingest and predict
share. `open_regular` opens a file only after checking, on the descriptor it reads through
(opened non-blocking), that it is a regular file: a named pipe in a corpus would otherwise
block the reader forever. Every way a file is unusable raises `ImageDecodeError`, whose
`reason` is a short sentence fit for a quarantine list.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from stego_tasks.errors import InvalidInputError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
)

# Entry statuses of `classify_entry`.
IMAGE = "image"
SKIPPED = "skipped"
QUARANTINED = "quarantined"
HIDDEN_REASON = "hidden file"


class ImageDecodeError(InvalidInputError):
    """A file that cannot be used as an image or label.

    Attributes:
        path: the offending file.
        reason: one short sentence without the path, e.g. "empty file".
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def _os_reason(exc: OSError) -> str:
    """A quarantine reason for an OSError raised while opening or inspecting a file."""
    if isinstance(exc, FileNotFoundError):
        return "file does not exist (or is a broken symlink)"
    if isinstance(exc, PermissionError):
        return "file is not readable (permission denied)"
    if exc.errno == errno.ELOOP:
        return "symlink loop (the link leads back to itself)"
    return f"file cannot be read ({exc.strerror or type(exc).__name__})"


def open_regular(path: Path | str) -> BinaryIO:
    """Open a file for binary reading only if it is a regular file; never blocks.

    The file is opened non-blocking and checked with `fstat` on that descriptor, so a named
    pipe, socket or device (or a file swapped for one after a `stat`) is refused instead of
    waiting for a writer that never comes.

    Args:
        path: the file.

    Returns:
        An open binary file object (the caller closes it).

    Raises:
        ImageDecodeError: missing, unreadable, or not a regular file (see `.reason`).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ImageDecodeError(path, _os_reason(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "" if stat.S_ISDIR(mode) else f" ({_file_kind(mode)})"
            raise ImageDecodeError(path, f"not a regular file{kind}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_image_name(name: str | os.PathLike) -> bool:
    """Whether a file name has one of the corpus image extensions (case-insensitive).

    Args:
        name: file name or path.

    Returns:
        True for .jpg, .jpeg, .png, .bmp, .tif, .tiff and .webp.
    """
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def is_hidden(name: str | os.PathLike) -> bool:
    """Whether an entry is hidden: its name starts with a dot.

    That covers .DS_Store, AppleDouble files (._photo.jpg: resource forks that macOS
    writes beside every file on some volumes, which only look like images), .git and
    editors' swap files. Hidden entries are never inputs, neither of `ingest` nor of
    `stego predict`; ingest lists them as skipped.
    """
    return Path(name).name.startswith(".")


def classify_entry(path: Path | str) -> tuple[str, str]:
    """What an entry of an image folder is, decided from `lstat`/`stat` alone (never opened).

    Args:
        path: the entry (a file, folder, link, pipe, ...).

    Returns:
        (status, reason): (`IMAGE`, "") for a regular file (or a link to one) with an image
        extension, still to be decoded; (`SKIPPED`, why) for entries that are not meant
        as images: hidden entries, sub-folders, other extensions; (`QUARANTINED`, why)
        for entries that look like images but cannot be one: a folder, named pipe,
        socket or device named like an image, a broken link, a link loop, or anything
        `stat` fails on.
    """
    path = Path(path)
    name = path.name
    if is_hidden(name):
        return SKIPPED, HIDDEN_REASON
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            try:
                info = os.stat(path)
            except FileNotFoundError:
                return QUARANTINED, "broken symlink (its target does not exist)"
    except OSError as exc:
        return QUARANTINED, _os_reason(exc)
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        if is_image_name(name):
            return QUARANTINED, "a directory named like an image, not a regular file"
        return SKIPPED, "sub-folder (images must lie directly in the split folder)"
    if not stat.S_ISREG(mode):
        return QUARANTINED, f"{_file_kind(mode)}, not a regular file"
    if not is_image_name(name):
        suffix = Path(name).suffix or "no extension"
        return SKIPPED, (
            f"not an image file name ({suffix}); images end in "
            + ", ".join(sorted(IMAGE_EXTENSIONS))
        )
    return IMAGE, ""
