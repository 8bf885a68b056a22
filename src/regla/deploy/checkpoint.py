"""Build a model for inference: create it from the timm registry, load a weights file, fuse it.

Reading and loading go through :mod:`regla.checkpoints` (any file layout, training-time or fused form).
"""

from __future__ import annotations

import os

from torch import nn

from ..checkpoints import CheckpointError, create_model_from_weights, read_weights
from ..preflight import require_model

__all__ = ["CheckpointError", "create_fused_model", "fuse", "read_weights"]


def fuse(model: nn.Module) -> nn.Module:
    """Fuse every training-time branch for inference (``timm.utils.reparameterize_model``) and set eval mode."""
    from timm.utils import reparameterize_model

    return reparameterize_model(model.eval(), inplace=True).eval()


def create_fused_model(name: str | None, checkpoint: str | os.PathLike | None = None,
                       num_classes: int | None = None, **kwargs) -> nn.Module:
    """Create timm model ``name`` (after ``import regla``), load ``checkpoint`` if given, fuse it, eval mode.

    With a checkpoint, the model name and class count may come from the file's metadata (``name=None``); they are
    checked against the file where it records them. Training-time and fused weights are both accepted.
    """
    import timm

    if checkpoint is None:
        if name is None:
            raise CheckpointError("give a model name or a weights file that records one")
        require_model(name)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return fuse(timm.create_model(name, pretrained=False, **kwargs))
    model, _, _ = create_model_from_weights(checkpoint, name, num_classes, fuse=True, **kwargs)
    return model  # fused, in eval mode
