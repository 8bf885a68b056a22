"""The user's regla cache and the demo data sets written into it once.

A set is built in a temporary sibling and renamed into place (:func:`regla.outputs.atomic_output`), with a
``.complete`` marker inside; an interrupted write never leaves a half-filled set, and a complete one is reused.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..outputs import atomic_output

COMPLETE = ".complete"


def cache_dir() -> Path:
    """``$REGLA_CACHE`` or ``$XDG_CACHE_HOME/regla`` or ``~/.cache/regla``."""
    if os.environ.get("REGLA_CACHE"):
        return Path(os.environ["REGLA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "regla"


def build_once(root: Path, source: str, fill: Callable[[Path], None]) -> Path:
    """``root`` if it holds a complete set; else ``fill(folder)`` writes one into a fresh folder, which replaces
    ``root`` (an incomplete leftover included) only when ``fill`` returns. ``source`` is recorded in the marker."""
    if (root / COMPLETE).is_file():
        return root
    with atomic_output(root, directory=True, same_kind=lambda _: True) as tmp:
        tmp.mkdir()
        fill(tmp)
        (tmp / COMPLETE).write_text(f"{source}\n")
    return root
