"""Model families of regla, each registered in timm's model registry on import."""

from . import regla  # noqa: F401
from . import repnext  # noqa: F401
