"""Model families of regla, each registered in timm's model registry on import."""

from . import regla, repnext  # noqa: F401  (registration)
from ._helpers import CheckpointError, check_state_dict, compare_keys, load_weights, read_state_dict

__all__ = ["CheckpointError", "check_state_dict", "compare_keys", "load_weights", "read_state_dict"]
