"""Error types and exit codes shared by every ``regla`` subcommand (imports nothing heavy).

The convention, documented in ``docs/reliability.md``:

* exit 0: success;
* exit 2: bad input (a flag, a path, a recipe value, a weights file that does not fit) -> :class:`UsageError`;
* exit 1: a runtime failure after the input was accepted (export mismatch, disk full) -> :class:`RunFailure`;
* exit 130 / 143: stopped by SIGINT / SIGTERM (a resumable checkpoint is written first where a run was going).

Every error's message is one or two lines that name the file or flag at fault and what was expected. The traceback
is printed only with ``regla --debug`` or ``REGLA_DEBUG=1``.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_SIGINT", "EXIT_SIGTERM", "EXIT_USAGE", "ReglaError", "RunFailure",
           "Stopped", "UnknownModelError", "UsageError", "unknown_model_message"]


class ReglaError(Exception):
    """Base of every error the command line reports as a message (not a traceback)."""

    exit_code: int = EXIT_FAILURE


class UsageError(ReglaError, ValueError):
    """Bad input: the message names the flag, key or file and what is allowed. Exit code 2."""

    exit_code = EXIT_USAGE


class RunFailure(ReglaError, RuntimeError):
    """The input was accepted but the work failed (a check did not hold, the disk is full). Exit code 1."""

    exit_code = EXIT_FAILURE


class Stopped(ReglaError):
    """A run stopped by a signal after saving what it must; ``exit_code`` is 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, exit_code: int = EXIT_SIGINT):
        super().__init__(message)
        self.exit_code = exit_code


class UnknownModelError(UsageError):
    """A requested model name matches no registered model (exit code 2)."""


def unknown_model_message(name: str, available: Iterable[str], expected: Collection[str] = ()) -> str:
    """``unknown model 'x'; did you mean: ...?`` with the closest registered names.

    ``expected``: names that should be registered (``regla bench``'s default list); naming one of them adds a hint
    that the module defining it did not import.
    """
    close = difflib.get_close_matches(name, sorted(set(available)), n=5, cutoff=0.6)
    msg = f"unknown model {name!r}"
    if name in expected:
        msg += " (it is in the default list but not registered: is the module that defines it importable?)"
    if close:
        msg += "; did you mean: " + ", ".join(close) + "?"
    else:
        msg += "; see `regla models` or timm.list_models() for registered names"
    return msg
