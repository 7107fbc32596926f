"""Tests for `stego_tasks.errors`: the user-error types.

The module holds no behaviour beyond its class hierarchy, and that hierarchy is its contract:
every user error is a `StegoError` (the CLI prints it as one line) and also the builtin it
replaced, so callers' `except ValueError` / `FileNotFoundError` / ... keep working. These tests
prove that contract and that the bug line the CLI prints is one sentence.
"""

from __future__ import annotations

import pytest

from stego_tasks import errors
from stego_tasks.errors import (
    REPORT_BUG,
    InvalidInputError,
    MissingInputError,
    StegoError,
    ToolFailedError,
    UnreachableError,
)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [(InvalidInputError, ValueError), (MissingInputError, FileNotFoundError), (ToolFailedError, RuntimeError),
     (UnreachableError, ConnectionError)],
)
def test_each_user_error_is_a_stego_error_and_the_builtin_it_replaced(error: type[StegoError], builtin: type[Exception]) -> None:
    with pytest.raises(builtin, match="^what to do$"):
        raise error("what to do")
    with pytest.raises(StegoError):
        raise error("what to do")
    assert issubclass(error, Exception) and not issubclass(StegoError, (ValueError, OSError, RuntimeError))


def test_every_error_type_of_the_module_derives_from_stego_error() -> None:
    types = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, BaseException)]
    assert set(types) == {StegoError, InvalidInputError, MissingInputError, ToolFailedError, UnreachableError}


def test_a_missing_input_is_also_an_os_error_with_the_message_as_given() -> None:
    error = MissingInputError("run `stego ingest` first.")
    assert isinstance(error, OSError) and str(error) == "run `stego ingest` first."


def test_the_bug_line_is_one_sentence_asking_for_a_report() -> None:
    assert "\n" not in REPORT_BUG and REPORT_BUG.startswith("this is a bug in stego") and "STEGO_DEBUG=1" in REPORT_BUG
