"""Model families of regla, each registered in timm's model registry on import.

Reading weights files lives in :mod:`regla.checkpoints` (re-exported here for convenience).
"""

from ..checkpoints import CheckpointError, compare_keys, load_into, load_weights, read_weights
from . import iformer_variants, regla, repnext  # noqa: F401  (registration)

__all__ = ["CheckpointError", "compare_keys", "load_into", "load_weights", "read_weights"]
