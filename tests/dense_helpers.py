"""Helpers of the dense tests: the VOC demo set, recipes over it, and a few plain optimizer steps on a task
(the run harness does the real loop; these tests exercise build / step / evaluate directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def voc_root(tmp_path_factory: Any) -> Path:
    from regla.data.voc_demo import write_voc_demo

    return write_voc_demo(tmp_path_factory.mktemp("voc") / "voc_demo")


def det_cfg(root: Path, **overrides: Any) -> Any:
    """A tiny Mask R-CNN recipe on the VOC photo (regla_t, 32-channel FPN, 256 px)."""
    from regla.dense.config import DET_SCHEMA

    cfg = DET_SCHEMA.merge(DET_SCHEMA.defaults(), dict(
        backbone="regla_t", train_images=str(root / "images"), train_ann=str(root / "instances.json"),
        val_images=str(root / "images"), val_ann=str(root / "instances.json"), fpn_channels=32, min_size=256,
        max_size=352, batch_size=1, workers=0, lr=1e-3, iters_per_epoch=2, freeze_bn=False), "test")
    return DET_SCHEMA.recipe(DET_SCHEMA.merge(cfg, overrides, "test"), "test")


def seg_cfg(root: Path, **overrides: Any) -> Any:
    """A tiny Semantic FPN recipe on the VOC photo (regla_t, 32/16-channel FPN/head, 128 px crops)."""
    from regla.dense.config import SEG_SCHEMA

    cfg = SEG_SCHEMA.merge(SEG_SCHEMA.defaults(), dict(
        backbone="regla_t", train_images=str(root / "images"), train_labels=str(root / "labels"),
        val_images=str(root / "images"), val_labels=str(root / "labels"), num_classes=21, fpn_channels=32,
        head_channels=16, scale=[512, 128], crop_size=128, batch_size=2, workers=0, lr=1e-3, iters_per_epoch=2),
        "test")
    return SEG_SCHEMA.recipe(SEG_SCHEMA.merge(cfg, overrides, "test"), "test")


def fit(task: Any, cfg: Any, steps: int, built: Any = None) -> tuple[Any, list[float]]:
    """``steps`` AdamW steps of ``task`` on the CPU (epochs of the task's loader, ``set_epoch`` called); returns
    the built task and the losses."""
    from timm.optim import create_optimizer_v2

    built = built or task.build(cfg, torch.device("cpu"), 0, 1)
    model = built.model.train()
    opt = create_optimizer_v2(model, opt=cfg.run.opt, lr=cfg.run.lr, weight_decay=cfg.run.weight_decay)
    losses: list[float] = []
    epoch = 0
    while len(losses) < steps:
        built.train_loader.sampler.set_epoch(epoch)
        for batch in built.train_loader:
            loss, _ = task.step(model, batch, torch.device("cpu"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
            if len(losses) == steps:
                break
        epoch += 1
    return built, losses
