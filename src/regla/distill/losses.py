"""UNIC's distillation losses and teacher handling, with ReGLA's Table 8 switches (§3.5).

Per teacher and token type (UNIC ``modeling/losses.py``): ``cos_weight * (1 - cos) + sl1_weight * smooth_l1``,
the patch loss averaged over tokens, then the types (patch, class token) averaged per image. ``onlycos`` removes the
smooth-L1 term: on patch tokens only (§3.5: "The smooth-L1 loss for patch tokens is removed, while other settings
align with UNIC", our default) or on both types (``onlycos_tokens: all``, Table 8's "only use cosine similarity
loss"). Teachers are combined per image (UNIC ``teacher_dropping.py``): with ``teacher_drop = p > 0`` every teacher
but the one with the largest loss is dropped with probability p; the kept (teacher, image) losses are averaged.
ReGLA drops no teacher (§3.5, ``teacher_drop: 0``): every teacher contributes every step.

Teacher features are standardised per teacher, token type and channel with running statistics (UNIC
``utils.standard_normalize``): the batch mean and std (gathered over ranks) update an EMA whose momentum follows a
cosine from 1.0 to 0.001 over training (UNIC ``tnorm_ema_schedule``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["aggregate_teachers", "batch_moments", "cosine_momentum", "standardize", "teacher_loss", "token_loss"]


def token_loss(pred: torch.Tensor, target: torch.Tensor, cos_weight: float, sl1_weight: float,
               use_sl1: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-image loss of one token type: (B,) for class tokens (B, C), token-averaged for patches (B, N, C)."""
    cos = 1.0 - F.cosine_similarity(pred, target, dim=-1)
    sl1 = F.smooth_l1_loss(pred, target, reduction="none", beta=1.0).mean(-1)
    loss = cos_weight * cos + (sl1_weight * sl1 if use_sl1 else 0.0)
    if loss.ndim == 2:
        loss, cos, sl1 = loss.mean(1), cos.mean(1), sl1.mean(1)
    return loss, {"cos": cos.detach().mean(), "sl1": sl1.detach().mean()}


def teacher_loss(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor], cos_weight: float = 0.5,
                 sl1_weight: float = 0.5, onlycos: bool = False, onlycos_tokens: str = "patch"
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One teacher's per-image loss (B,): the mean over the token types both sides have (``patch``, ``cls``)."""
    losses, parts = [], {}
    for kind in ("patch", "cls"):
        if kind not in pred or kind not in target:
            continue
        drop_sl1 = onlycos and (kind == "patch" or onlycos_tokens == "all")
        loss, p = token_loss(pred[kind].float(), target[kind].float(), cos_weight, sl1_weight, not drop_sl1)
        losses.append(loss)
        parts.update({f"{kind}_{k}": v for k, v in p.items()})
    return torch.stack(losses, 1).mean(1), parts


def aggregate_teachers(losses: dict[str, torch.Tensor], drop_prob: float = 0.0
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """UNIC's teacher dropping: the loss and each teacher's share of the kept (teacher, image) pairs.

    ``losses`` maps teacher -> per-image loss (B,). With ``drop_prob`` 0 every pair is kept (the plain mean).
    The random draw uses torch's generator, so a resumed run draws what the uninterrupted one did.
    """
    names = sorted(losses)
    stacked = torch.stack([losses[n] for n in names])  # (T, B)
    keep = torch.ones_like(stacked)
    if drop_prob > 0 and len(names) > 1:
        with torch.no_grad():
            worst = stacked.argmax(0, keepdim=True)
            rows = torch.arange(len(names), device=stacked.device).view(-1, 1)
            drawn = torch.rand(stacked.shape, device="cpu").to(stacked.device) >= drop_prob
            keep = (drawn | (rows == worst)).to(stacked.dtype)
    coeffs = keep / keep.sum()
    loss = (coeffs * stacked).sum()
    return loss, {n: c for n, c in zip(names, coeffs.sum(1).detach(), strict=True)}


def cosine_momentum(step: int, total: int, start: float = 1.0, end: float = 0.001) -> float:
    """UNIC's cosine schedule of the statistics' EMA momentum: ``start`` at step 0 to ``end`` at ``total``."""
    if total <= 1:
        return end
    t = min(max(step, 0), total - 1) / (total - 1)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of the rows of ``x`` (N, C) over every rank: sums all-reduced in float64,
    so ranks exchange 2C+1 numbers instead of their features."""
    import torch.distributed as dist

    x64 = x.double()
    stats = torch.cat([x64.sum(0), (x64 * x64).sum(0), x64.new_tensor([x.shape[0]])])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    c = x.shape[1]
    n = stats[-1]
    mean = stats[:c] / n
    var = (stats[c:2 * c] - n * mean * mean) / (n - 1).clamp(min=1)
    return mean.float(), var.clamp(min=0).sqrt().float()


@torch.no_grad()
def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, momentum: float | None,
                eps: float = 1e-6) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` per channel (last dim) with running statistics, updated first when training.

    ``momentum`` None: use the statistics as they are (evaluation). Otherwise the batch's statistics over every
    rank (and every token, for patches) enter the EMA with weight ``momentum`` before ``x`` is standardised, so
    the first step (momentum 1) standardises with its own batch; UNIC standardises before updating, which makes
    its first step's targets raw features (docs/distillation.md).
    """
    x = x.float()
    if momentum is not None:
        batch_mean, batch_std = batch_moments(x.reshape(-1, x.shape[-1]))
        mean.mul_(1.0 - momentum).add_(batch_mean, alpha=momentum)
        std.mul_(1.0 - momentum).add_(batch_std + eps, alpha=momentum)
    return (x - mean) / (std + eps)
