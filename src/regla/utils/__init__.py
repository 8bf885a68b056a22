"""Small shared utilities: parameter and MAC counting (atomic file writes are :mod:`regla.outputs`)."""

from .complexity import count_macs, count_params

__all__ = ["count_macs", "count_params"]
