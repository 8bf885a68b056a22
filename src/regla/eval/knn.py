"""Weighted k-NN classification on frozen features, as DINO does it (ReGLA Fig. 3/4 and Table 8 report it, k=20).

Features are pooled per image and L2-normalised; similarity is the cosine (a dot product); the ``k`` most similar
bank images vote for their class with weight ``exp(sim / T)``, ``T = 0.07``; the class with the largest vote wins.
Several ``k`` are scored from one search (the neighbours of the largest ``k``, sorted).

The search is memory-bounded: queries go ``query_chunk`` at a time against ``bank_chunk`` bank rows at a time,
keeping a running top-k, so an ImageNet-sized bank never forms a full similarity matrix. Under torchrun each rank
holds its shard of the bank and of the queries: the queries are gathered on every rank, each rank searches its own
bank shard, and the per-rank top-k lists are gathered and merged, so every rank ends with the same answer.

Ties: the neighbour order is ``torch.topk``'s; class ranks break equal votes by the lower class index, so top-1
and top-5 are a pure function of the votes (:func:`class_ranks`). Top-5 counts the true class among the first
``min(5, k)`` classes, as DINO's ``eval_knn.py`` does: with ``k < 5`` neighbours at most ``k`` classes have a vote,
so top-5 is then top-k.

The bank and the queries are folders of class folders read by :func:`folder_batches` (``regla knn`` and
``regla distill``'s evaluation), optionally a seeded few-shot bank (:func:`few_shot_indices`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_K", "DEFAULT_T", "Neighbours", "class_ranks", "extract_features", "few_shot_indices",
           "folder_batches", "knn_scores", "knn_search", "knn_votes", "pool_features"]

DEFAULT_K = 20
DEFAULT_T = 0.07


@dataclass
class Neighbours:
    """The ``k`` nearest bank rows of each query, most similar first: similarities and bank labels (Q, k)."""

    sims: torch.Tensor
    labels: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------------------------


def pool_features(model: torch.nn.Module, x: torch.Tensor, pool: str = "auto") -> torch.Tensor:
    """One vector per image from ``model.forward_features``.

    ``avg``: mean over the spatial map (NCHW) or over the patch tokens (a ViT's prefix tokens left out).
    ``prelogits``: ``forward_head(..., pre_logits=True)`` (what the classifier sees: a ViT's class token).
    ``auto``: ``avg`` for a feature map, ``prelogits`` for tokens. A distilled ReGLA uses ``avg``: its pre-logits
    layer is not trained by distillation.
    """
    feats = model.forward_features(x)
    if pool == "auto":
        pool = "avg" if feats.ndim == 4 else "prelogits"
    if pool == "prelogits":
        return model.forward_head(feats, pre_logits=True).flatten(1)
    if feats.ndim == 4:
        return feats.mean((2, 3))
    if feats.ndim == 3:
        return feats[:, int(getattr(model, "num_prefix_tokens", 0)):].mean(1)
    return feats.flatten(1)


@torch.no_grad()
def extract_features(model: torch.nn.Module, batches: Iterable, device: torch.device, pool: str = "auto",
                     amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised pooled features (float32) and labels of every ``(images, labels)`` batch, on ``device``."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for images, targets in batches:
            images = images.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                f = pool_features(model, images, pool)
            feats.append(F.normalize(f.float(), dim=1))
            labels.append(targets.to(device).long())
    finally:
        model.train(was_training)
    if not feats:
        return torch.empty(0, 0, device=device), torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(feats), torch.cat(labels)


# ---------------------------------------------------------------------------------------------------------------
# Search and votes
# ---------------------------------------------------------------------------------------------------------------


def _merge(best: Neighbours | None, sims: torch.Tensor, labels: torch.Tensor, k: int) -> Neighbours:
    """The top ``k`` of a running list and a new candidate list (both most-similar first)."""
    if best is not None:
        sims, labels = torch.cat([best.sims, sims], 1), torch.cat([best.labels, labels], 1)
    top, idx = sims.topk(min(k, sims.shape[1]), dim=1, largest=True, sorted=True)
    return Neighbours(top, labels.gather(1, idx))


def knn_search(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int,
               query_chunk: int = 1024, bank_chunk: int = 65536) -> Neighbours:
    """The ``k`` most similar bank rows of each query (dot products of normalised rows), chunked both ways.

    Peak memory is ``query_chunk x (bank_chunk + k)`` similarities whatever the bank's size.
    """
    if bank.shape[0] == 0 or queries.shape[0] == 0:
        empty = queries.new_empty(queries.shape[0], 0)
        return Neighbours(empty, empty.long())
    out_sims, out_labels = [], []
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0:q0 + query_chunk]
        best = None
        for b0 in range(0, bank.shape[0], bank_chunk):
            sims = q @ bank[b0:b0 + bank_chunk].T
            labels = bank_labels[b0:b0 + bank_chunk].expand(q.shape[0], -1)
            best = _merge(best, sims, labels, k)
        out_sims.append(best.sims)
        out_labels.append(best.labels)
    return Neighbours(torch.cat(out_sims), torch.cat(out_labels))


def knn_votes(nb: Neighbours, k: int, num_classes: int, temperature: float = DEFAULT_T) -> torch.Tensor:
    """Class votes (Q, C): the first ``k`` neighbours each add ``exp(sim / T)`` to their class (DINO)."""
    sims, labels = nb.sims[:, :k], nb.labels[:, :k]
    votes = torch.zeros(sims.shape[0], num_classes, dtype=sims.dtype, device=sims.device)
    return votes.scatter_add_(1, labels, (sims / temperature).exp())


def class_ranks(votes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The rank of each query's true class by vote (0 = predicted): classes with a larger vote, plus those with an
    equal vote and a lower index."""
    true = votes.gather(1, targets.view(-1, 1))
    index = torch.arange(votes.shape[1], device=votes.device).view(1, -1)
    ahead = (votes > true) | ((votes == true) & (index < targets.view(-1, 1)))
    return ahead.sum(1)


def knn_scores(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
               ks: Sequence[int] = (DEFAULT_K,), temperature: float = DEFAULT_T, num_classes: int | None = None,
               query_chunk: int = 1024, bank_chunk: int = 65536) -> dict[str, float]:
    """KNN top-1 and top-5 in percent for each ``k`` (``top1_k20`` ...), plus ``n`` (queries) and ``bank`` (size).

    Top-5 is the true class among the first ``min(5, k)`` classes by vote (DINO's ``eval_knn.py``).

    Inputs are this process's shard; under an initialised process group the search runs across every rank
    (module docstring) and every rank returns the same numbers.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"k must be >= 1, got {ks}")
    world = _world()
    all_queries, all_query_labels = _gather_rows(queries), _gather_rows(query_labels)
    bank_size = int(_sum(bank.shape[0], bank.device))
    if num_classes is None:
        num_classes = int(_max(int(max(bank_labels.max().item() if bank_labels.numel() else -1,
                                       query_labels.max().item() if query_labels.numel() else -1)) + 1,
                               bank.device))
    nb = knn_search(all_queries, bank, bank_labels, ks[-1], query_chunk, bank_chunk)
    if world > 1:
        nb = _merge_ranks(nb, ks[-1])
    out: dict[str, float] = {"n": int(all_queries.shape[0]), "bank": bank_size}
    for k in ks:
        ranks = class_ranks(knn_votes(nb, k, num_classes, temperature), all_query_labels)
        n = max(ranks.numel(), 1)
        out[f"top1_k{k}"] = 100.0 * (ranks < 1).sum().item() / n
        out[f"top5_k{k}"] = 100.0 * (ranks < min(5, k)).sum().item() / n  # DINO: top-5 is top-k for k < 5
    return out


# ---------------------------------------------------------------------------------------------------------------
# Across ranks
# ---------------------------------------------------------------------------------------------------------------


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(value: int, device: torch.device, op: str) -> int:
    if _world() == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], device=device, dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return int(t.item())


def _sum(value: int, device: torch.device) -> int:
    return _all_reduce(value, device, "sum")


def _max(value: int, device: torch.device) -> int:
    return _all_reduce(value, device, "max")


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (shards may differ in length by padding to the longest)."""
    if _world() == 1:
        return t
    import torch.distributed as dist

    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(_world())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def _merge_ranks(nb: Neighbours, k: int) -> Neighbours:
    """Merge each rank's top-k lists (same queries, different bank shards) into the global top-k."""
    import torch.distributed as dist

    width = _max(nb.sims.shape[1], nb.sims.device)
    sims = F.pad(nb.sims, (0, width - nb.sims.shape[1]), value=float("-inf"))
    labels = F.pad(nb.labels, (0, width - nb.labels.shape[1]), value=0)
    all_sims = [torch.empty_like(sims) for _ in range(_world())]
    all_labels = [torch.empty_like(labels) for _ in range(_world())]
    dist.all_gather(all_sims, sims.contiguous())
    dist.all_gather(all_labels, labels.contiguous())
    merged = _merge(None, torch.cat(all_sims, 1), torch.cat(all_labels, 1), k)
    keep = torch.isfinite(merged.sims).all(0)  # a bank smaller than k in total: drop the padding columns
    return Neighbours(merged.sims[:, keep], merged.labels[:, keep])


def few_shot_indices(targets: list[int], per_class: int, seed: int = 0) -> list[int]:
    """``per_class`` indices of each class drawn with a fixed seed (a few-shot bank), in index order."""
    import random

    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    return sorted(i for c in sorted(by_class) for i in rng.sample(by_class[c], min(per_class, len(by_class[c]))))


def folder_batches(folder: Path, class_map: dict[str, int], config: dict[str, Any], *, batch_size: int,
                   workers: int, device: Any, rank: int = 0, world: int = 1, per_class: int | None = None,
                   seed: int = 0, strict: bool = False) -> Any:
    """``(images, labels)`` batches of a folder of class folders (this rank's shard) with the evaluation transform
    of ``config`` (a timm data config); ``per_class``: only that many images per class (seeded). Unreadable images
    are left out and recorded in the result's ``skipped`` (``strict``: the first one is an error)."""
    from timm.data import create_dataset

    from regla.data.folders import Subset

    from .samples import CountingBatches, build_loader, wrap_dataset

    ds = create_dataset("", root=str(folder), search_split=False, class_map=class_map)
    view = wrap_dataset(ds)
    if per_class:
        view = Subset(view, few_shot_indices([t for _, t in ds.reader.samples], per_class, seed))
    return CountingBatches(build_loader(view, config, batch_size=batch_size, workers=workers, device=device,
                                        rank=rank, world=world), strict=strict)
