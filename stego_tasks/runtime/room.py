"""Running out of room (a full disk, a file-size limit, a quota) as one sentence instead of a traceback.

A write that fails with ENOSPC, EFBIG or EDQUOT deep inside zarr, PIL, pyarrow or torch is
turned into `OutOfRoomError`: which artifact, how much was being written, what is kept,
and that a rerun resumes. Every artifact is written to a temporary path and renamed into
place (`atomic`), and the features store marks a chunk done only after its data, so what
was completed before the failure is always intact.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from stego_tasks.errors import StegoError

ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# Some libraries re-raise an OSError as their own type with only the text left.
_ROOM_TEXTS = ("no space left on device", "file too large", "disk quota exceeded")


class OutOfRoomError(StegoError, ValueError):
    """A write ran out of room (disk full, file-size limit or quota); the message says what to do."""


def is_out_of_room(error: BaseException | None) -> bool:
    """Whether `error`, or an exception it was raised from, is a full disk, a file-size limit or a quota."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OutOfRoomError):
            return False  # already one sentence
        if isinstance(error, OSError) and error.errno in ROOM_ERRNOS:
            return True
        if any(text in str(error).lower() for text in _ROOM_TEXTS):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def room_reason(error: BaseException) -> str:
    """The system's words for the failure, e.g. "No space left on device"."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in ROOM_ERRNOS:
            return error.strerror or errno.errorcode.get(error.errno, "out of room")
        error = error.__cause__ or error.__context__
    return "out of room"


def size_text(n_bytes: int) -> str:
    """A byte count for people: "812 B", "4.2 MiB", "1.5 GiB"."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@contextmanager
def room_guard(what: str, n_bytes: int | Callable[[], int], kept: str, fix: str) -> Iterator[None]:
    """Turn an out-of-room failure inside the block into one `OutOfRoomError` sentence.

    Args:
        what: the artifact being written, e.g. "chunk 3 of val into artifacts/features.zarr".
        n_bytes: how much was being written, or a function that measures it after the failure.
        kept: what survives, e.g. "the 3 chunks written before it are kept".
        fix: the command that resumes, e.g. "rerun `stego extract` to resume".

    Raises:
        OutOfRoomError: the block failed for lack of room; any other error passes unchanged.
    """
    try:
        yield
    except Exception as error:
        if not is_out_of_room(error):
            raise
        try:
            size = n_bytes() if callable(n_bytes) else n_bytes
        except OSError:
            size = 0
        raise out_of_room(error, what, size, kept, fix) from None


def out_of_room(error: BaseException, what: str, size: int, kept: str, fix: str) -> OutOfRoomError:
    """The one-sentence `OutOfRoomError` for `error` (see `room_guard` for the arguments)."""
    amount = f"{size_text(size)} being written: " if size > 0 else ""
    return OutOfRoomError(
        f"ran out of room writing {what} ({amount}{room_reason(error)}); {kept}; "
        f"free space (or raise the file-size limit or quota) and {fix}."
    )
