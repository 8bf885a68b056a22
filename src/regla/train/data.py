"""Datasets and loaders: timm's ``create_dataset`` / ``create_loader`` / transform factory, plus input checks.

An ImageNet-style folder (``train/`` and ``val/``, one sub-folder per class) is checked before training starts, so
a missing or empty folder, or a class folder without images, stops the run with a message naming the path.
Unreadable or truncated images are skipped by :class:`SkipUnreadable`, a thin wrapper that names each file, counts
it, and substitutes the next readable image so the epoch goes on with a fixed batch shape.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from regla.config import Recipe
from regla.errors import UsageError

_logger = logging.getLogger("regla.train")

TRAIN_SPLITS = ("train", "training")
VAL_SPLITS = ("val", "validation", "valid", "eval", "evaluation")


class DataError(UsageError):
    """The data folder cannot be used; the message names the path and the problem."""


def image_extensions() -> set[str]:
    """File extensions timm's folder reader picks up (``.jpg``, ``.png``, ...)."""
    from timm.data.readers.img_extensions import get_img_extensions

    return set(get_img_extensions(as_set=True))


def find_split(root: Path, split: str) -> Path:
    """``root/split``, or a synonym of it as timm's folder reader accepts (``val`` / ``validation`` ...)."""
    names = TRAIN_SPLITS if split in TRAIN_SPLITS else VAL_SPLITS if split in VAL_SPLITS else (split,)
    for name in (split, *names):
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root}: no '{split}/' folder (expected {root}/{split}/<class>/<image>)")


def check_class_folders(split_dir: Path) -> list[str]:
    """Class names of an image folder; errors on an empty folder or a class folder with no images."""
    exts = image_extensions()
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        loose = [p for p in split_dir.iterdir() if p.suffix.lower() in exts]
        hint = " (images must sit in one sub-folder per class)" if loose else ""
        raise DataError(f"{split_dir}: no class folders{hint}")
    empty = []
    for name in classes:
        has_image = any(f.lower().endswith(tuple(exts)) for _, _, files in os.walk(split_dir / name) for f in files)
        if not has_image:
            empty.append(str(split_dir / name))
    if empty:
        raise DataError(f"class folder(s) with no images: {', '.join(empty)} "
                        f"(accepted extensions: {', '.join(sorted(exts))})")
    return classes


def class_map_for(classes: list[str]) -> dict[str, int]:
    """Class name -> index, in timm's natural-sort order, shared by train and val."""
    from timm.data.readers.reader_image_folder import natural_key

    return {c: i for i, c in enumerate(sorted(classes, key=natural_key))}


class _DatasetView(Dataset):
    """A dataset wrapped around ``self.dataset`` whose ``transform`` is the wrapped one's (timm's loader sets it)."""

    dataset: Any

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value) -> None:
        self.dataset.transform = value


class SkipUnreadable(_DatasetView):
    """Wrap a timm ``ImageDataset``: an image that fails to decode is skipped, named and counted.

    The next index is returned in its place (as timm does), so batches keep their size. Each skipped file is
    logged with a warning and, when ``log_path`` is set, appended to that file, which works across loader worker
    processes and DDP ranks; :func:`read_skipped` reads it back.
    """

    def __init__(self, dataset: Any, log_path: str | os.PathLike | None = None, max_tries: int = 16):
        self.dataset = dataset
        self.log_path = Path(log_path) if log_path else None
        self.max_tries = max_tries
        self.skipped: set[str] = set()
        if hasattr(dataset, "_max_retries"):
            dataset._max_retries = 1  # let a failure reach us instead of timm's silent substitution

    def __len__(self) -> int:
        return len(self.dataset)

    def filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        return self.dataset.filename(index, basename=basename, absolute=absolute)

    def _record(self, index: int, error: Exception) -> None:
        name = str(self.filename(index, absolute=True))
        if name not in self.skipped:
            self.skipped.add(name)
            warnings.warn(f"skipped unreadable image {name}: {error}", stacklevel=2)
            if self.log_path is not None:
                with open(self.log_path, "a") as f:
                    f.write(name + "\n")

    def _reason(self, index: int, error: Exception) -> Exception:
        """The decoder's own error for a file timm reported only as 'failed to load'."""
        from PIL import Image

        try:
            with Image.open(self.filename(index, absolute=True)) as img:
                img.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any decoder error is the reason we want to show
            return e
        return error

    def __getitem__(self, index: int):
        from PIL import Image

        for _ in range(self.max_tries):
            try:
                return self.dataset[index]
            except (OSError, RuntimeError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                self._record(index, self._reason(index, e))
                index = (index + 1) % len(self.dataset)
        raise DataError(f"{self.max_tries} consecutive unreadable images, last {self.filename(index)}")


class Shard(_DatasetView):
    """Every ``world``-th sample from ``rank`` on, without padding, so distributed evaluation counts each image once."""

    def __init__(self, dataset: Any, rank: int, world: int):
        self.dataset = dataset
        self.indices = list(range(rank, len(dataset), world))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


def read_skipped(log_path: str | os.PathLike) -> list[str]:
    """Files skipped so far by every worker and rank (unique, sorted)."""
    path = Path(log_path)
    if not path.is_file():
        return []
    return sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})


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
