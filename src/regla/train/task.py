"""``regla train`` as a task of the one run harness: ImageNet-style classification (ReGLA §4.1).

Reproduces the classification protocol of ReGLA §4.1 (ImageNet-1K at 224 px, 300 epochs, 20-epoch linear warm-up,
"training protocols from recent lightweight architectures [19, 46]": ConvNeXt/iFormer's AdamW, cosine, RandAugment,
Mixup/CutMix, label smoothing, random erasing, stochastic depth, EMA) with timm's components. The loop, resume,
DDP, AMP and checkpoints are :mod:`regla.runs.harness`'s; this module supplies data, model, loss and top-1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regla.checkpoints import CheckpointError, WeightsInfo, info_from_train_checkpoint, load_weights, read_weights
from regla.config import Recipe
from regla.data.folders import read_skipped
from regla.eval.loop import evaluate
from regla.runs.harness import RunError
from regla.runs.task import Built

from .data import Datasets, build_datasets, build_eval_loader, build_train_loader
from .deit_kd import DistillationLoss, load_teacher
from .modeling import create_student

_logger = logging.getLogger("regla.train")

SKIPPED = "skipped_images.txt"


def load_initial(model: nn.Module, path: str | Path) -> None:
    """Fine-tuning weights: every tensor of the model strictly, except the classifier, which starts fresh when the
    file has none (a backbone, e.g. a `regla distill` student: ReGLA §4.1.2's phase 2) or one of another size."""
    state = read_weights(path).state
    names = (model.pretrained_cfg or {}).get("classifier") or ()
    heads = tuple(f"{n}." for n in ((names,) if isinstance(names, str) else names)) + ("head.head_dist.",)
    own = model.state_dict()
    fresh = [k for k in own if k.startswith(heads) and (k not in state or state[k].shape != own[k].shape)]
    if fresh:
        state = {k: v for k, v in state.items() if k not in fresh}
        state.update({k: own[k] for k in fresh})
        _logger.info("%s: no classifier of this shape in the file; %s initialised fresh", path, ", ".join(fresh))
    load_weights(model, state, source=path)


class ClassificationTask:
    """Supervised training of a timm classifier (with DeiT's distillation head if asked)."""

    command = "regla train"
    score_key = "top1"

    def __init__(self) -> None:
        self.run_dir: Path = Path(".")
        self.cfg: Recipe | None = None
        self.data: Datasets | None = None
        self.device = torch.device("cpu")
        self.criterion: nn.Module | None = None
        self.mixup_fn: Any = None
        self.val_loader: Any = None
        self.skipped: list[str] = []
        self.arch: dict[str, Any] = {}

    def build(self, cfg: Recipe, device: torch.device, rank: int, world_size: int) -> Built:
        """Datasets (unreadable images skipped and listed), loaders, model (initial weights), loss."""
        self.cfg, self.device = cfg, device
        log = self.run_dir / SKIPPED
        if rank == 0 and not (self.run_dir / "last.pth").exists():  # a new run: no stale list from an old one
            log.unlink(missing_ok=True)
        self.data = data = build_datasets(cfg, skipped_log=log)
        use_prefetcher = device.type == "cuda" if cfg.task.prefetcher is None else bool(cfg.task.prefetcher)
        train_loader, self.mixup_fn = build_train_loader(cfg, data.train, device, world_size > 1, data.num_classes,
                                                         use_prefetcher)
        self.val_loader = build_eval_loader(cfg, data.val, device, use_prefetcher, rank=rank, world=world_size)
        if len(train_loader) < cfg.run.grad_accum:
            raise RunError(f"the training set ({len(data.train)} images) is smaller than one global batch "
                           f"({cfg.run.batch_size} x {world_size} processes x {cfg.run.grad_accum} accumulation)")
        model = create_student(cfg, data.num_classes)
        if cfg.task.initial_checkpoint:
            load_initial(model, cfg.task.initial_checkpoint)
        self.criterion = build_criterion(cfg, data.num_classes, device)
        self.arch = {"model": cfg.task.model, "num_classes": data.num_classes,
                     "distillation": cfg.task.distillation_type != "none", "in_chans": cfg.task.in_chans}
        return Built(model=model, train_loader=train_loader, extra={"class_map": data.class_map}, arch=self.arch)

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        """Mixup/CutMix, forward, loss (DeiT's distillation loss when a teacher is set)."""
        images, targets = batch
        if self.mixup_fn is not None:
            images, targets = self.mixup_fn(images, targets)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if self.cfg.run.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.criterion(images, model(images), targets), {"batch_size": images.shape[0]}

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """Validation loss, top-1 and top-5 over the whole validation set (shards summed over ranks)."""
        from regla.runs.distributed import amp_dtype

        m = evaluate(model, self.val_loader, self.device, amp_dtype=amp_dtype(self.cfg.run),
                     channels_last=self.cfg.run.channels_last)
        return {"val_loss": m["val_loss"], "top1": m["top1"], "top5": m["top5"]}

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def weights_info(self, model: nn.Module, cfg: Recipe) -> WeightsInfo:
        return info_from_train_checkpoint({"cfg": cfg.flat(), "arch": self.arch, "class_map": self.data.class_map})

    def check_resume(self, ckpt: dict[str, Any], cfg: Recipe, path: Any) -> None:
        check_arch(ckpt, cfg, self.data.num_classes, path, self.data.class_map,
                   allow_class_change=bool(cfg.task.allow_class_change))

    def annotate(self, row: dict[str, Any]) -> None:
        """The number of unreadable images skipped so far (named in ``skipped_images.txt``)."""
        skipped = read_skipped(self.run_dir / SKIPPED)
        new = sorted(set(skipped) - set(self.skipped))
        if new:
            _logger.warning("%d unreadable image(s) skipped so far (listed in %s); new: %s", len(skipped), SKIPPED,
                            ", ".join(new[:5]) + (" ..." if len(new) > 5 else ""))
        self.skipped = skipped
        row["skipped_images"] = len(skipped)

    def report(self, row: dict[str, Any]) -> None:
        ema = f" | EMA top-1 {row['top1_ema']:.2f}" if row.get("top1_ema") is not None else ""
        top1 = f"top-1 {row['top1']:.2f} top-5 {row['top5']:.2f}" if row.get("top1") is not None else "no eval"
        _logger.info("epoch %d: loss %.4f | %s%s | lr %.3g | %.0f img/s", row["epoch"], row["train_loss"], top1, ema,
                     row["lr"], row["train_img_s"])


def build_criterion(cfg: Recipe, num_classes: int, device: torch.device) -> DistillationLoss:
    """timm's SoftTargetCrossEntropy (mixup) / LabelSmoothingCrossEntropy, wrapped in DeiT's distillation loss."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.task.mixup > 0 or cfg.task.cutmix > 0:
        base = SoftTargetCrossEntropy()  # label smoothing is folded into the mixed targets
    elif cfg.task.smoothing > 0:
        base = LabelSmoothingCrossEntropy(smoothing=cfg.task.smoothing)
    else:
        base = torch.nn.CrossEntropyLoss()
    teacher = None
    if cfg.task.distillation_type != "none":
        teacher = load_teacher(cfg.task.teacher_model, cfg.task.teacher_path, num_classes, device)
    return DistillationLoss(base, teacher, cfg.task.distillation_type, cfg.task.distillation_alpha,
                            cfg.task.distillation_tau)


def check_arch(ckpt: dict[str, Any], cfg: Recipe, num_classes: int, path: str | Path,
               class_map: dict[str, int] | None = None, allow_class_change: bool = False) -> None:
    """Refuse a checkpoint from another architecture, class count or class list, naming both sides.

    ``allow_class_change`` accepts other class names (same count) deliberately, e.g. a renamed folder.
    """
    arch = ckpt["arch"]
    if arch["model"] != cfg.task.model:
        raise CheckpointError(f"{path} was trained as {arch['model']!r}; this run builds {cfg.task.model!r} "
                              f"(use --model {arch['model']} or another checkpoint)")
    if arch["num_classes"] != num_classes:
        raise CheckpointError(f"{path} has {arch['num_classes']} classes; this dataset has {num_classes}")
    if arch["distillation"] != (cfg.task.distillation_type != "none"):
        raise CheckpointError(f"{path} was trained with distillation={arch['distillation']}; this run differs")
    saved = ckpt.get("class_map")
    if saved and class_map and saved != class_map and not allow_class_change:
        diff = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(_names(saved), _names(class_map), strict=True))
                if a != b]
        raise CheckpointError(f"{path} was trained on other classes ({len(diff)} differ, e.g. "
                              f"{'; '.join(diff[:3])}): the classifier would be remapped silently; use the same "
                              "data, or --set allow_class_change=true to continue deliberately")


def _names(class_map: dict[str, int]) -> list[str]:
    return [n for n, _ in sorted(class_map.items(), key=lambda kv: kv[1])]
