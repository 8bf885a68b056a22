"""Top-1/top-5 evaluation of a classifier over a loader (``regla train``'s validation and ``regla eval``)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn

from regla.runs.engine import autocast, reduce_mean, world_size


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
