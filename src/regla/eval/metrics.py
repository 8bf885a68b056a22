"""Scores of the dense tasks: COCO box/mask AP with pycocotools, mIoU as mmseg computes it.

* :func:`coco_results` turns torchvision detector outputs into COCO-format results (``bbox`` as x, y, w, h;
  ``segmentation`` as RLE of the mask thresholded at 0.5) and :func:`coco_scores` scores them with ``COCOeval``:
  AP, AP50, AP75, APs, APm, APl in percent, keyed ``bbox_AP`` ... ``segm_APl``; :func:`coco_evaluate` adds each
  category's AP50 (from ``COCOeval``'s precision array). ``segm`` is scored on the masks alone (no ``bbox``), so
  that its size ranges use mask areas, as torchvision's reference evaluation, detectron2 and mmdet do.
* :class:`IoUMeter` accumulates per-class intersections and unions over the whole set (mmseg's
  ``intersect_and_union`` / ``total_intersect_and_union``); IoU of a class = intersection / union, classes absent
  from both prediction and label (union 0) are excluded from the mean; pixel accuracy aAcc = correct / labelled;
  labels outside the classes and sets without a labelled pixel are scored as mmseg scores them (NaN for the latter).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IGNORE_INDEX = 255


def coco_results(outputs: Iterable[tuple[int, Mapping[str, torch.Tensor]]], cat_ids: Sequence[int | None],
                 masks: bool = True, mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """COCO results for ``(image_id, output)`` pairs (torchvision's ``boxes``/``labels``/``scores``/``masks``);
    label k (1..K) is category ``cat_ids[k - 1]``; a label with no category (None, or beyond the list) is dropped."""
    from pycocotools import mask as mask_utils

    results = []
    for image_id, out in outputs:
        boxes = out["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        labels, scores = out["labels"].tolist(), out["scores"].tolist()
        rles = [None] * len(labels)
        if masks and "masks" in out:
            binary = (out["masks"].detach().cpu()[:, 0] > mask_threshold).numpy().astype(np.uint8)
            rles = [mask_utils.encode(np.asfortranarray(m)) for m in binary]
        for box, label, score, rle in zip(xywh, labels, scores, rles, strict=True):
            cat = cat_ids[label - 1] if 0 < label <= len(cat_ids) else None
            if cat is None:  # a class of the model's that the data does not have
                continue
            res = {"image_id": int(image_id), "category_id": int(cat),
                   "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)}
            if rle is not None:
                res["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            results.append(res)
    return results


def _results_for(results: list[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """Copies of ``results`` for ``loadRes`` (which adds keys to the dicts it gets); for ``segm``, without ``bbox``.

    Given a ``bbox``, ``loadRes`` takes a result's area from its box, and ``COCOeval`` sorts detections into
    small/medium/large by that area: mask APs/APm/APl would then depend on the boxes. Without it the area is the
    mask's, as in torchvision's reference ``coco_eval.py``, detectron2 and mmdet, which give masks alone.
    """
    if iou_type != "segm":
        return [dict(r) for r in results]
    missing = sum("segmentation" not in r for r in results)
    if missing:
        raise ValueError(f"segm evaluation needs a 'segmentation' in every result; {missing} of {len(results)} "
                         "have none (were the outputs from a model without masks?)")
    return [{k: v for k, v in r.items() if k != "bbox"} for r in results]


def _cocoeval(coco_gt: Any, results: list[dict[str, Any]], iou_type: str, image_ids: Sequence[int] | None) -> Any:
    """An evaluated, accumulated and summarized ``COCOeval`` (its printing silenced)."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco_gt.loadRes(_results_for(results, iou_type))
        ev = COCOeval(coco_gt, dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def per_class_ap50(ev: Any) -> dict[str, float | None]:
    """AP50 in percent of each category of an accumulated ``COCOeval``, keyed by category name: the mean of
    ``eval["precision"]`` at IoU 0.5, area "all", maxDets 100 over the recall thresholds, -1 entries (no ground
    truth of the category in the evaluated images) left out; None where every entry is -1."""
    p = ev.params
    t = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))
    a, m = list(p.areaRngLbl).index("all"), list(p.maxDets).index(100)
    precision = ev.eval["precision"]
    out: dict[str, float | None] = {}
    for k, cat_id in enumerate(p.catIds):
        values = precision[t, :, k, a, m]
        values = values[values > -1]
        out[ev.cocoGt.cats[cat_id]["name"]] = float(values.mean()) * 100 if values.size else None
    return out


def coco_evaluate(coco_gt: Any, results: list[dict[str, Any]], iou_types: Sequence[str] = ("bbox", "segm"),
                  image_ids: Sequence[int] | None = None) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """``COCOeval`` of ``results`` against ``coco_gt`` for each IoU type: the scores ``{type}_{AP,AP50,...}`` in
    percent and the per-category AP50 ``{type: {name: AP50 or None}}`` (:func:`per_class_ap50`).

    With no results every score is 0 (pycocotools refuses an empty result list), and so is the AP50 of every
    category with ground truth. ``image_ids`` restricts the evaluation (default: every image of ``coco_gt``).
    """
    scores: dict[str, float] = {}
    per_class: dict[str, dict[str, Any]] = {}
    for iou_type in iou_types:
        if not results:
            scores.update({f"{iou_type}_{k}": 0.0 for k in COCO_STATS})
            ids = set(image_ids) if image_ids is not None else set(coco_gt.imgs)
            present = {a["category_id"] for a in coco_gt.dataset["annotations"] if a["image_id"] in ids}
            per_class[iou_type] = {c["name"]: (0.0 if c["id"] in present else None)
                                   for c in (coco_gt.cats[i] for i in sorted(coco_gt.cats))}
            continue
        ev = _cocoeval(coco_gt, results, iou_type, image_ids)
        # a stat of -1 means "no ground truth in this area range": reported as 0
        stats = zip(COCO_STATS, ev.stats[:6], strict=True)
        scores.update({f"{iou_type}_{k}": max(float(v), 0.0) * 100 for k, v in stats})
        per_class[iou_type] = per_class_ap50(ev)
    return scores, per_class


def coco_scores(coco_gt: Any, results: list[dict[str, Any]], iou_types: Sequence[str] = ("bbox", "segm"),
                image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """The scores of :func:`coco_evaluate` alone."""
    return coco_evaluate(coco_gt, results, iou_types, image_ids)[0]


class IoUMeter:
    """Per-class intersection, union, prediction and label areas summed over a whole set (mmseg's mIoU)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        n = self.num_classes
        self.intersect, self.area_pred, self.area_label = (torch.zeros(n, dtype=torch.float64) for _ in range(3))

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add one prediction/label pair (or a batch) of class indices, as mmseg's ``intersect_and_union``: pixels
        whose label is the ignore index are left out, predictions included. A label outside 0..num_classes-1 that
        is not the ignore index keeps its pixel: the prediction there counts (towards its class's union), the
        label does not (mmseg's ``torch.histc`` drops values outside the classes)."""
        pred, label = pred.detach().cpu().long().flatten(), label.detach().cpu().long().flatten()
        keep = label != self.ignore_index
        pred, label = pred[keep], label[keep]
        n = self.num_classes
        label_in, pred_in = (label >= 0) & (label < n), (pred >= 0) & (pred < n)
        self.intersect += torch.bincount(label[label_in & (pred == label)], minlength=n)[:n].double()
        self.area_pred += torch.bincount(pred[pred_in], minlength=n)[:n].double()
        self.area_label += torch.bincount(label[label_in], minlength=n)[:n].double()

    @property
    def union(self) -> torch.Tensor:
        return self.area_pred + self.area_label - self.intersect

    def all_reduce(self) -> None:
        """Sum the areas over the ranks of an initialised process group (no-op otherwise)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for t in (self.intersect, self.area_pred, self.area_label):
                buf = t.to(_dist_device())
                dist.all_reduce(buf)
                t.copy_(buf.cpu())

    def per_class_iou(self) -> torch.Tensor:
        """IoU per class in percent; NaN for a class absent from both predictions and labels."""
        union = self.union
        return torch.where(union > 0, self.intersect / union.clamp(min=1), torch.nan) * 100

    def per_class_acc(self) -> torch.Tensor:
        """Accuracy per class in percent; NaN for a class absent from the labels."""
        return torch.where(self.area_label > 0, self.intersect / self.area_label.clamp(min=1), torch.nan) * 100

    def scores(self) -> dict[str, float]:
        """``mIoU``, ``mAcc`` (means over the classes that count) and ``aAcc`` (pixel accuracy), in percent.

        NaN, as in mmseg, where nothing counts: no labelled pixel in the whole set (every label the ignore index).
        """
        labelled = float(self.area_label.sum())
        return {"mIoU": _nanmean(self.per_class_iou()), "mAcc": _nanmean(self.per_class_acc()),
                "aAcc": float(self.intersect.sum()) / labelled * 100 if labelled else float("nan")}


def _nanmean(x: torch.Tensor) -> float:
    """Mean of the non-NaN entries; NaN if there is none (``np.nanmean``, without its warning)."""
    valid = x[~torch.isnan(x)]
    return float(valid.mean()) if valid.numel() else float("nan")


def _dist_device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
