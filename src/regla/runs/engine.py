"""One training epoch of any task (timm's train.py loop, reduced to what the recipes use).

The task's ``step(model, batch, device)`` returns the loss of one micro-batch and named parts to log; this loop adds
gradient accumulation (``grad_accum`` micro-batches per update, DDP gradient sync only on the last), AMP autocast
(bf16, or fp16 with timm's ``NativeScaler``), clipping, the per-update LR schedule, the EMA update after each
optimizer step, a tqdm bar with loss, images/s and learning rate, and a clean early stop at an update boundary.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint_sets import unwrap

#: ``step(model, batch, device) -> (loss, parts)``: a task's loss of one micro-batch.
StepFn = Callable[[nn.Module, Any, torch.device], "tuple[torch.Tensor, dict[str, Any]]"]


@dataclass
class StepContext:
    """What a training step needs besides the batch."""

    model: nn.Module
    step: StepFn
    optimizer: torch.optim.Optimizer
    device: torch.device
    scaler: Any = None  # timm NativeScaler for fp16, else None
    amp_dtype: torch.dtype | None = None
    clip_grad: float | None = None
    clip_mode: str = "norm"
    grad_accum: int = 1


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` or a no-op context when AMP is off."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward_loss(ctx: StepContext, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """The task's loss of one micro-batch, under autocast."""
    with autocast(ctx.device, ctx.amp_dtype):
        return ctx.step(ctx.model, batch, ctx.device)


def backward(ctx: StepContext, loss: torch.Tensor, need_update: bool) -> None:
    """Backward of ``loss / grad_accum``; on the last micro-batch clip and step (via the scaler for fp16)."""
    from timm.utils import dispatch_clip_grad

    loss = loss / ctx.grad_accum
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    if ctx.scaler is not None:
        ctx.scaler(loss, ctx.optimizer, clip_grad=ctx.clip_grad, clip_mode=ctx.clip_mode, parameters=params,
                   need_update=need_update)
    else:
        loss.backward()
        if need_update:
            if ctx.clip_grad:
                dispatch_clip_grad(params, ctx.clip_grad, mode=ctx.clip_mode)
            ctx.optimizer.step()
    if need_update:
        ctx.optimizer.zero_grad(set_to_none=True)


def no_sync(model: nn.Module, sync: bool):
    """DDP's ``no_sync`` for micro-batches that do not end an accumulation cycle."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(g["lr"] for g in optimizer.param_groups)


def batch_size_of(batch: Any, parts: dict[str, Any]) -> int:
    """Images in a batch: ``parts['batch_size']`` if the task gave it, else the length of the batch's first item."""
    if "batch_size" in parts:
        return int(parts["batch_size"])
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if hasattr(first, "shape") else len(first)


@dataclass
class EpochPosition:
    """Where an epoch is resumed from (a run stopped inside it) and how it may stop early."""

    start_batch: int = 0  # batches already done in this epoch
    meters: dict[str, list] = field(default_factory=dict)  # name -> [sum, count] of those batches
    seen: int = 0
    after_skip: Any = None  # called once the loader has been advanced past start_batch (restores the RNG)
    should_stop: Any = None  # called after each optimizer update; True stops the epoch there


class Meters:
    """Running means of the loss and the task's named parts; sums stay on the device (no sync per step)."""

    def __init__(self, saved: dict[str, list] | None = None):
        from timm.utils import AverageMeter

        self._new = AverageMeter
        self.meters: dict[str, Any] = {}
        for name, (total, count) in (saved or {}).items():  # exactly as they were (their float32 sums)
            m = self.meters[name] = AverageMeter()
            m.sum, m.count = torch.tensor(total, dtype=torch.float32), count

    def update(self, values: dict[str, Any], n: int) -> None:
        for name, v in values.items():
            if name == "batch_size" or v is None:
                continue
            v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
            self.meters.setdefault(name, self._new()).update(v, n)

    def avg(self, name: str) -> float:
        return float(self.meters[name].avg)

    def state(self) -> dict[str, list]:
        return {k: [float(m.sum), int(m.count)] for k, m in self.meters.items()}

    def means(self) -> dict[str, float]:
        return {k: float(m.avg) for k, m in self.meters.items()}


def train_one_epoch(ctx: StepContext, loader, epoch: int, *, scheduler=None, ema=None, updates_per_epoch: int,
                    sched_on_updates: bool = True, show_bar: bool = True, max_batches: int | None = None,
                    log_every: int = 50, position: EpochPosition | None = None) -> dict[str, Any]:
    """Train for one epoch; returns the mean loss and parts (``train_<name>``), the learning rate at the end,
    images/s and the epoch's time.

    On GPUs the loss is read back (a host sync) only every ``log_every`` steps, as timm's train.py does; the bar
    and the non-finite-loss check follow that rhythm. On CPU they run every step. With ``position``, the first
    ``start_batch`` batches are drawn but not trained on (same order and augmentation as the interrupted run), and
    ``should_stop()`` may end the epoch after any update: then ``stopped_at`` is the number of batches done.
    """
    from tqdm import tqdm

    pos = position or EpochPosition()
    ctx.model.train()
    meters = Meters(pos.meters)
    num_updates = epoch * updates_per_epoch + pos.start_batch // ctx.grad_accum
    n_batches = len(loader) if max_batches is None else min(max_batches, len(loader))
    n_batches -= n_batches % ctx.grad_accum  # leftover micro-batches that cannot fill an update are dropped
    if n_batches == 0:
        raise ValueError(f"an epoch has fewer batches ({len(loader)}) than grad_accum ({ctx.grad_accum})")
    every = 1 if ctx.device.type == "cpu" else max(1, log_every)
    bar = tqdm(total=n_batches, initial=pos.start_batch, desc=f"epoch {epoch + 1}", disable=not show_bar,
               leave=False, dynamic_ncols=True)
    seen, start, stopped_at = pos.seen, time.perf_counter(), None
    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        if i < pos.start_batch:  # done before the interruption
            if i + 1 == pos.start_batch and pos.after_skip is not None:
                pos.after_skip()
            continue
        need_update = (i + 1) % ctx.grad_accum == 0
        with no_sync(ctx.model, need_update):
            loss, parts = forward_loss(ctx, batch)
            backward(ctx, loss, need_update)
        n = batch_size_of(batch, parts)
        meters.update({"loss": loss, **parts}, n)
        seen += n
        if need_update:
            num_updates += 1
            if ema is not None:
                ema.update(unwrap(ctx.model), step=num_updates)
            if scheduler is not None and sched_on_updates:
                scheduler.step_update(num_updates=num_updates)
        if (i + 1) % every == 0 or i + 1 == n_batches:
            _check_finite(loss, epoch, i)
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{meters.avg('loss'):.4f}", img_s=f"{rate:.0f}",
                            lr=f"{current_lr(ctx.optimizer):.2e}")
        bar.update(1)
        if need_update and i + 1 < n_batches and pos.should_stop is not None and pos.should_stop():
            stopped_at = i + 1
            break
    bar.close()
    elapsed = time.perf_counter() - start
    if stopped_at is not None:
        return {"stopped_at": stopped_at, "meters": meters.state(), "seen": seen}
    means = {f"train_{k}": reduce_mean(v, ctx.device) for k, v in meters.means().items()}
    return {**means, "lr": current_lr(ctx.optimizer), "train_img_s": seen / max(elapsed, 1e-9) * world_size(),
            "epoch_time_s": elapsed}


def _check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at epoch {epoch + 1}, step {step}: stopping; the last "
                                 "checkpoint is intact (lower the learning rate, or use bf16 instead of fp16)")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a scalar over ranks (the value itself when not distributed)."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()
