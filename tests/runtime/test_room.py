"""Tests for `runtime.room`: running out of room as one sentence instead of a traceback.

They prove which failures count as out of room (the three errnos, anywhere in the cause chain,
or only the system's words when a library kept nothing else), that an `OutOfRoomError` is never
wrapped twice, how the byte count is shown, and that the sentence names what, how much, why,
what is kept and what to run.
"""

from __future__ import annotations

import errno
import os

import pytest

from stego_tasks.errors import StegoError
from stego_tasks.runtime.room import (
    OutOfRoomError,
    is_out_of_room,
    out_of_room,
    room_guard,
    room_reason,
    size_text,
)


def test_room_guard_passes_other_errors_through_and_measures_the_bytes():
    expected = r"ran out of room writing thing \(2.0 KiB being written: No space left"
    with pytest.raises(OutOfRoomError, match=expected), room_guard("thing", lambda: 2048, "all else is kept", "rerun it"):
        raise OSError(28, "No space left on device")
    with pytest.raises(KeyError), room_guard("thing", 1, "kept", "rerun"):
        raise KeyError("not a room problem")


def _chained(inner: BaseException, outer: BaseException) -> BaseException:
    """`outer` raised from `inner` (its __cause__), as a library re-raises."""
    try:
        try:
            raise inner
        except BaseException as error:
            raise outer from error
    except BaseException as raised:
        return raised


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
def test_each_room_errno_is_out_of_room_and_other_errnos_are_not(code: int) -> None:
    assert is_out_of_room(OSError(code, os.strerror(code)))
    assert not is_out_of_room(OSError(errno.EACCES, os.strerror(errno.EACCES)))


def test_a_room_error_deep_in_the_cause_chain_counts_and_gives_the_systems_words() -> None:
    wrapped = _chained(OSError(errno.ENOSPC, "No space left on device"), RuntimeError("zarr could not store chunk"))
    wrapped = _chained(wrapped, ValueError("writing the features failed"))
    assert is_out_of_room(wrapped)
    assert room_reason(wrapped) == "No space left on device"


def test_only_the_message_left_by_a_library_still_counts() -> None:
    assert is_out_of_room(RuntimeError("IOError: [Errno 27] File too large"))
    assert is_out_of_room(ValueError("Disk quota exceeded while flushing"))
    assert room_reason(RuntimeError("disk quota exceeded")) == "out of room", "no errno: the generic words"
    assert not is_out_of_room(RuntimeError("permission denied"))
    assert not is_out_of_room(None)


def test_an_out_of_room_error_is_never_wrapped_a_second_time() -> None:
    first = OutOfRoomError("ran out of room writing x (No space left on device); kept; rerun.")
    assert not is_out_of_room(first)
    with pytest.raises(OutOfRoomError) as raised, room_guard("outer", 10, "kept", "rerun"):
        raise first
    assert raised.value is first, "the inner sentence was replaced"


def test_an_errno_without_text_is_named_by_its_symbol() -> None:
    assert room_reason(OSError(errno.EFBIG, "")) == "EFBIG"


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [(0, "0 B"), (812, "812 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (int(4.2 * 2**20), "4.2 MiB"),
     (3 * 2**29, "1.5 GiB"), (5 * 2**40, "5120.0 GiB")],
)
def test_sizes_are_shown_in_binary_units_up_to_gib(n_bytes: int, text: str) -> None:
    assert size_text(n_bytes) == text


def test_the_sentence_names_what_how_much_why_what_is_kept_and_what_to_run() -> None:
    error = out_of_room(OSError(errno.ENOSPC, "No space left on device"), "chunk 3 of val", 3 * 2**20,
                        "the 3 chunks written before it are kept", "rerun `stego extract` to resume")
    assert isinstance(error, StegoError) and isinstance(error, ValueError)
    assert str(error) == (
        "ran out of room writing chunk 3 of val (3.0 MiB being written: No space left on device); "
        "the 3 chunks written before it are kept; free space (or raise the file-size limit or quota) "
        "and rerun `stego extract` to resume."
    )
    assert "being written" not in str(out_of_room(OSError(errno.ENOSPC, "x"), "a", 0, "k", "f")), "an unknown size is left out"


def test_a_size_that_cannot_be_measured_after_the_failure_is_left_out() -> None:
    def measure() -> int:
        raise FileNotFoundError("the temporary file is gone")

    with pytest.raises(OutOfRoomError) as raised, room_guard("manifest.parquet", measure, "the old one is kept", "rerun"):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert str(raised.value).startswith("ran out of room writing manifest.parquet (Disk quota exceeded); "), raised.value
    assert raised.value.__cause__ is None and raised.value.__suppress_context__, "the traceback chain must be cut"
