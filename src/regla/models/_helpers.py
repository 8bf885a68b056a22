"""Loading weights from local files (safetensors or torch pickles) with errors that name the bad keys."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch checkpoint (``.pth``/``.pt``/``.bin``).

    Checkpoints that wrap the weights (``model``, ``state_dict``, ``model_ema``) are unwrapped and a DDP
    ``module.`` prefix is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or truncated file
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a state dict")
    for key in ("model_ema", "state_dict_ema", "model", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise a ValueError naming missing, unexpected and shape-mismatched keys of ``state`` for ``model``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise ValueError(f"state dict does not fit {type(model).__name__}: " + "; ".join(parts))


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local checkpoint into ``model`` strictly, with a clear error for any key that does not fit."""
    state = read_state_dict(path)
    check_state_dict(model, state)
    model.load_state_dict(state)
    return model
