"""The skip policy of every trainer and evaluator: what a reader leaves out is counted and named, never silent.

A malformed file is refused (:class:`~regla.data.errors.DataError`, exit 2). An entry that a real data set
contains but that cannot be used (an unreadable image, an annotation with a degenerate box, an image with no usable
annotation in a training set) is recorded in a :class:`Skips`: logged, counted in the run's metrics rows and
written to its ``skipped.json`` (trainers) or ``scores.json`` (evaluators). ``--strict`` turns the first skip into
an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError, listed

__all__ = ["DEGENERATE_BOX", "NO_USABLE_ANNOTATION", "UNREADABLE", "Skips"]

DEGENERATE_BOX = "annotation with a degenerate box (width or height < 1, or area <= 0)"
NO_USABLE_ANNOTATION = "image without a usable annotation (every one crowd or degenerate)"
UNREADABLE = "unreadable image"


@dataclass
class Skips:
    """Entries left out of ``source`` (a file or folder), by reason; ``strict``: the first one is a DataError."""

    source: str
    strict: bool = False
    entries: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, entry: str) -> None:
        """Record ``entry`` (``image id 3 (a.png)``) as skipped for ``reason``, or refuse it when strict."""
        if self.strict:
            raise DataError(f"{self.source}: {entry}: {reason} (--strict refuses what would be skipped)")
        self.entries.setdefault(reason, []).append(entry)

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def first(self) -> str:
        """``N skipped, first: <entry> (<reason>)``, for a message that all entries were skipped; "" for none."""
        for reason, names in self.entries.items():
            return f"{len(self)} skipped, first: {names[0]} ({reason})"
        return ""

    def summary(self) -> dict[str, Any]:
        """``{"skipped": N, "skipped_entries": {reason: [entry, ...]}}`` for a summary or scores JSON."""
        return {"skipped": len(self), "skipped_entries": {k: list(v) for k, v in self.entries.items()}}

    def log(self, logger: logging.Logger | None = None) -> None:
        """One warning per reason, naming the first few entries."""
        logger = logger or logging.getLogger("regla.data")
        for reason, names in self.entries.items():
            logger.warning("%s: skipped %d (%s): %s", self.source, len(names), reason, listed(names))
