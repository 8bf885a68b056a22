"""How our model files read weights, registered from outside so that they import only torch and timm.

timm's model files depend on timm alone; ours follow suit. Two functions they hand to timm need the project's
weights reader (:mod:`regla.checkpoints`): the ``pretrained_filter_fn`` (unwrap containers by the EMA rule, fuse the
model for a fused file) and RepNeXt's reader of official release files (TorchScript ``*_fused.pt`` included).
:mod:`regla.models` registers :func:`regla.checkpoints.filter_fn` and :func:`regla.checkpoints.read_raw` here
before it imports the model files, so they are in place whenever a model can be created.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

FilterFn = Callable[[Any, Any], dict]
ReadFn = Callable[[str | Path], tuple[Any, Any]]

_hooks: dict[str, Callable] = {}


def register(filter_fn: FilterFn, read_raw: ReadFn) -> None:
    """Install the weight-key filter and the raw-file reader the model files use (``regla.models`` does this)."""
    _hooks.update(filter_fn=filter_fn, read_raw=read_raw)


def _hook(name: str) -> Callable:
    if name not in _hooks:
        raise RuntimeError(f"no weights {name} registered: import regla.models (it registers them)")
    return _hooks[name]


def filter_fn(state_dict: Any, model: Any) -> dict:
    """timm's ``pretrained_filter_fn`` for our models: the registered :func:`regla.checkpoints.filter_fn`."""
    return _hook("filter_fn")(state_dict, model)


def read_raw(path: str | Path) -> tuple[Any, Any]:
    """Open a weights file without unwrapping it: the registered :func:`regla.checkpoints.read_raw`."""
    return _hook("read_raw")(path)
