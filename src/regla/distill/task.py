"""``regla distill`` as a run-harness task (:class:`regla.runs.task.Task`): ReGLA §3.5's multi-teacher distillation.

The harness trains :attr:`Built.model`, the :class:`~regla.distill.student.DistillStudent` (backbone, ladder heads
and the teacher-feature statistics as buffers, so checkpoints save and resume them). The teachers are held here,
frozen. One step (:meth:`DistillTask.step`): every teacher encodes the batch (its own normalisation and
resolution), its patch grid is resampled to the student's 1/16 grid, its class token taken (or, with ``addcls`` and
no class token, pooled from its patch tokens), and both standardised with the running statistics; the student's
heads predict them; the per-teacher losses (UNIC's, with Table 8's switches) are combined, with or without teacher
dropping. ``evaluate`` is the KNN (k=20) top-1 of the backbone's pooled features on a labelled bank and query
folder (Fig. 3), across ranks under DDP. ``export_state`` is the plain backbone: the heads are discarded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regla.checkpoints import WeightsInfo
from regla.config import Recipe
from regla.errors import UsageError
from regla.runs.task import Built

from .losses import aggregate_teachers, cosine_momentum, standardize, teacher_loss
from .release import build_teacher
from .student import DistillStudent, create_backbone
from .teachers import Teacher, resample_grid, resolve_teachers

__all__ = ["DistillTask"]

_logger = logging.getLogger("regla.distill")


def _core(model: nn.Module) -> DistillStudent:
    """The student inside a DDP (or compiled) wrapper."""
    while not isinstance(model, DistillStudent):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _image_folder(path: str, what: str, split: str | None = None) -> Path:
    from regla.data.errors import DataError
    from regla.data.folders import find_split

    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{what} {root} does not exist" if not root.exists() else f"{what} {root} is not a folder")
    if split:
        try:
            return find_split(root, split)
        except DataError:
            return root  # the folder of class folders itself
    return root


class DistillTask:
    """Multi-teacher distillation of one student (see the module docstring)."""

    command = "regla distill"
    score_key = "knn_top1"

    def __init__(self) -> None:
        self.cfg: Recipe | None = None
        self.teachers: dict[str, Teacher] = {}
        self.device = torch.device("cpu")
        self.total_steps = 1
        self.knn_loaders: tuple[Any, Any, int] | None = None
        self.knn_skipped: dict[str, str] = {}  # unreadable KNN images met so far -> the decoder's error

    # --- build ---------------------------------------------------------------------------------------------------

    def build(self, cfg: Recipe, device: torch.device, rank: int, world_size: int) -> Built:
        """Teachers first (every checkpoint is loaded and checked before anything else), then student and data."""
        self.cfg, self.device = cfg, device
        specs = resolve_teachers(cfg.task.teachers, cfg.task.teacher_checkpoints)
        self.teachers = {s.name: build_teacher(s, device) for s in specs}
        backbone = create_backbone(cfg.task.model, drop_path_rate=cfg.task.drop_path, **cfg.task.model_kwargs)
        mean, std = self._norm(backbone)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        widths = {n: self._widths(t) for n, t in self.teachers.items()}
        student = DistillStudent(backbone, widths, cfg.task.ladder_stages, cfg.task.grid_stride, cfg.task.head_hidden,
                                 cfg.task.head_last_hidden)
        student.freeze_unused(cfg.task.img_size)
        loader = self._train_loader(cfg, device, world_size, mean, std)
        self.total_steps = max(cfg.run.epochs * len(loader), 1)
        self.knn_loaders = self._knn(cfg, device, rank, world_size, mean, std)
        extra = {"teachers": {n: {"model": t.spec.model, "resolution": t.spec.resolution, "patch_dim": widths[n][0],
                                  "cls_dim": widths[n][1], "checkpoint": t.spec.checkpoint}
                              for n, t in self.teachers.items()},
                 "student": cfg.task.model, "mean": list(mean), "std": list(std)}
        arch = {"model": cfg.task.model, "teachers": {n: list(w) for n, w in widths.items()}, "stages": student.stages,
                "grid_stride": cfg.task.grid_stride, "head_hidden": cfg.task.head_hidden,
                "head_last_hidden": cfg.task.head_last_hidden}
        return Built(model=student, train_loader=loader, extra=extra, arch=arch)

    def _norm(self, backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
        defaults = getattr(backbone, "pretrained_cfg", None) or {}
        mean = tuple(self.cfg.task.mean or defaults.get("mean") or (0.485, 0.456, 0.406))
        std = tuple(self.cfg.task.std or defaults.get("std") or (0.229, 0.224, 0.225))
        return mean, std

    @torch.no_grad()
    def _widths(self, teacher: Teacher) -> tuple[int, int | None]:
        """(patch width, class-token width or None) of a teacher, from one probe image."""
        size = self.cfg.task.img_size
        cls, grid = teacher(torch.zeros(1, 3, size, size, device=self.device), self.mean, self.std)
        if not self.cfg.task.addcls:
            return grid.shape[1], None
        return grid.shape[1], (grid.shape[1] if cls is None else cls.shape[1])

    def _train_loader(self, cfg: Recipe, device: torch.device, world_size: int, mean: tuple, std: tuple):
        from timm.data import create_dataset, create_loader

        from regla.data.folders import SkipUnreadable, check_class_folders

        if not cfg.task.data_dir:
            raise UsageError("no training images: set data_dir (a folder of images in class folders)")
        folder = _image_folder(cfg.task.data_dir, "data_dir", cfg.task.train_split)
        check_class_folders(folder)
        dataset = SkipUnreadable(create_dataset("", root=str(folder), search_split=False, is_training=True))
        if len(dataset) < cfg.run.batch_size * world_size:
            raise UsageError(f"{folder}: {len(dataset)} images, fewer than one batch ({cfg.run.batch_size} x "
                             f"{world_size} processes)")
        return create_loader(
            dataset, input_size=(3, cfg.task.img_size, cfg.task.img_size), batch_size=cfg.run.batch_size,
            is_training=True, scale=tuple(cfg.task.scale), ratio=tuple(cfg.task.ratio), hflip=cfg.task.hflip,
            color_jitter=cfg.task.color_jitter, auto_augment=None, re_prob=0.0, interpolation=cfg.task.interpolation,
            mean=mean, std=std, num_workers=cfg.run.workers, distributed=world_size > 1, use_prefetcher=False,
            pin_memory=device.type == "cuda", persistent_workers=False)

    def _knn(self, cfg: Recipe, device: torch.device, rank: int, world: int, mean: tuple, std: tuple):
        """The bank and query loaders (this rank's shards) and the number of classes, or None without a bank."""
        if not cfg.task.knn_bank:
            return None
        from regla.data.errors import DataError
        from regla.data.folders import check_class_folders, class_map_for
        from regla.eval.knn import folder_batches

        bank_dir = _image_folder(cfg.task.knn_bank, "knn_bank")
        query_dir = _image_folder(cfg.task.knn_queries, "knn_queries")
        classes = check_class_folders(bank_dir)
        unknown = sorted(set(check_class_folders(query_dir)) - set(classes))
        if unknown:
            raise DataError(f"knn_queries {query_dir}: class(es) not in the bank: {', '.join(unknown[:10])}")
        class_map = class_map_for(classes)
        config = {"input_size": (3, cfg.task.img_size, cfg.task.img_size), "interpolation": cfg.task.interpolation,
                  "mean": mean, "std": std, "crop_pct": cfg.task.knn_crop_pct, "crop_mode": "center"}

        def loader(folder: Path, per_class: int | None):
            return folder_batches(folder, class_map, config, batch_size=cfg.task.knn_batch_size or cfg.run.batch_size,
                                  workers=min(cfg.run.workers, 4), device=device, rank=rank, world=world,
                                  per_class=per_class, seed=cfg.run.seed)

        return loader(bank_dir, cfg.task.knn_bank_per_class), loader(query_dir, None), len(classes)

    # --- one step ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def targets(self, student: DistillStudent, images: torch.Tensor, momentum: float | None
                ) -> dict[str, dict[str, torch.Tensor]]:
        """Every teacher's standardised targets on the student's grid: ``patch`` (B, N, C) and ``cls`` (B, C)."""
        grid = student.grid(images)
        out = {}
        for name, teacher in self.teachers.items():
            cls, patches = teacher(images, self.mean, self.std)
            want_cls = student.heads[name].cls is not None
            if want_cls and cls is None:  # addcls: a teacher without a class token gets its pooled patch tokens
                cls = patches.mean((2, 3))
            target = {"patch": resample_grid(patches, grid).flatten(2).transpose(1, 2)}
            if want_cls:
                target["cls"] = cls
            if self.cfg.task.standardize:
                stats = student.stats[name]
                target = {k: standardize(v, *stats.of(k), momentum) for k, v in target.items()}
            out[name] = target
        return out

    def momentum(self, student: DistillStudent) -> float:
        """This step's EMA momentum of the statistics (UNIC's cosine schedule over the whole run)."""
        return cosine_momentum(int(student.stat_updates), self.total_steps, self.cfg.task.tnorm_momentum_start,
                               self.cfg.task.tnorm_momentum_end)

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        images = images.to(device, non_blocking=True)
        student = _core(model)
        m = self.momentum(student)
        targets = self.targets(student, images, m)
        student.stat_updates += 1
        preds = model(images)
        c = self.cfg.task
        with torch.autocast(device.type, enabled=False):
            per_teacher, parts = {}, {}
            for name in targets:
                loss, p = teacher_loss(preds[name], targets[name], c.cos_weight, c.sl1_weight, c.onlycos,
                                       c.onlycos_tokens)
                per_teacher[name] = loss
                parts[f"loss_{name}"] = loss.detach().mean()
            loss, _ = aggregate_teachers(per_teacher, c.teacher_drop)
        parts["batch_size"] = images.shape[0]  # parts: the per-teacher losses (logged, plotted as losses)
        return loss, parts

    # --- evaluation and export -----------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """KNN top-1/top-5 of the backbone's average-pooled last-stage features (``knn_top1`` at the first k)."""
        if self.knn_loaders is None:
            return {}
        from regla.eval.knn import extract_features, knn_scores

        bank_loader, query_loader, classes = self.knn_loaders
        backbone = _core(model).backbone
        bank, bank_y = extract_features(backbone, bank_loader, self.device, "avg")
        queries, query_y = extract_features(backbone, query_loader, self.device, "avg")
        ks = self.cfg.task.knn_k
        s = knn_scores(bank, bank_y, queries, query_y, ks, self.cfg.task.knn_temperature, classes)
        out = {"knn_top1": s[f"top1_k{ks[0]}"], "knn_top5": s[f"top5_k{ks[0]}"]}
        out.update({f"knn_top1_k{k}": s[f"top1_k{k}"] for k in ks[1:]})
        out["knn_skipped"] = self._note_skipped(bank_loader, query_loader)
        return out

    def _note_skipped(self, *loaders: Any) -> int:
        """How many bank and query images could not be read (every rank's); each named once in the log."""
        from regla.eval.samples import gather_skipped

        skipped = gather_skipped({k: v for loader in loaders for k, v in loader.skipped.items()})
        new = [f for f in skipped if f not in self.knn_skipped]
        if new:
            _logger.warning("KNN evaluation: skipped %d unreadable image(s) of knn_bank / knn_queries: %s",
                            len(new), ", ".join(f"{f} ({skipped[f]})" for f in new[:5]) + (" ..." if len(new) > 5
                                                                                          else ""))
        self.knn_skipped.update(skipped)
        return len(skipped)

    def weights_info(self, model: nn.Module, cfg: Recipe) -> WeightsInfo | None:
        size = cfg.task.img_size
        mean, std = self._norm(_core(model).backbone)
        return WeightsInfo(model=cfg.task.model, num_classes=0, input_size=(3, size, size), mean=tuple(mean),
                           std=tuple(std), interpolation=cfg.task.interpolation, crop_pct=cfg.task.knn_crop_pct,
                           fused=False)

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return _core(model).export_state()
