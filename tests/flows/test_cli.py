"""The `stego` command: every subcommand documents what it reads and writes, and a user
error is one sentence on stderr with exit status 2 (no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import TOOLS, main
from flows.registry import STAGES

STAGE_COMMANDS = [stage.command for stage in STAGES.values()]
COMMANDS = [*STAGE_COMMANDS, *TOOLS, "run"]


def _stego(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0, f"`stego {command} --help` exited with {exit_info.value.code}"
    text = capsys.readouterr().out
    assert f"usage: stego {command}" in text, f"no usage line for {command}"
    if command in STAGE_COMMANDS:
        assert "Read" in text and "write" in text, f"`stego {command} --help` must say what it reads and writes"


def test_top_level_help_lists_every_command_without_heavy_imports() -> None:
    result = _stego("--help")
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout, f"{command} missing from `stego --help`"
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from flows.cli import _parser; _parser(); print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=120,
    )
    assert probe.stdout.strip() == "False", "building the parser must not import torch (it slows every stage)"


def test_user_error_is_one_sentence_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("corpus:\n  root: no-such-corpus\n")
    result = _stego("ingest", "--no-prefect", "--manifest", "m.parquet", "--quarantine", "q.csv", cwd=tmp_path)
    assert result.returncode == 2, f"exit status {result.returncode}: {result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.startswith("stego ingest: error:")]
    assert len(lines) == 1, f"expected one error line, got stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, "a user error must not print a traceback"
    assert "no-such-corpus" in lines[0], f"the error must name the corpus it looked at: {lines[0]}"


def test_unknown_params_key_is_reported_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  stepz: 3\n")
    result = _stego("knn", "--no-prefect", cwd=tmp_path)
    assert result.returncode == 2, f"exit status {result.returncode}: {result.stderr}"
    assert "stego knn: error: params.yaml block 'train' has unknown key(s) ['stepz']" in result.stderr, result.stderr


# --- only the project's own error types are one sentence; anything else is a bug to report ----


def _fail_in_stage(monkeypatch: pytest.MonkeyPatch, name: str, error: Exception) -> None:
    """Make stage `name` raise `error`, keeping its signature (the CLI builds its options from it)."""
    import dataclasses
    import functools

    from flows.registry import STAGES

    stage = STAGES[name]

    @functools.wraps(stage.function)
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setitem(STAGES, name, dataclasses.replace(stage, function=failing))


def test_unexpected_error_in_a_stage_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("corpus:\n  root: corpus\n")
    # What torch raises on a bad kernel launch: a RuntimeError the user cannot fix.
    _fail_in_stage(monkeypatch, "ingest", RuntimeError("CUDA error: an illegal memory access"))
    monkeypatch.delenv("STEGO_DEBUG", raising=False)
    code = main(["ingest", "--no-prefect", "--manifest", "m.parquet", "--quarantine", "q.csv", "--trace", "t.json"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" in err and "RuntimeError: CUDA error: an illegal memory access" in err, err
    assert err.rstrip().splitlines()[-1].startswith("stego ingest: this is a bug in stego"), err
    assert "stego ingest: error:" not in err, "a bug must not read as a user error"


def test_stego_error_in_a_stage_is_one_line_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    from stego_tasks.errors import InvalidInputError, ToolFailedError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("corpus:\n  root: corpus\n")
    monkeypatch.delenv("STEGO_DEBUG", raising=False)
    args = ["ingest", "--no-prefect", "--manifest", "m.parquet", "--quarantine", "q.csv", "--trace", "t.json"]
    for error in (InvalidInputError("corpus.root must be a folder; pass one."),
                  ToolFailedError("a worker process died; retry with fewer workers.")):
        _fail_in_stage(monkeypatch, "ingest", error)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"stego ingest: error: {error}", err
    # STEGO_DEBUG shows the traceback of a one-sentence error too (it propagates).
    monkeypatch.setenv("STEGO_DEBUG", "1")
    with pytest.raises(ToolFailedError):
        main(args)


def test_console_filter_drops_only_user_errors() -> None:
    import logging

    from flows.cli import _UserErrorConsoleFilter
    from stego_tasks.errors import MissingInputError

    def record(error: Exception) -> logging.LogRecord:
        return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "failed", None,
                                 (type(error), error, None))

    console_filter = _UserErrorConsoleFilter()
    assert not console_filter.filter(record(MissingInputError("run `stego extract` first.")))
    assert console_filter.filter(record(RuntimeError("CUDA error"))), "a bug's traceback must reach the console"
    assert console_filter.filter(record(ValueError("not ours"))), "a third-party ValueError is not a user error"


def test_an_os_error_on_a_path_is_one_sentence_naming_the_path_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A folder where a file belongs (or the reverse), or a missing path, raised by open() deep in a
    stage or tool: the user gave a wrong path, so one sentence with what to do, exit status 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("corpus:\n  root: corpus\n")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    monkeypatch.delenv("STEGO_DEBUG", raising=False)
    args = ["ingest", "--no-prefect", "--manifest", "m.parquet", "--quarantine", "q.csv", "--trace", "t.json"]
    for path, mode, fix in (("a-folder", "w", "is a folder where a file belongs; pass the path of a file."),
                            ("a-file/x.json", "w", "has a file where a folder belongs"),
                            ("missing/x.json", "r", "does not exist; check the path")):
        try:
            open(path, mode)  # noqa: SIM115 - only the OS error is wanted
        except OSError as error:
            _fail_in_stage(monkeypatch, "ingest", error)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"stego ingest: error: {path} {fix}") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("stage", "advice"), [
    ("train", "interrupted; rerun it with --resume to continue from its last checkpoint."),
    ("extract", "interrupted; rerun the same command to resume."),
])
def test_an_interrupt_says_how_that_command_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture, stage: str, advice: str) -> None:
    """Rerun as it was, `stego train` starts over: its advice names --resume."""
    monkeypatch.chdir(tmp_path)
    _fail_in_stage(monkeypatch, stage, KeyboardInterrupt())
    assert main([stage, "--no-prefect", "--trace", "t.json"]) == 130
    assert capsys.readouterr().err.strip() == f"stego {stage}: {advice}"
