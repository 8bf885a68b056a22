"""Mask R-CNN (He et al., 2017) on torchvision's ``MaskRCNN``, set as mmdet 2's ``mask_rcnn_r50_fpn_1x_coco``.

Where torchvision's defaults differ from mmdet's and a constructor argument exists, mmdet's value is passed:
RPN post-NMS top-n 1000 in training (torchvision 2000), RoIAlign sampling ratio 0 (adaptive; torchvision 2),
81 classes on COCO (80 + background). Two small mmdet behaviours without a switch are implemented here: RoIAlign
with ``aligned=True`` (the half-pixel offset, :class:`AlignedMultiScaleRoIAlign`) and the RPN's L1 box loss
(:class:`L1RegionProposalNetwork`; torchvision uses smooth-L1 with beta 1/9). The remaining differences are listed
in docs/dense.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import initLevelMapper

from ..config import Recipe
from .backbone import BackboneFPN, build_body, norm_stats

LEVELS = ["0", "1", "2", "3"]


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` calling ``roi_align(aligned=True)`` (mmdet's ``RoIAlign(aligned=True)``). Levels are
    assigned as in torchvision and mmdet alike: ``floor(log2(sqrt(area) / 56))`` clamped to P2..P5."""

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        feats = [x[k] for k in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = self._setup(feats, image_shapes)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, aligned=True)
            out[idx] = pooled.to(out.dtype)
        return out

    def _setup(self, feats: list[torch.Tensor], image_shapes: list[tuple[int, int]]) -> tuple[list[float], Any]:
        size = max(s[0] for s in image_shapes), max(s[1] for s in image_shapes)
        scales = [2.0 ** round(math.log2(float(f.shape[-2]) / size[0])) for f in feats]
        lvl_min, lvl_max = -math.log2(scales[0]), -math.log2(scales[-1])
        return scales, initLevelMapper(int(lvl_min), int(lvl_max), self.canonical_scale, self.canonical_level)


class L1RegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with mmdet's box loss: L1 (``loss_bbox=L1Loss``) over the sampled anchors."""

    def compute_loss(self, objectness: torch.Tensor, pred_bbox_deltas: torch.Tensor, labels: list[torch.Tensor],
                     regression_targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos, dim=0))[0]
        neg = torch.where(torch.cat(neg, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        labels_, targets = torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0)
        box_loss = F.l1_loss(pred_bbox_deltas[pos], targets[pos], reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_[sampled])
        return objectness_loss, box_loss


def _l1_rpn(rpn: RegionProposalNetwork) -> L1RegionProposalNetwork:
    """The same RPN (anchor generator, head, thresholds, top-n) with the L1 box loss."""
    return L1RegionProposalNetwork(
        rpn.anchor_generator, rpn.head, rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold,
        rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction, rpn._pre_nms_top_n,
        rpn._post_nms_top_n, rpn.nms_thresh, rpn.score_thresh)


def mask_rcnn(backbone: BackboneFPN, num_classes: int | None, mean: Sequence[float], std: Sequence[float],
              min_size: int = 800, max_size: int = 1333, rpn_post_nms_top_n_train: int = 1000,
              sampling_ratio: int = 0, aligned: bool = True, rpn_l1: bool = True, mask_roi_size: int = 14,
              **kwargs: Any) -> MaskRCNN:
    """torchvision ``MaskRCNN`` with mmdet's settings (module docstring); ``num_classes`` counts the background
    (None when the predictors are given in ``kwargs``). ``mask_roi_size``: the mask head's RoIAlign output
    (mmdet's 14); its convs keep the size and the predictor's x2 deconvolution doubles it (28x28 masks), and the
    mask targets follow the predicted size."""
    pool = AlignedMultiScaleRoIAlign if aligned else MultiScaleRoIAlign
    model = MaskRCNN(
        backbone, num_classes=num_classes, min_size=min_size, max_size=max_size, image_mean=list(mean),
        image_std=list(std), rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        box_roi_pool=pool(LEVELS, output_size=7, sampling_ratio=sampling_ratio),
        mask_roi_pool=pool(LEVELS, output_size=mask_roi_size, sampling_ratio=sampling_ratio), **kwargs)
    if rpn_l1:
        model.rpn = _l1_rpn(model.rpn)
    return model


def build_detector(cfg: Recipe, num_classes: int, log: bool = True) -> tuple[nn.Module, Any]:
    """The Mask R-CNN of a ``regla det`` recipe and the backbone's load report (None without ``pretrained``)."""
    body, report = build_body(cfg, log)
    mean, std = norm_stats(cfg)
    backbone = BackboneFPN(body, cfg.task.fpn_channels, extra_pool=True, freeze_bn=cfg.task.freeze_bn)
    heads = {}
    if cfg.task.box_head_dim != 1024:  # torchvision's (and mmdet's) default: two 1024-wide FC layers
        heads["box_head"] = TwoMLPHead(backbone.out_channels * 7 * 7, cfg.task.box_head_dim)
        heads["box_predictor"] = FastRCNNPredictor(cfg.task.box_head_dim, num_classes)
    if cfg.task.mask_head_channels != 256:  # default: four 256-channel 3x3 convs
        heads["mask_head"] = MaskRCNNHeads(backbone.out_channels, [cfg.task.mask_head_channels] * 4, 1)
        width = cfg.task.mask_head_channels
        heads["mask_predictor"] = MaskRCNNPredictor(width, width, num_classes)
    model = mask_rcnn(backbone, num_classes if not heads else None, mean, std, min_size=cfg.task.min_size,
                      max_size=cfg.task.max_size, rpn_post_nms_top_n_train=cfg.task.rpn_post_nms_top_n_train,
                      sampling_ratio=cfg.task.roi_sampling_ratio, aligned=cfg.task.roi_aligned, rpn_l1=cfg.task.rpn_l1,
                      box_detections_per_img=cfg.task.detections_per_img, mask_roi_size=cfg.task.mask_roi_size,
                      box_batch_size_per_image=cfg.task.roi_batch_size,
                      box_positive_fraction=cfg.task.roi_positive_fraction, **heads)
    return model, report

