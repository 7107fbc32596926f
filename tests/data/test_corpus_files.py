"""Tests for stego_tasks.data.corpus_files: what each entry of a corpus folder is, and safe opens.

Proves that `classify_entry` sorts every kind of entry (image files, links to them, hidden
files, sub-folders, other extensions, folders, pipes and sockets named like images, broken
links, link loops) from `stat` alone, with the reason a quarantine list shows; that
`open_regular` reads regular files and refuses anything else at once (a named pipe never
blocks it), leaving no descriptor open; and the name rules `is_image_name` and `is_hidden`.
Every entry is made here, under tmp_path.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from stego_tasks.data import corpus_files
from stego_tasks.data.corpus_files import (
    IMAGE,
    QUARANTINED,
    SKIPPED,
    ImageDecodeError,
    classify_entry,
    is_hidden,
    is_image_name,
    open_regular,
)
from stego_tasks.errors import InvalidInputError


def test_is_image_name():
    for name in ["a.jpg", "b.JPEG", "c.png", "d.bmp", "e.tif", "f.TIFF", "g.webp"]:
        assert is_image_name(name), f"{name} should count as an image"
    for name in ["a.txt", "b.gif", "c", ".DS_Store"]:
        assert not is_image_name(name), f"{name} should not count as an image"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _entries(folder: Path) -> dict[str, tuple[str, str]]:
    """One entry of every kind in `folder`; returns {name: the (status, reason) it must get}."""
    (folder / "photo.jpg").write_bytes(b"not decoded here")
    (folder / "link.png").symlink_to(folder / "photo.jpg")
    (folder / "broken.png").symlink_to(folder / "nowhere.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / ".DS_Store").write_bytes(b"")
    (folder / "._photo.jpg").write_bytes(b"AppleDouble")
    (folder / "sub").mkdir()
    (folder / "dir.jpg").mkdir()
    (folder / "notes.txt").write_text("x")
    (folder / "README").write_text("x")
    os.mkfifo(folder / "pipe.png")
    extensions = ".bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp"
    return {
        "photo.jpg": (IMAGE, ""),
        "link.png": (IMAGE, ""),
        "broken.png": (QUARANTINED, "broken symlink (its target does not exist)"),
        "loop.png": (QUARANTINED, "symlink loop (the link leads back to itself)"),
        ".DS_Store": (SKIPPED, "hidden file"),
        "._photo.jpg": (SKIPPED, "hidden file"),
        "sub": (SKIPPED, "sub-folder (images must lie directly in the split folder)"),
        "dir.jpg": (QUARANTINED, "a directory named like an image, not a regular file"),
        "notes.txt": (SKIPPED, f"not an image file name (.txt); images end in {extensions}"),
        "README": (SKIPPED, f"not an image file name (no extension); images end in {extensions}"),
        "pipe.png": (QUARANTINED, "a named pipe (FIFO), not a regular file"),
    }


def test_classify_entry_sorts_every_kind_of_entry_with_its_reason(tmp_path: Path) -> None:
    expected = _entries(tmp_path)
    got = {name: classify_entry(tmp_path / name) for name in expected}
    assert got == expected, {name: got[name] for name in expected if got[name] != expected[name]}


def test_a_socket_named_like_an_image_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        assert classify_entry(path) == (QUARANTINED, "a socket, not a regular file")


def test_open_regular_reads_a_regular_file_and_through_a_link(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG bytes")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    for name in ("a.png", "b.png"):
        with open_regular(tmp_path / name) as f:
            assert f.read() == b"\x89PNG bytes", f"{name} read wrong"


def test_a_named_pipe_is_refused_at_once_and_no_descriptor_stays_open(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    before = _open_fds()
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            open_regular(pipe).close()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "open_regular blocked on a named pipe (no writer ever comes)"
    [error] = outcome
    assert isinstance(error, ImageDecodeError) and error.reason == "not a regular file (a named pipe (FIFO))", f"{error!r}"
    assert _open_fds() == before, "the pipe's descriptor was left open"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.mkdir(), "not a regular file"),
        (lambda p: None, "file does not exist (or is a broken symlink)"),
        (lambda p: p.symlink_to(p), "symlink loop (the link leads back to itself)"),
    ],
)
def test_open_regular_gives_one_reason_per_unusable_entry(
    tmp_path: Path, make: Callable[[Path], object], reason: str
) -> None:
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(ImageDecodeError) as info:
        open_regular(path)
    assert (info.value.path, info.value.reason) == (path, reason), f"{info.value!r}"
    assert str(info.value) == f"{path}: {reason}", "the message is the path and the reason"
    assert isinstance(info.value, InvalidInputError), "an unusable file is a user error"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "file is not readable (permission denied)"),
        (OSError(errno.EIO, "Input/output error"), "file cannot be read (Input/output error)"),
    ],
)
def test_open_errors_become_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, reason: str) -> None:
    # Simulated: the tests run as root, which reads any file whatever its mode.
    path = tmp_path / "x.png"
    path.write_bytes(b"x")

    def refuse(*args: object, **kwargs: object) -> int:
        raise error

    monkeypatch.setattr(corpus_files.os, "open", refuse)
    with pytest.raises(ImageDecodeError) as info:
        open_regular(path)
    assert info.value.reason == reason, info.value.reason


def test_is_hidden_looks_at_the_entry_name_alone() -> None:
    for name in (".DS_Store", "._photo.jpg", ".git", "images/train/.swp"):
        assert is_hidden(name), f"{name} should be hidden"
    for name in ("photo.jpg", "a.b.png", ".hidden/photo.jpg", Path("x") / "y.png"):
        assert not is_hidden(name), f"{name} should not be hidden"
