"""One training epoch and one evaluation pass (timm's train.py loop, reduced to what the recipes use).

Gradient accumulation (``grad_accum`` micro-batches per update, DDP gradient sync only on the last), AMP autocast
(bf16, or fp16 with timm's ``NativeScaler``), channels-last inputs, per-update LR schedule, EMA update after each
optimizer step, and a tqdm bar with loss, images/s and learning rate.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import unwrap


@dataclass
class StepContext:
    """What a training step needs besides the batch."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    scaler: Any = None  # timm NativeScaler for fp16, else None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    clip_grad: float | None = None
    clip_mode: str = "norm"
    grad_accum: int = 1


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` or a no-op context when AMP is off."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward_loss(ctx: StepContext, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of one micro-batch (DeiT distillation loss when the criterion carries a teacher)."""
    images = images.to(ctx.device, non_blocking=True)
    targets = targets.to(ctx.device, non_blocking=True)
    if ctx.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(ctx.device, ctx.amp_dtype):
        outputs = ctx.model(images)
        return ctx.criterion(images, outputs, targets)


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


@dataclass
class EpochPosition:
    """Where an epoch is resumed from (a run stopped inside it) and how it may stop early."""

    start_batch: int = 0  # batches already done in this epoch
    loss_sum: float = 0.0  # the loss meter of those batches
    loss_count: int = 0
    seen: int = 0
    after_skip: Any = None  # called once the loader has been advanced past start_batch (restores the RNG)
    should_stop: Any = None  # called after each optimizer update; True stops the epoch there


def train_one_epoch(ctx: StepContext, loader, epoch: int, *, mixup_fn=None, scheduler=None, ema=None,
                    updates_per_epoch: int, sched_on_updates: bool = True, show_bar: bool = True,
                    max_batches: int | None = None, log_every: int = 50,
                    position: EpochPosition | None = None) -> dict[str, Any]:
    """Train for one epoch; returns mean loss, learning rate at the end, images/s and the epoch's time.

    On GPUs the loss is read back (a host sync) only every ``log_every`` steps, as timm's train.py does; the bar
    and the non-finite-loss check follow that rhythm. On CPU they run every step. With ``position``, the first
    ``start_batch`` batches are drawn but not trained on (same order and augmentation as the interrupted run), and
    ``should_stop()`` may end the epoch after any update: then ``stopped_at`` is the number of batches done.
    """
    from timm.utils import AverageMeter
    from tqdm import tqdm

    pos = position or EpochPosition()
    ctx.model.train()
    losses = AverageMeter()  # accumulates device tensors: no sync per step
    if pos.loss_count:  # the meter exactly as it was (its float32 sum), so the epoch's mean loss is the same
        losses.sum, losses.count = torch.tensor(pos.loss_sum, dtype=torch.float32), pos.loss_count
    num_updates = epoch * updates_per_epoch + pos.start_batch // ctx.grad_accum
    n_batches = len(loader) if max_batches is None else min(max_batches, len(loader))
    n_batches -= n_batches % ctx.grad_accum  # leftover micro-batches that cannot fill an update are dropped
    if n_batches == 0:
        raise ValueError(f"an epoch has fewer batches ({len(loader)}) than grad_accum ({ctx.grad_accum})")
    every = 1 if ctx.device.type == "cpu" else max(1, log_every)
    bar = tqdm(total=n_batches, initial=pos.start_batch, desc=f"epoch {epoch + 1}", disable=not show_bar,
               leave=False, dynamic_ncols=True)
    seen, start, stopped_at = pos.seen, time.perf_counter(), None
    for i, (images, targets) in enumerate(loader):
        if i >= n_batches:
            break
        if i < pos.start_batch:  # done before the interruption
            if i + 1 == pos.start_batch and pos.after_skip is not None:
                pos.after_skip()
            continue
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        need_update = (i + 1) % ctx.grad_accum == 0
        with no_sync(ctx.model, need_update):
            loss = forward_loss(ctx, images, targets)
            backward(ctx, loss, need_update)
        losses.update(loss.detach().float(), images.shape[0])
        seen += images.shape[0]
        if need_update:
            num_updates += 1
            if ema is not None:
                ema.update(unwrap(ctx.model), step=num_updates)
            if scheduler is not None and sched_on_updates:
                scheduler.step_update(num_updates=num_updates)
        if (i + 1) % every == 0 or i + 1 == n_batches:
            _check_finite(loss, epoch, i)
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{float(losses.avg):.4f}", img_s=f"{rate:.0f}", lr=f"{current_lr(ctx.optimizer):.2e}")
        bar.update(1)
        if need_update and i + 1 < n_batches and pos.should_stop is not None and pos.should_stop():
            stopped_at = i + 1
            break
    bar.close()
    elapsed = time.perf_counter() - start
    if stopped_at is not None:
        return {"stopped_at": stopped_at, "loss_sum": float(losses.sum), "loss_count": int(losses.count),
                "seen": seen}
    return {"train_loss": reduce_mean(float(losses.avg), ctx.device), "lr": current_lr(ctx.optimizer),
            "train_img_s": seen / max(elapsed, 1e-9) * world_size(), "epoch_time_s": elapsed}


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


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, *, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, show_bar: bool = False, desc: str = "eval") -> dict[str, float]:
    """Top-1/top-5 (timm's ``accuracy``) and loss over ``loader``, summed over ranks (disjoint shards)."""
    from timm.utils import accuracy
    from tqdm import tqdm

    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1 count, top5 count, n
    seen, start = 0, time.perf_counter()
    for images, targets in tqdm(loader, desc=desc, disable=not show_bar, leave=False, dynamic_ncols=True):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        logits = logits.float()
        acc1, acc5 = accuracy(logits, targets, topk=(1, 5))
        bs = targets.numel()
        totals[0] += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        totals[1] += torch.round(acc1.double() * bs / 100.0)  # percentages back to counts
        totals[2] += torch.round(acc5.double() * bs / 100.0)
        totals[3] += bs
        seen += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if world_size() > 1:
        dist.all_reduce(totals)
    n = max(totals[3].item(), 1.0)
    return {"val_loss": totals[0].item() / n, "top1": 100.0 * totals[1].item() / n,
            "top5": 100.0 * totals[2].item() / n, "n": int(totals[3].item()),
            "img_s": reduce_mean(seen / max(elapsed, 1e-9), device) * world_size()}
