"""ReGLA: lightweight hybrid vision backbones (ReLU gated linear attention) and their toolkit.

Importing ``regla`` registers every model of ours (``regla_t`` ... ``regla_x``, ``repnext_m*``) in timm's registry.
"""

from . import models  # noqa: F401  (registers models with timm)

__version__ = "0.1.0"
