"""Recipes of ``regla det train`` and ``regla seg train``: the harness's run section (``regla.runs.config.RUN_FIELDS``)
with the defaults of the peers' protocols, plus each task's own section (``recipe.task``: :data:`DET_FIELDS`,
:data:`SEG_FIELDS`), in one typed :class:`~regla.config.Schema` each.

* Mask R-CNN 1x (mmdet ``mask_rcnn_r50_fpn_1x_coco`` as iFormer's detection configs set it, which ReGLA §4.2.1
  follows): AdamW lr 2e-4, weight decay 0.05, 12 epochs, lr x0.1 after epochs 8 and 11, 500-iteration linear
  warm-up from 0.001 x lr, 2 images per GPU x 8 GPUs = 16, no drop path, backbone BN statistics frozen.
* Semantic FPN (mmseg ``fpn_r50_512x512_80k_ade20k`` as the EfficientFormer / RepNeXt configs set it, which ReGLA
  §4.2.2 follows): 80k iterations of batch 16 (2 x 8 GPUs), AdamW lr 1e-4, weight decay 0.05, poly decay (power
  0.9) to 0, no warm-up. Iterations map onto epochs of ``iters_per_epoch`` optimizer steps: 80 x 1000.
  RepViT / iFormer's 40k variant is ``configs/seg/repvit_m1_1.yaml`` etc. (lr 2e-4, wd 1e-4, batch 32).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..config import Field, Recipe, Schema
from ..runs.config import RUN_FIELDS, RUN_RULES

__all__ = ["DET_DEFAULTS", "DET_SCHEMA", "SEG_DEFAULTS", "SEG_SCHEMA", "samples_per_epoch"]

PROB = dict(ge=0.0, le=1.0)

#: Keys both dense recipes have.
BACKBONE_FIELDS: dict[str, Field] = {
    "backbone": Field(str, "regla_m", help="timm model name with features_only support"),
    "backbone_kwargs": Field(dict, {}, help="extra timm.create_model arguments"),
    "pretrained": Field(str, None, nullable=True, help="classification checkpoint the backbone starts from"),
    "drop_path": Field(float, 0.0, ge=0.0, lt=1.0),
    "fpn_channels": Field(int, 256, ge=1),
    "mean": Field(list, None, nullable=True, items=float, length=3),  # None: the backbone's pretrained_cfg
    "std": Field(list, None, nullable=True, items=float, length=3, gt=0.0),
    "iters_per_epoch": Field(int, None, nullable=True, ge=1, help="optimizer steps per epoch; None: one pass"),
    "eval_images": Field(int, None, nullable=True, ge=1, help="evaluate on the first N validation images only"),
}

DET_FIELDS: dict[str, Field] = {
    **BACKBONE_FIELDS,
    "train_images": Field(str, None, nullable=True), "train_ann": Field(str, None, nullable=True),
    "val_images": Field(str, None, nullable=True), "val_ann": Field(str, None, nullable=True),
    "num_classes": Field(int, None, nullable=True, ge=2, help="with background; None: categories + 1"),
    "freeze_bn": Field(bool, True),
    "min_size": Field(int, 800, ge=32), "max_size": Field(int, 1333, ge=32),
    "flip": Field(float, 0.5, **PROB),
    "rpn_post_nms_top_n_train": Field(int, 1000, ge=1),
    "roi_sampling_ratio": Field(int, 0, ge=0),
    "roi_aligned": Field(bool, True),
    "rpn_l1": Field(bool, True),
    "detections_per_img": Field(int, 100, ge=1),
    "roi_batch_size": Field(int, 512, ge=1, help="RoIs sampled per image for the box/mask heads (mmdet 512)"),
    "roi_positive_fraction": Field(float, 0.25, gt=0.0, le=1.0,
                                   help="largest share of positives among the sampled RoIs (mmdet 0.25)"),
    "mask_roi_size": Field(int, 14, ge=1, help="RoIAlign output side of the mask head; masks are twice as large "
                                               "(mmdet 14 -> 28x28)"),
    "box_head_dim": Field(int, 1024, ge=1, help="width of the two FC layers of the box head (mmdet 1024)"),
    "mask_head_channels": Field(int, 256, ge=1, help="channels of the four mask-head convs (mmdet 256)"),
}

SEG_FIELDS: dict[str, Field] = {
    **BACKBONE_FIELDS,
    "train_images": Field(str, None, nullable=True), "train_labels": Field(str, None, nullable=True),
    "val_images": Field(str, None, nullable=True), "val_labels": Field(str, None, nullable=True),
    "num_classes": Field(int, 150, ge=2), "reduce_zero_label": Field(bool, True),
    "class_names": Field(list, None, nullable=True, items=str,
                         help="names of classes 0..num_classes-1 for the per-class IoU; None: their numbers"),
    "check_labels": Field(bool, True, help="read every label before training (values, channels)"),
    "head_channels": Field(int, 128, ge=1), "dropout": Field(float, 0.1, ge=0.0, lt=1.0),
    "freeze_bn": Field(bool, False),
    "scale": Field(list, [2048, 512], items=int, length=2, ge=1),
    "ratio_range": Field(list, [0.5, 2.0], items=float, length=2, gt=0.0),
    "crop_size": Field(int, 512, ge=32), "cat_max_ratio": Field(float, 0.75, gt=0.0, le=1.0),
    "flip": Field(float, 0.5, **PROB), "photometric": Field(bool, True),
    "test_mode": Field(str, "whole", choices=("whole", "slide")),
    "test_stride": Field(int, 341, ge=1),
}

DET_DEFAULTS: dict[str, Any] = dict(
    epochs=12, batch_size=2, opt="adamw", lr=2e-4, weight_decay=0.05, sched="multistep", decay_milestones=[8, 11],
    decay_rate=0.1, warmup_epochs=0, warmup_updates=500, warmup_lr=2e-7, min_lr=0.0, model_ema=False, clip_grad=None,
    workers=2,
    output="runs/det", eval_every=1)
SEG_DEFAULTS: dict[str, Any] = dict(
    epochs=80, iters_per_epoch=1000, batch_size=2, opt="adamw", lr=1e-4, weight_decay=0.05, sched="poly",
    decay_rate=0.9, warmup_epochs=0, warmup_updates=0, min_lr=0.0, model_ema=False, clip_grad=None, workers=4,
    output="runs/seg", eval_every=8)


def _with_defaults(fields: Mapping[str, Field], defaults: Mapping[str, Any]) -> dict[str, Field]:
    return {k: dataclasses.replace(f, default=defaults[k]) if k in defaults else f for k, f in fields.items()}


def _sizes(recipe: Recipe) -> str | None:
    t = recipe.task
    if t.min_size > t.max_size:
        return f"min_size ({t.min_size}) must not exceed max_size ({t.max_size})"
    return None


def _ratios(recipe: Recipe) -> str | None:
    lo, hi = recipe.task.ratio_range
    return f"ratio_range {[lo, hi]}: the first value must not exceed the second" if lo > hi else None


def _class_names(recipe: Recipe) -> str | None:
    names, n = recipe.task.class_names, recipe.task.num_classes
    if names is not None and len(names) != n:
        return f"class_names lists {len(names)} names but num_classes is {n} (one name per class)"
    return None


def _slide_covers(recipe: Recipe) -> str | None:
    """Sliding-window inference must cover every pixel: a stride above the crop leaves gaps (0/0 logits there)."""
    t = recipe.task
    if t.test_mode == "slide" and t.test_stride > t.crop_size:
        return (f"test_stride = {t.test_stride} > crop_size = {t.crop_size}: sliding windows would leave "
                f"pixels uncovered; set test_stride <= crop_size (mmseg uses about 2/3 of it)")
    return None


def _schema(own: Mapping[str, Field], defaults: Mapping[str, Any], rules: list, command: str, name: str) -> Schema:
    return Schema(_with_defaults(own, defaults), _with_defaults(RUN_FIELDS, defaults), [*RUN_RULES, *rules],
                  command=command, name=name, order="run-first")


DET_SCHEMA = _schema(DET_FIELDS, DET_DEFAULTS, [_sizes], "regla det train", "Detection")
SEG_SCHEMA = _schema(SEG_FIELDS, SEG_DEFAULTS, [_ratios, _class_names, _slide_covers], "regla seg train",
                     "Segmentation")


def samples_per_epoch(recipe: Recipe, world_size: int) -> int | None:
    """Samples of one epoch over all ranks: ``iters_per_epoch`` x global batch (None: one pass over the data)."""
    if not recipe.task.iters_per_epoch:
        return None
    return recipe.task.iters_per_epoch * recipe.run.batch_size * recipe.run.grad_accum * world_size
