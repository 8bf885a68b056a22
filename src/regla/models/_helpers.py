"""Helpers shared by the model families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models._features import feature_take_indices
from torch import nn


class TolerantBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm that, in training mode with one value per channel, normalises with its running statistics.

    Batch statistics of a single value are undefined (PyTorch raises): the classifier BN at batch 1, the last stage
    at batch 1 and 32x32 input. Such a step neither uses nor updates batch statistics. Otherwise the forward is
    ``torch.nn``'s BatchNorm forward, written out (no ``super()``) so that it scripts. Mix in before the concrete
    ``nn.BatchNorm{1,2}d``, which supplies ``_check_input_dim``; register subclasses with timm's
    ``register_notrace_module``, as the forward branches on the input's shape.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if self.training and x.numel() // x.shape[1] <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch_stats, factor, self.eps)


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
