"""Reading weights from local files (safetensors or torch pickles) with errors that name the bad keys.

Checkpoints may be ``.safetensors`` files or ``torch.save``'d state dicts (``.pth``/``.pt``/``.bin``), optionally
wrapped in a training checkpoint (``{"model": ...}``, ``{"state_dict": ...}``, ``{"model_ema": ...}``) and with a
``module.`` (DataParallel/DDP) prefix. Used by timm-style loading, ``regla export``, ``regla bench`` and training.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.models._features import feature_take_indices
from torch import nn

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model."""


@dataclass
class KeyReport:
    """How a state dict's keys and shapes compare with a model's."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """Human-readable list of the problems (at most ten of each kind)."""
        parts = []
        for title, items in (("missing keys", self.missing), ("unexpected keys", self.unexpected)):
            if items:
                shown = ", ".join(items[:_MAX_LISTED]) + (" ..." if len(items) > _MAX_LISTED else "")
                parts.append(f"{len(items)} {title}: {shown}")
        if self.mismatched:
            shown = ", ".join(f"{k} (checkpoint {tuple(a)} vs model {tuple(b)})" for k, a, b in
                              self.mismatched[:_MAX_LISTED])
            parts.append(f"{len(self.mismatched)} shape mismatches: {shown}")
        return "; ".join(parts)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors or torch checkpoint file, unwrapping training-checkpoint containers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    state = _unwrap(obj)
    if not state:
        raise CheckpointError(f"{path} holds no tensors (expected a state dict)")
    return _strip_prefix(state, "module.")


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return tensors
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return tensors
        obj = inner
    return {}


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def compare_keys(model: nn.Module, state: Mapping[str, torch.Tensor]) -> KeyReport:
    """Compare ``state`` with ``model.state_dict()``: missing, unexpected and shape-mismatched keys."""
    own = model.state_dict()
    report = KeyReport(
        missing=sorted(k for k in own if k not in state),
        unexpected=sorted(k for k in state if k not in own),
    )
    report.mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in sorted(own)
                         if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return report


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state, strict=True)`` with an error that names every kind of mismatch."""
    report = compare_keys(model, state)
    if not report.ok:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {report.describe()}")
    model.load_state_dict(state, strict=True)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and shape-mismatched keys of ``state``."""
    report = compare_keys(model, state)
    if not report.ok:
        raise CheckpointError(f"state dict does not fit {type(model).__name__}: {report.describe()}")


def load_training_or_fused(model: nn.Module, state: Mapping[str, torch.Tensor],
                           source: str = "checkpoint") -> tuple[nn.Module, bool]:
    """Load ``state`` into ``model`` (training-time form) or, failing that, into its fused form.

    Returns the loaded model and whether it is the fused one (``timm.utils.reparameterize_model``). If the state
    fits neither, :class:`CheckpointError` names the keys that differ from the training-time model.
    """
    from timm.utils import reparameterize_model

    unfused = compare_keys(model, state)
    if unfused.ok:
        model.load_state_dict(state, strict=True)
        return model, False
    fused = reparameterize_model(model)
    if compare_keys(fused, state).ok:
        fused.load_state_dict(state, strict=True)
        return fused, True
    raise CheckpointError(f"{source} does not fit {type(model).__name__} (neither its training-time nor its fused "
                          f"form); against the training-time model: {unfused.describe()}")


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local checkpoint into ``model`` strictly, with a clear error for any key that does not fit."""
    load_state_dict_strict(model, read_state_dict(path), str(path))
    return model


def stage_intermediates(
    stem: nn.Module,
    stages: nn.Sequential,
    x: torch.Tensor,
    indices: int | list[int] | None,
    stop_early: bool,
    output_fmt: str,
    intermediates_only: bool,
) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
    """timm's ``forward_intermediates`` for a stem followed by a sequence of stages (outputs of the chosen stages)."""
    if output_fmt != "NCHW":
        raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
    take_indices, max_index = feature_take_indices(len(stages), indices)
    run = stages if torch.jit.is_scripting() or not stop_early else stages[: max_index + 1]
    intermediates = []
    x = stem(x)
    for i, stage in enumerate(run):
        x = stage(x)
        if i in take_indices:
            intermediates.append(x)
    return intermediates if intermediates_only else (x, intermediates)
