"""ReGLA: lightweight hybrid vision backbones (ReLU gated linear attention) and their toolkit.

Importing ``regla`` registers every model of ours (``regla_t`` ... ``regla_x``, ``repnext_m*``) in timm's registry,
in either import order: ``import regla; import timm`` or ``import timm; import regla``.

The registration needs torch and timm; importing ``regla`` alone does not (``regla --help`` stays fast). If timm is
already imported, the models are registered now; otherwise a one-shot import hook registers them right after
``timm`` itself is first imported (see "Importing regla" in docs/architecture.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

__version__ = "0.1.0"

_SUBPACKAGES = ("bench", "deploy", "models", "train", "utils")


def register_models() -> None:
    """Import :mod:`regla.models`, whose modules register our models with timm (torch and timm are imported)."""
    importlib.import_module("regla.models")


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``timm`` is about to be imported, wraps its loader to register our models after it.

    It removes itself on first use, so it costs one call per import until ``timm`` is imported, and nothing after.
    """

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - the importlib protocol
        if fullname != "timm":
            return None
        _remove_hook()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_timm = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            exec_timm(module)
            register_models()

        spec.loader.exec_module = exec_module  # this loader instance serves this one module only
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterTimm)]


def _install() -> None:
    if "timm" in sys.modules:
        register_models()
    elif not any(isinstance(f, _RegisterAfterTimm) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimm())


def __getattr__(name: str) -> ModuleType:
    """``regla.models`` and the other subpackages as attributes, imported on first use."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f"regla.{name}")
    raise AttributeError(f"module 'regla' has no attribute {name!r}")


_install()
