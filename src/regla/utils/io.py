"""Atomic file writes, kept here for compatibility: the implementation is :mod:`regla.outputs`."""

from __future__ import annotations

from ..outputs import atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write_bytes", "atomic_write_text"]
