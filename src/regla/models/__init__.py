"""Model families of regla, each registered in timm's model registry on import.

The model files import only torch and timm. The weights functions they hand to timm (``pretrained_filter_fn``,
RepNeXt's release reader) come from :mod:`regla.checkpoints`, registered in :mod:`regla.models._weights` here,
before the model files load.
"""

from ..checkpoints import filter_fn, read_raw
from . import _weights

_weights.register(filter_fn, read_raw)

from . import iformer_variants, regla, repnext, repvit_variants  # noqa: E402, F401  (registration, after the weights hooks are in place)
