"""Data pipelines of the two dense recipes, on ``torchvision.transforms.v2`` and its tv_tensors.

* Mask R-CNN (mmdet ``mask_rcnn_r50_fpn_1x_coco``): horizontal flip (0.5) in the data pipeline; the resize to
  1333x800 keeping the aspect ratio, the normalisation and the padding to a multiple of 32 are done by the
  detector's own ``GeneralizedRCNNTransform`` (``min_size=800, max_size=1333``), which also maps predictions back
  to the original image size for evaluation.
* Semantic FPN (mmseg ``fpn_r50_512x512_80k/40k_ade20k``, the PoolFormer/EfficientFormer configs): random resize
  of (2048, 512) by a ratio in [0.5, 2.0] keeping the aspect ratio, a 512x512 random crop in which no class covers
  more than 75% (``cat_max_ratio``), horizontal flip, photometric distortion, normalisation, padding to 512x512
  (image 0, label 255). Test: resize to fit (2048, 512), normalise; the label stays at its original size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IGNORE_INDEX = 255


def det_train_transforms(flip: float = 0.5) -> v2.Compose:
    """Flip, then the image as float in [0, 1] (the detector resizes and normalises)."""
    return v2.Compose([v2.RandomHorizontalFlip(flip),
                       v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)])


def det_test_transforms() -> v2.Compose:
    """The image as float in [0, 1]."""
    return v2.Compose([v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)])


def rescale_size(h: int, w: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's ``rescale_size`` with ``keep_ratio``: the largest size fitting ``scale`` = (long, short) edges."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A uint8 or 0..255 float image normalised with mean/std given on the 0..1 scale (timm's data config)."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255
    return (image.float() - m) / s


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


def photometric_distortion(image: torch.Tensor, brightness: float = 32, contrast: tuple[float, float] = (0.5, 1.5),
                           saturation: tuple[float, float] = (0.5, 1.5), hue: float = 18) -> torch.Tensor:
    """mmseg's ``PhotoMetricDistortion`` on a 0..255 float image: each step with probability 0.5, additive
    brightness, multiplicative contrast before or after (random) saturation and hue; ``hue`` in OpenCV's 0..180
    units. Saturation and hue use torchvision's ``adjust_saturation`` / ``adjust_hue`` (docs/dense.md)."""
    img = image.float()
    if torch.rand(()) < 0.5:
        img = (img + _uniform(-brightness, brightness)).clamp(0, 255)
    contrast_first = bool(torch.randint(2, ()).item())
    if contrast_first and torch.rand(()) < 0.5:
        img = (img * _uniform(*contrast)).clamp(0, 255)
    if torch.rand(()) < 0.5:
        img = F.adjust_saturation(img / 255, _uniform(*saturation)).clamp(0, 1) * 255
    if torch.rand(()) < 0.5:
        img = F.adjust_hue(img / 255, _uniform(-hue, hue) / 180).clamp(0, 1) * 255
    if not contrast_first and torch.rand(()) < 0.5:
        img = (img * _uniform(*contrast)).clamp(0, 255)
    return img


def cat_max_ratio_crop(label: torch.Tensor, size: int, max_ratio: float = 0.75,
                       tries: int = 10) -> tuple[int, int]:
    """Top-left corner of a random ``size`` crop in which no class covers more than ``max_ratio`` of the labelled
    pixels (mmseg ``RandomCrop(cat_max_ratio)``: up to 10 tries, else the last)."""
    h, w = label.shape[-2:]
    for _ in range(tries):
        top = int(torch.randint(max(h - size, 0) + 1, ()).item())
        left = int(torch.randint(max(w - size, 0) + 1, ()).item())
        crop = label[..., top:top + size, left:left + size]
        counts = torch.bincount(crop[crop != IGNORE_INDEX].flatten())
        counts = counts[counts > 0]
        if max_ratio >= 1 or (len(counts) > 1 and counts.max() / counts.sum() < max_ratio):
            break
    return top, left


class SegTrainTransform:
    """The Semantic FPN training pipeline of the module docstring; returns (normalised float image, int64 label)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: Sequence[int] = (2048, 512),
                 ratio: Sequence[float] = (0.5, 2.0), crop: int = 512, cat_max_ratio: float = 0.75,
                 flip: float = 0.5, photometric: bool = True) -> None:
        self.mean, self.std, self.scale, self.ratio = mean, std, scale, ratio
        self.crop, self.cat_max_ratio, self.flip, self.photometric = crop, cat_max_ratio, flip, photometric

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = _uniform(*self.ratio)
        h, w = rescale_size(*image.shape[-2:], [s * r for s in self.scale])
        image = F.resize(image, [h, w], interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
        label = F.resize(label[None], [h, w], interpolation=v2.InterpolationMode.NEAREST)[0]
        top, left = cat_max_ratio_crop(label, self.crop, self.cat_max_ratio)
        image = image[:, top:top + self.crop, left:left + self.crop]
        label = label[top:top + self.crop, left:left + self.crop]
        if torch.rand(()) < self.flip:
            image, label = image.flip(-1), label.flip(-1)
        img = photometric_distortion(image) if self.photometric else image.float()
        img = normalize(img, self.mean, self.std)
        pad_h, pad_w = self.crop - img.shape[-2], self.crop - img.shape[-1]
        if pad_h > 0 or pad_w > 0:  # mmseg Pad(size=crop, pad_val=0, seg_pad_val=255), bottom/right
            img = torch.nn.functional.pad(img, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=0.0)
            label = torch.nn.functional.pad(label, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=IGNORE_INDEX)
        return img.contiguous(), label.long().contiguous()


class SegTestTransform:
    """Resize to fit ``scale`` (keep ratio), normalise; the label is returned untouched (original size)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: Sequence[int] = (2048, 512)) -> None:
        self.mean, self.std, self.scale = mean, std, scale

    def __call__(self, image: torch.Tensor, label: Any) -> tuple[torch.Tensor, Any]:
        h, w = rescale_size(*image.shape[-2:], self.scale)
        image = F.resize(image, [h, w], interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
        label = label.as_subclass(torch.Tensor).long() if isinstance(label, torch.Tensor) else label
        return normalize(image, self.mean, self.std), label
