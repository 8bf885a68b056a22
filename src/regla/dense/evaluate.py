"""Evaluation loops of the dense tasks: COCO AP of a detector, mIoU of a segmenter, on one or many ranks.

Under ``torch.distributed`` each rank takes every ``world_size``-th image; detections are gathered to rank 0,
scored there and the scores broadcast; the segmentation areas are summed with ``all_reduce``. Every rank returns
the same dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..eval.metrics import IoUMeter, coco_evaluate, coco_results
from .segmenter import infer_logits


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _indices(n: int, limit: int | None) -> list[int]:
    rank, world = _rank_world()
    return list(range(min(n, limit or n)))[rank::world]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def detect(model: nn.Module, dataset: Any, limit: int | None = None, show_bar: bool = False,
           cat_ids: list[int | None] | None = None) -> list[dict[str, Any]]:
    """COCO-format results of ``model`` on this rank's share of ``dataset`` (a :class:`CocoInstances`); label k is
    category ``cat_ids[k - 1]`` (default: the dataset's ids in order)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    results = []
    for i in tqdm(_indices(len(dataset), limit), desc="detect", unit="img", disable=not show_bar, leave=False):
        image, target = dataset[i]
        out = model([image.as_subclass(torch.Tensor).to(device)])[0]
        results += coco_results([(target["image_id"], out)], dataset.cat_ids if cat_ids is None else cat_ids)
    model.train(was_training)
    return results


def gather_results(results: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """All ranks' results on rank 0 (None elsewhere); the list itself without a process group."""
    import torch.distributed as dist

    rank, world = _rank_world()
    if world == 1:
        return results
    parts = [None] * world if rank == 0 else None
    dist.gather_object(results, parts, dst=0)
    return [r for part in parts for r in part] if rank == 0 else None


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    if _rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def evaluate_detector(model: nn.Module, dataset: Any, limit: int | None = None, show_bar: bool = False,
                      cat_ids: list[int | None] | None = None
                      ) -> tuple[dict[str, float], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """``bbox_*`` and ``segm_*`` COCO scores and the per-category AP50 ``{"bbox_AP50": {name: AP50 or None},
    "segm_AP50": {...}}`` (every rank), and the results (rank 0; [] elsewhere). ``cat_ids``: the category of each
    model label (:func:`regla.dense.cli_det.map_classes`), default the dataset's ids in order."""
    merged = gather_results(detect(model, dataset, limit, show_bar, cat_ids))
    scores = None
    if merged is not None:
        ids = [dataset.ids[i] for i in range(min(len(dataset), limit or len(dataset)))]
        values, per_class = coco_evaluate(dataset.coco, merged, image_ids=ids)
        scores = values, {f"{kind}_AP50": v for kind, v in per_class.items()}
    scores = broadcast(scores)
    return scores[0], scores[1], merged or []


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, dataset: Any, num_classes: int, mode: str = "whole", crop: int = 512,
                       stride: int = 341, limit: int | None = None, show_bar: bool = False) -> IoUMeter:
    """The mIoU meter of ``model`` over ``dataset`` (summed over ranks): images one at a time at the test scale,
    scores resized to the original label (mmseg's single-scale test)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    meter = IoUMeter(num_classes)
    for i in tqdm(_indices(len(dataset), limit), desc="segment", unit="img", disable=not show_bar, leave=False):
        image, label = dataset[i]
        logits = infer_logits(model, image[None].to(device), tuple(label.shape[-2:]), mode, crop, stride)
        meter.update(logits.argmax(1)[0], label)
    model.train(was_training)
    meter.all_reduce()
    return meter


def seg_scores(meter: IoUMeter, class_names: list[str] | None = None) -> Mapping[str, Any]:
    """mIoU, mAcc, aAcc and the per-class IoU (None where a class is absent from predictions and labels)."""
    names = class_names or [str(i) for i in range(meter.num_classes)]
    ious = meter.per_class_iou().tolist()
    per_class = {n: (None if v != v else round(v, 2)) for n, v in zip(names, ious, strict=True)}
    return {**meter.scores(), "per_class_IoU": per_class}
