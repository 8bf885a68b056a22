"""Layers and timm protocol methods both model families (ReGLA, RepNeXt) share.

One batch-1-tolerant BatchNorm, one ``ConvNorm`` (conv + BN, fused with ``torch.nn.utils.fuse_conv_bn_weights``),
one DeiT-style distillation classifier, and one implementation of timm's protocol methods
(:class:`StagedModelMixin`). Fusion of a whole model is ``timm.utils.reparameterize_model``, which calls each
layer's ``fuse()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from timm.models._features import feature_take_indices
from torch import nn
from torch.nn.utils import fuse_conv_bn_weights


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


# ---------------------------------------------------------------------------------------------------------------
# Foldable layers shared by the families
# ---------------------------------------------------------------------------------------------------------------


@register_notrace_module  # forward branches on the input's shape: a leaf of FX graphs (timm's feature extraction)
class BatchNorm2d(TolerantBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that accepts one value per channel in training mode (:class:`TolerantBatchNorm`)."""


@register_notrace_module
class BatchNorm1d(TolerantBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that accepts one value per channel in training mode (:class:`TolerantBatchNorm`)."""


class ConvNorm(nn.Sequential):
    """Bias-free convolution + BatchNorm (children ``conv``, ``norm``); :meth:`fuse` folds the BN into the conv.

    ``padding`` defaults to ``kernel_size // 2`` ('same' for odd kernels at stride 1).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int | None = None,
                 groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.add_module("conv", nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False))
        self.add_module("norm", BatchNorm2d(out_chs))
        nn.init.constant_(self.norm.weight, bn_weight_init)
        nn.init.zeros_(self.norm.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """One biased conv equal to conv + BN in eval mode (``torch.nn.utils.fuse_conv_bn_weights``)."""
        c, bn = self.conv, self.norm
        fused = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                          bias=True, device=c.weight.device, dtype=c.weight.dtype)
        weight, bias = fuse_conv_bn_weights(c.weight, c.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                            bn.bias)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        return fused


class DistilledClassifier(nn.Module):
    """Classifier ``head`` with an optional DeiT-style distillation head ``head_dist`` (RepViT, iFormer, RepNeXt).

    ``layer(dim, num_classes)`` builds each head (``nn.Linear``, or RepNeXt's BN + Linear). With a distillation head
    it returns ``(head(x), head_dist(x))`` in distilled training and their mean otherwise; :meth:`fuse` merges
    them into one ``nn.Linear`` (each head fused first if it can be).
    """

    def __init__(self, dim: int, num_classes: int, distillation: bool = False,
                 layer: Callable[[int, int], nn.Module] = nn.Linear) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.distillation = distillation
        self.distilled_training = False
        self.head = layer(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = layer(dim, num_classes) if distillation and num_classes > 0 else nn.Identity()

    # No return annotation: TorchScript infers Tensor (it drops the distilled-training branch), eager may give a tuple.
    def forward(self, x: torch.Tensor):  # -> Tensor | tuple[Tensor, Tensor]
        if not self.distillation or self.num_classes == 0:
            return self.head(x)
        x1, x2 = self.head(x), self.head_dist(x)
        if self.training and self.distilled_training and not torch.jit.is_scripting():
            return x1, x2
        else:  # noqa: RET505  (the explicit else lets TorchScript drop the tuple branch)
            return (x1 + x2) / 2

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """One ``nn.Linear`` (the mean of both heads when there are two); ``nn.Identity`` without classes."""
        if self.num_classes == 0:
            return nn.Identity()
        head = _fused(self.head)
        if self.distillation:
            dist = _fused(self.head_dist)
            head.weight.copy_((head.weight + dist.weight) / 2)
            head.bias.copy_((head.bias + dist.bias) / 2)
        return head


def _fused(layer: nn.Module) -> nn.Module:
    """``layer.fuse()`` if it has one, else a copy (so that averaging never writes into the unfused model)."""
    return layer.fuse() if hasattr(layer, "fuse") else copy.deepcopy(layer)


# ---------------------------------------------------------------------------------------------------------------
# timm's model protocol for a stem + stages + classifier network
# ---------------------------------------------------------------------------------------------------------------


def check_global_pool(global_pool: str) -> str:
    """Both families pool by average or not at all."""
    if global_pool not in ("", "avg"):
        raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
    return global_pool


class StagedModelMixin:
    """The timm protocol methods both families share (``stem``, ``stages``, ``feature_info``, ``head``).

    A model supplies ``_make_head(num_classes, distillation)`` (its classifier) and ``_input_check(x)`` (a no-op
    while tracing, scripting or compiling); :meth:`fuse` is ``timm.utils.reparameterize_model`` in place. (No class
    annotations here: TorchScript would read them as attribute types.)
    """

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """Return ``(head, head_dist)`` logits while training (no effect once fused)."""
        if isinstance(self.head, DistilledClassifier):
            self.head.distilled_training = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None,
                         distillation: bool | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none), keeping device, dtype and train/eval mode."""
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.num_classes = num_classes
        p = next(self.parameters())
        self.head = self._make_head(num_classes, distillation).to(device=p.device, dtype=p.dtype)
        self.head.train(self.training)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs of the stages in ``indices`` (last n if int, all if None); ``norm`` is accepted and unused (no
        final norm layer)."""
        self._input_check(x)
        return stage_intermediates(self.stem, self.stages, x, indices, stop_early, output_fmt, intermediates_only)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last requested intermediate, and the head if asked or if stages went."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        self.feature_info = self.feature_info[: max_index + 1]
        if prune_head or prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[-1]["num_chs"]
            self._drop_pre_logits()
            self.reset_classifier(0, "")
        return take_indices

    def _drop_pre_logits(self) -> None:
        """Remove layers between pooling and the classifier (none unless a model overrides this)."""

    @torch.no_grad()
    def fuse(self):  # -> Self
        """Fold every BN and re-parameterizable branch for deployment, in place (``reparameterize_model``)."""
        from timm.utils import reparameterize_model

        self.eval()
        return reparameterize_model(self, inplace=True)
