"""The project's user-error types: failures a user can act on, told in one sentence.

The `stego` command prints a `StegoError` as one line (`stego <command>: error: ...`, exit 2);
any other exception is a bug and keeps its traceback (`flows/cli.py`). Each subclass also
derives from the builtin it replaced, so `except ValueError` and `pytest.raises(ValueError)`
keep working for library callers. The message says what is wrong and what to do about it.

Configuration layer: this module imports nothing, so every layer may raise these.
"""


class StegoError(Exception):
    """A failure the user can act on (a setting, an input, a tool stego runs); never a bug."""


class InvalidInputError(StegoError, ValueError):
    """A setting, argument or input file is not what the stage needs (the message says what to pass)."""


class MissingInputError(StegoError, FileNotFoundError):
    """An input the command needs does not exist (the message names the command that writes it)."""


class ToolFailedError(StegoError, RuntimeError):
    """A process stego runs or depends on failed (a worker, a git or DVC command, the Prefect server)."""


class UnreachableError(StegoError, ConnectionError):
    """A service stego must reach (the Dask scheduler) does not answer at the address given."""


# The line the CLI prints under the traceback of any other exception.
REPORT_BUG = ("this is a bug in stego, not in your data or settings: please report it, with the traceback "
              "above and the command you ran, on the project's issue tracker (STEGO_DEBUG=1 also shows the "
              "traceback of one-sentence errors)")
