"""Build a model for inference: create it from the timm registry, load a checkpoint, fuse it.

A checkpoint may hold the training-time (unfused) weights or the already fused ones; both are accepted. Reading
and key checks live in :mod:`regla.models._helpers`.
"""

from __future__ import annotations

import os

from torch import nn

from ..models._helpers import CheckpointError, load_training_or_fused, read_state_dict

__all__ = ["CheckpointError", "create_fused_model", "fuse", "read_state_dict"]


def fuse(model: nn.Module) -> nn.Module:
    """Fuse every training-time branch for inference (``timm.utils.reparameterize_model``) and set eval mode."""
    from timm.utils import reparameterize_model

    return reparameterize_model(model.eval(), inplace=True).eval()


def create_fused_model(name: str, checkpoint: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Create timm model ``name`` (after ``import regla``), load ``checkpoint`` if given, fuse it, eval mode.

    The checkpoint may hold the training-time weights (loaded, then fused) or the fused ones (loaded into the fused
    model). If it fits neither, :class:`CheckpointError` names the keys that differ from the training-time model.
    """
    import timm

    from ..bench.models import UnknownModelError, unknown_model_message

    # our models are registered by ``import regla``, which importing this module has already run
    if not timm.is_model(name):
        raise UnknownModelError(unknown_model_message(name, timm.list_models()))
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    if checkpoint is None:
        return fuse(model)
    model, _ = load_training_or_fused(model, read_state_dict(checkpoint), f"checkpoint {checkpoint}")
    return fuse(model)  # a no-op on an already fused model, apart from eval mode
