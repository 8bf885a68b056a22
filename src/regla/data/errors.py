"""The one error type of the data readers."""

from __future__ import annotations

from ..errors import UsageError

#: How many offending names a message lists before "...".
MAX_LISTED = 5


class DataError(UsageError):
    """A dataset that cannot be used; the message names the path and the problem (exit code 2)."""


def listed(names: list[str]) -> str:
    """``a, b, c ...`` with at most :data:`MAX_LISTED` names."""
    return ", ".join(map(str, names[:MAX_LISTED])) + (" ..." if len(names) > MAX_LISTED else "")
