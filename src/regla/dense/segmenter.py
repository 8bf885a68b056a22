"""Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", 2019) as mmseg's ``FPNHead``.

A torchvision FPN of 256 channels on the backbone's four levels (strides 4..32; mmseg ``FPN(num_outs=4)``), then per
level a head of ``max(1, log2(stride / 4))`` blocks of 3x3 conv (128 channels, no bias) + BN + ReLU, each but the
stride-4 one followed by x2 bilinear upsampling, summed at 1/4 scale, dropout 0.1 (``Dropout2d``) and a 1x1
classifier. The loss is cross-entropy with ignore index 255 on logits upsampled to the label size, averaged over
all pixels as mmseg 0.x does (``avg_non_ignore=False``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from ..config import Recipe
from .backbone import build_body, freeze_bn_stats

IGNORE_INDEX = 255


def _scale_head(levels: int, in_channels: int, channels: int, upsample: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(levels):
        layers += [nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                   nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        if upsample:
            layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


class SemanticFPN(nn.Module):
    """Backbone (``features_only``) + FPN + Semantic FPN head; ``forward`` returns logits at 1/4 scale."""

    def __init__(self, body: nn.Module, num_classes: int, fpn_channels: int = 256, head_channels: int = 128,
                 dropout: float = 0.1, freeze_bn: bool = False) -> None:
        super().__init__()
        self.body = body
        self.num_classes, self.freeze_bn = num_classes, freeze_bn
        reductions = list(body.feature_info.reduction())
        self.fpn = FeaturePyramidNetwork(list(body.feature_info.channels()), fpn_channels)
        self.scale_heads = nn.ModuleList(
            _scale_head(max(1, int(math.log2(r) - math.log2(reductions[0]))), fpn_channels, head_channels,
                        upsample=r != reductions[0]) for r in reductions)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)  # mmseg BaseDecodeHead.init_weights
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))
        levels = list(feats.values())
        out = self.scale_heads[0](levels[0])
        for head, feat in zip(self.scale_heads[1:], levels[1:], strict=True):
            out = out + F.interpolate(head(feat), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(out))

    def train(self, mode: bool = True) -> SemanticFPN:
        super().train(mode)
        if mode and self.freeze_bn:
            freeze_bn_stats(self.body)
        return self


def seg_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """mmseg's decode loss: logits upsampled to the label, CE (ignore 255) summed and divided by all pixels."""
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="none").mean()


@torch.no_grad()
def infer_logits(model: nn.Module, image: torch.Tensor, out_size: tuple[int, int], mode: str = "whole",
                 crop: int = 512, stride: int = 341) -> torch.Tensor:
    """Class scores of one normalised image ``(1, 3, H, W)`` resized to ``out_size`` (mmseg's ``inference``).

    ``whole``: one forward pass. ``slide``: ``crop`` x ``crop`` windows every ``stride`` pixels (the last window
    aligned to the border), logits upsampled to each window and averaged where windows overlap.
    """
    if mode == "whole":
        logits = model(image)
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
    else:
        logits = _slide(model, image, crop, stride)
    return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


def _slide(model: nn.Module, image: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    if stride > crop:  # the recipe rule refuses this first; a direct caller gets the same answer, not NaN logits
        raise ValueError(f"slide inference: stride {stride} > crop {crop} would leave pixels uncovered")
    h, w = image.shape[-2:]
    rows, cols = max(h - crop + stride - 1, 0) // stride + 1, max(w - crop + stride - 1, 0) // stride + 1
    total = count = None
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            window = image[..., y1:y2, x1:x2]
            logits = F.interpolate(model(window), size=window.shape[-2:], mode="bilinear", align_corners=False)
            if total is None:
                total = logits.new_zeros((*logits.shape[:2], h, w))
                count = logits.new_zeros((1, 1, h, w))
            total[..., y1:y2, x1:x2] += logits
            count[..., y1:y2, x1:x2] += 1
    return total / count


def build_segmenter(cfg: Recipe, num_classes: int, log: bool = True) -> tuple[SemanticFPN, Any]:
    """The Semantic FPN of a ``regla seg`` recipe and the backbone's load report (None without ``pretrained``)."""
    body, report = build_body(cfg, log)
    model = SemanticFPN(body, num_classes, cfg.task.fpn_channels, cfg.task.head_channels, cfg.task.dropout,
                        freeze_bn=cfg.task.freeze_bn)
    return model, report
