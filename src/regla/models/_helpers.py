"""Helpers shared by the model families."""

from __future__ import annotations

import torch
from timm.models._features import feature_take_indices
from torch import nn


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
