"""``regla train``'s datasets and loaders from its recipe: timm's ``create_dataset`` / ``create_loader``.

An ImageNet-style folder (``train/`` and ``val/``, one sub-folder per class) is checked before training starts
(:mod:`regla.data.folders`), so a missing or empty folder, or a class folder without images, stops the run with a
message naming the path; unreadable images are skipped and named by :class:`~regla.data.folders.SkipUnreadable`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from regla.config import Recipe
from regla.data.errors import DataError
from regla.data.folders import Shard, SkipUnreadable, check_class_folders, class_map_for, find_split

_logger = logging.getLogger("regla.train")


@dataclass
class Datasets:
    """The training and validation sets and their class mapping."""

    train: Any
    val: Any
    class_map: dict[str, int] | None
    num_classes: int


def build_datasets(cfg: Recipe, skipped_log: str | os.PathLike | None = None,
                   need_train: bool = True) -> Datasets:
    """Check the data folder, then create train/val sets with ``timm.data.create_dataset``."""
    from timm.data import create_dataset

    if not cfg.task.data_dir:
        raise DataError("no data folder given (--data DIR, or --demo for the built-in digits demo)")
    root = Path(cfg.task.data_dir).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    class_map = None
    if not cfg.task.dataset:  # an ImageNet-style folder: check it before timm walks it
        if not root.is_dir() or not any(root.iterdir()):
            raise DataError(f"data folder {root} is empty")
        val_dir = find_split(root, cfg.task.val_split)
        val_classes = check_class_folders(val_dir)
        train_classes = check_class_folders(find_split(root, cfg.task.train_split)) if need_train else val_classes
        missing = sorted(set(val_classes) - set(train_classes))
        if missing:
            raise DataError(f"{val_dir}: classes not in the training set: {', '.join(missing[:10])}")
        class_map = class_map_for(train_classes)
    kw = dict(root=str(root), class_map=class_map or "")
    train = None
    if need_train:
        train = create_dataset(cfg.task.dataset, split=cfg.task.train_split, is_training=True,
                               batch_size=cfg.run.batch_size, seed=cfg.run.seed, **kw)
        train = SkipUnreadable(train, skipped_log) if hasattr(train, "filename") else train
    val = create_dataset(cfg.task.dataset, split=cfg.task.val_split, is_training=False, batch_size=cfg.run.batch_size,
                         **kw)
    val = SkipUnreadable(val, skipped_log) if hasattr(val, "filename") else val
    num_classes = len(class_map) if class_map else int(cfg.task.num_classes or 0)
    if not num_classes:
        raise DataError("num_classes must be set for datasets that are not class folders (--set num_classes=N)")
    if need_train and len(train) == 0:
        raise DataError(f"{root}: the training split has no images")
    return Datasets(train=train, val=val, class_map=class_map, num_classes=num_classes)


def mixup_args(cfg: Recipe, num_classes: int) -> dict[str, Any] | None:
    """Arguments of timm's Mixup/FastCollateMixup, or None when mixup and cutmix are off."""
    if not (cfg.task.mixup > 0 or cfg.task.cutmix > 0):
        return None
    return dict(mixup_alpha=cfg.task.mixup, cutmix_alpha=cfg.task.cutmix, prob=cfg.task.mixup_prob,
                switch_prob=cfg.task.mixup_switch_prob, mode=cfg.task.mixup_mode, label_smoothing=cfg.task.smoothing,
                num_classes=num_classes)


def build_train_loader(cfg: Recipe, dataset: Any, device: torch.device, distributed: bool,
                       num_classes: int, use_prefetcher: bool):
    """Training loader from ``timm.data.create_loader`` with RandAugment, random erasing and (fast) mixup.

    Returns ``(loader, mixup_fn)``; ``mixup_fn`` is None when mixup is done in the collate (GPU prefetcher path).
    Workers are not persistent, so each epoch's augmentation seeds follow from the saved RNG state (exact resume).
    """
    from timm.data import FastCollateMixup, Mixup, create_loader

    margs = mixup_args(cfg, num_classes)
    collate_fn = FastCollateMixup(**margs) if margs and use_prefetcher else None
    mixup_fn = Mixup(**margs) if margs and not use_prefetcher else None
    aug_repeats = cfg.task.aug_repeats if distributed else 0
    loader = create_loader(
        dataset, input_size=(cfg.task.in_chans, cfg.task.img_size, cfg.task.img_size), batch_size=cfg.run.batch_size,
        is_training=True, re_prob=cfg.task.reprob, re_mode=cfg.task.remode, re_count=cfg.task.recount,
        scale=tuple(cfg.task.scale), ratio=tuple(cfg.task.ratio), hflip=cfg.task.hflip,
        color_jitter=cfg.task.color_jitter, auto_augment=cfg.task.aa or None, num_aug_repeats=aug_repeats,
        interpolation=cfg.task.interpolation,
        mean=tuple(cfg.task.mean), std=tuple(cfg.task.std), num_workers=cfg.run.workers, distributed=distributed,
        collate_fn=collate_fn, pin_memory=cfg.run.pin_mem and device.type == "cuda", device=device,
        use_prefetcher=use_prefetcher, persistent_workers=False,
    )
    return loader, mixup_fn


def build_eval_loader(cfg: Recipe, dataset: Any, device: torch.device, use_prefetcher: bool,
                      rank: int = 0, world: int = 1, img_size: int | None = None, crop_pct: float | None = None,
                      batch_size: int | None = None):
    """Evaluation loader: resize to ``img_size / crop_pct``, centre-crop ``img_size`` (timm's eval transform).

    Under DDP each rank reads its own :class:`Shard`; counts are summed afterwards, so no image is counted twice.
    """
    from timm.data import create_loader

    size = img_size or cfg.task.img_size
    if world > 1:
        dataset = Shard(dataset, rank, world)
    return create_loader(
        dataset, input_size=(cfg.task.in_chans, size, size), batch_size=batch_size or cfg.run.batch_size,
        is_training=False, interpolation=cfg.task.interpolation, mean=tuple(cfg.task.mean), std=tuple(cfg.task.std),
        num_workers=cfg.run.workers, distributed=False, crop_pct=crop_pct or cfg.task.crop_pct,
        pin_memory=cfg.run.pin_mem and device.type == "cuda", device=device, use_prefetcher=use_prefetcher,
        persistent_workers=False,
    )
