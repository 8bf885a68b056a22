"""The two dense trainers as tasks of the one run harness (:mod:`regla.runs.task`): :class:`DetTask` (Mask R-CNN
on COCO-format data) and :class:`SegTask` (Semantic FPN on ADE-format data).

Each builds its model (backbone from a classification checkpoint, with the load report logged and saved in every
checkpoint), its training loader (:class:`~regla.data.samplers.EpochSampler`: the order is a function of the seed
and the epoch) and evaluates with pycocotools / mmseg's mIoU. The loop, optimizer, schedule, AMP, DDP, checkpoints
and logs are the harness's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoints import WeightsInfo
from ..config import Recipe
from ..data.ade import SegmentationFolder
from ..data.coco import CocoInstances, detection_collate
from ..data.errors import DataError
from ..data.samplers import EpochSampler
from ..errors import UsageError
from ..runs.task import Built
from .backbone import norm_stats
from .config import samples_per_epoch
from .detector import build_detector
from .evaluate import evaluate_detector, evaluate_segmenter, seg_scores
from .segmenter import build_segmenter, seg_loss
from .transforms import SegTestTransform, SegTrainTransform, det_test_transforms, det_train_transforms

_logger = logging.getLogger("regla.dense")


def require_paths(cfg: Recipe, keys: tuple[str, ...], command: str) -> None:
    """Each of ``keys`` set in the recipe; else a UsageError naming them."""
    unset = [k for k in keys if not getattr(cfg.task, k)]
    if unset:
        raise UsageError(f"{command}: the recipe does not set {', '.join(unset)} (give them in the YAML or with "
                         f"--set {unset[0]}=PATH)")


#: The run folder's record of every entry the readers skipped.
SKIPPED_FILE = "skipped.json"


class _SkipReport:
    """What :class:`DetTask` and :class:`SegTask` share: the skipped entries of their two sets, in the metrics
    rows and ``skipped.json``."""

    train_set: Any
    val_set: Any
    run_dir: Path
    rank: int = 0
    _skips_written: bool = False

    def _sets(self) -> dict[str, Any]:
        return {split: ds for split, ds in (("train", self.train_set), ("val", self.val_set)) if ds is not None}

    def log_skips(self) -> None:
        for ds in self._sets().values():
            ds.skipped.log(_logger)

    def annotate(self, row: dict[str, Any]) -> None:
        """``skipped_train`` / ``skipped_val`` in the row; ``skipped.json`` written once (rank 0)."""
        from ..outputs import atomic_write_text

        sets = self._sets()
        for split, ds in sets.items():
            row[f"skipped_{split}"] = len(ds.skipped)
        if self.rank == 0 and not self._skips_written and hasattr(self, "run_dir"):
            doc = {split: {"source": ds.skipped.source, **ds.skipped.summary()} for split, ds in sets.items()}
            atomic_write_text(Path(self.run_dir) / SKIPPED_FILE, json.dumps(doc, indent=2) + "\n")
            self._skips_written = True


def _to(value: Any, device: torch.device) -> Any:
    return value.as_subclass(torch.Tensor).to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


def _loader(dataset: Any, cfg: Recipe, rank: int, world_size: int, **kwargs: Any) -> DataLoader:
    sampler = EpochSampler(len(dataset), rank, world_size, cfg.run.seed, samples_per_epoch(cfg, world_size))
    workers = cfg.run.workers
    return DataLoader(dataset, batch_size=cfg.run.batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False, **kwargs)


class DetTask(_SkipReport):
    """Mask R-CNN training and COCO evaluation (``bbox_AP`` decides the best checkpoint)."""

    command = "regla det train"
    score_key = "bbox_AP"

    def __init__(self, show_bar: bool = False, strict: bool = False) -> None:
        self.show_bar, self.strict = show_bar, strict
        self.train_set: CocoInstances | None = None
        self.val_set: CocoInstances | None = None
        self.cfg: Recipe | None = None
        self.load_report = None
        self.class_names: list[str] = []
        #: the last evaluation's per-category AP50 ({"bbox_AP50": {name: AP50}, "segm_AP50": {...}})
        self.per_class: dict[str, dict[str, Any]] = {}

    def prepare(self, cfg: Recipe) -> None:
        """Read and check the data now (the CLI calls this before starting the run; :meth:`build` otherwise)."""
        self.train_set, self.val_set = self.datasets(cfg)
        self.log_skips()

    def datasets(self, cfg: Recipe, train: bool = True) -> tuple[CocoInstances | None, CocoInstances | None]:
        """The training and validation sets of the recipe (None where not needed or not given)."""
        train_set = None
        if train:
            require_paths(cfg, ("train_images", "train_ann"), self.command)
            train_set = CocoInstances(cfg.task.train_images, cfg.task.train_ann, det_train_transforms(cfg.task.flip),
                                      train=True, strict=self.strict)
        val_set = None
        if cfg.task.val_ann:
            require_paths(cfg, ("val_images",), self.command)
            val_set = CocoInstances(cfg.task.val_images, cfg.task.val_ann, det_test_transforms(), strict=self.strict)
        if train_set is not None and val_set is not None and train_set.class_names != val_set.class_names:
            raise DataError(f"{cfg.task.val_ann} and {cfg.task.train_ann} list different categories "
                            f"({len(val_set.class_names)} vs {len(train_set.class_names)}); they must be the same")
        return train_set, val_set

    def num_classes(self, cfg: Recipe, dataset: CocoInstances) -> int:
        n = cfg.task.num_classes or len(dataset.cat_ids) + 1
        if n < len(dataset.cat_ids) + 1:
            raise UsageError(f"num_classes = {n} but {dataset.ann_file} has {len(dataset.cat_ids)} categories "
                             f"(num_classes counts the background: at least {len(dataset.cat_ids) + 1})")
        return n

    def build(self, cfg: Recipe, device: torch.device, rank: int, world_size: int) -> Built:
        if self.train_set is None:
            self.prepare(cfg)
        train_set, self.rank = self.train_set, rank
        self.cfg, self.class_names = cfg, train_set.class_names
        model, self.load_report = build_detector(cfg, self.num_classes(cfg, train_set), log=rank == 0)
        loader = _loader(train_set, cfg, rank, world_size, collate_fn=detection_collate)
        extra = {"class_names": train_set.class_names, "category_ids": train_set.cat_ids,
                 "backbone_load": self.load_report.summary() if self.load_report else None}
        return Built(model=model, train_loader=loader, extra=extra)

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        images, targets = batch
        images = [_to(im, device) for im in images]
        targets = [{k: _to(v, device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        parts: dict[str, Any] = {k: v.detach() for k, v in losses.items()}
        parts["batch_size"] = len(images)
        return loss, parts

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        if self.val_set is None:
            return {}
        scores, self.per_class, _ = evaluate_detector(model, self.val_set, self.cfg.task.eval_images, self.show_bar)
        return scores

    def weights_info(self, model: nn.Module, cfg: Recipe) -> WeightsInfo | None:
        return WeightsInfo(num_classes=len(self.class_names) + 1, class_names=self.class_names)

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()


class SegTask(_SkipReport):
    """Semantic FPN training and mIoU evaluation (``mIoU`` decides the best checkpoint)."""

    command = "regla seg train"
    score_key = "mIoU"

    def __init__(self, show_bar: bool = False, strict: bool = False) -> None:
        self.show_bar, self.strict = show_bar, strict
        self.train_set: SegmentationFolder | None = None
        self.val_set: SegmentationFolder | None = None
        self.cfg: Recipe | None = None
        self.load_report = None
        #: the last evaluation's per-class IoU ({"IoU": {name: IoU or None}}; names from ``class_names``)
        self.per_class: dict[str, dict[str, Any]] = {}

    def prepare(self, cfg: Recipe) -> None:
        """Read and check the data now (the CLI calls this before starting the run; :meth:`build` otherwise)."""
        self.train_set, self.val_set = self.datasets(cfg)
        self.log_skips()

    def datasets(self, cfg: Recipe,
                 train: bool = True) -> tuple[SegmentationFolder | None, SegmentationFolder | None]:
        """The training and validation sets of the recipe (None where not needed or not given)."""
        mean, std = norm_stats(cfg)
        common = dict(num_classes=cfg.task.num_classes, reduce_zero_label=cfg.task.reduce_zero_label,
                      check=cfg.task.check_labels, show_bar=self.show_bar, strict=self.strict)
        train_set = None
        if train:
            require_paths(cfg, ("train_images", "train_labels"), self.command)
            tf = SegTrainTransform(mean, std, cfg.task.scale, cfg.task.ratio_range, cfg.task.crop_size,
                                   cfg.task.cat_max_ratio, cfg.task.flip, cfg.task.photometric)
            train_set = SegmentationFolder(cfg.task.train_images, cfg.task.train_labels, transforms=tf, **common)
        val_set = None
        if cfg.task.val_labels:
            require_paths(cfg, ("val_images",), self.command)
            val_set = SegmentationFolder(cfg.task.val_images, cfg.task.val_labels,
                                         transforms=SegTestTransform(mean, std, cfg.task.scale), **common)
        return train_set, val_set

    def build(self, cfg: Recipe, device: torch.device, rank: int, world_size: int) -> Built:
        self.cfg = cfg
        if self.train_set is None:
            self.prepare(cfg)
        train_set, self.rank = self.train_set, rank
        model, self.load_report = build_segmenter(cfg, cfg.task.num_classes, log=rank == 0)
        loader = _loader(train_set, cfg, rank, world_size, drop_last=len(train_set) >= cfg.run.batch_size)
        extra = {"num_classes": cfg.task.num_classes,
                 "backbone_load": self.load_report.summary() if self.load_report else None}
        return Built(model=model, train_loader=loader, extra=extra)

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = (_to(x, device) for x in batch)
        loss = seg_loss(model(images), labels)
        return loss, {"loss_seg": loss.detach(), "batch_size": images.shape[0]}

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        if self.val_set is None:
            return {}
        cfg = self.cfg
        meter = evaluate_segmenter(model, self.val_set, cfg.task.num_classes, cfg.task.test_mode, cfg.task.crop_size,
                                   cfg.task.test_stride, cfg.task.eval_images, self.show_bar)
        scores = dict(seg_scores(meter, cfg.task.class_names))
        self.per_class = {"IoU": scores.pop("per_class_IoU")}
        return scores

    def weights_info(self, model: nn.Module, cfg: Recipe) -> WeightsInfo | None:
        return WeightsInfo(num_classes=cfg.task.num_classes)

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()

