"""Small shared utilities (complexity counting, atomic file writes)."""

from .complexity import count_macs, count_params
from .io import atomic_write_bytes, atomic_write_text

__all__ = ["count_macs", "count_params", "atomic_write_bytes", "atomic_write_text"]
