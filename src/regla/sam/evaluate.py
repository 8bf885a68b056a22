"""Zero-shot evaluation of SAM on COCO-format instances as in the SAM paper (Kirillov et al. 2023): ``regla sam eval``.

* **Box prompts -> instance segmentation** (SAM §7.4, Table 5; RepViT Table 4 "z.s. ins."): each box gives one
  mask (``multimask_output=False``, SAM's mode for an unambiguous prompt). The boxes are the ground truth's
  (non-crowd instances; the result's score is SAM's predicted IoU, which ranks the masks) or a detector's COCO
  results (SAM §7.4 uses ViTDet-H's; the result keeps the detector's category and score). The masks are scored as
  COCO ``segm`` results with pycocotools through :func:`regla.eval.metrics.coco_scores`: mask AP, AP50, AP75,
  APs/APm/APl.
* **One point -> mIoU** (SAM §7.1): one foreground point per non-crowd ground-truth instance, the mask's point
  farthest from its boundary (:func:`regla.sam.prompt.interior_point`, a distance transform), SAM's three masks
  (``multimask_output=True``); the IoU of the mask SAM ranks first (highest predicted IoU) and of the best of the
  three (SAM's "oracle"), averaged over the instances.

The data are read and checked with the COCO reader of the dense tasks (:mod:`regla.data.coco`). Masks come from a
*mask source* (:class:`SamMasks`: ``SamPredictor``'s batched ``predict_torch``); the tests put an oracle in its place
to check the metric path on masks whose scores are known by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..data.coco import check_coco, load_coco, usable
from ..data.errors import DataError, listed
from ..data.images import decode
from ..data.skips import Skips
from ..errors import UsageError
from .prompt import interior_point, mask_iou

__all__ = ["PROMPTS", "EvalData", "MaskSource", "SamMasks", "ZeroShotResult", "evaluate_zero_shot",
           "load_eval_data", "read_detections"]

PROMPTS = ("box", "point")
#: Prompts decoded together (memory: SAM upsamples each to the padded input side before cropping).
BATCH = 16


class MaskSource(Protocol):
    """Masks for batches of prompts on one image (the interface :class:`SamMasks` implements)."""

    def set_image(self, rgb: np.ndarray) -> None: ...

    def boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 4)`` XYXY boxes -> ``(N, H, W)`` bool masks and ``(N,)`` predicted IoUs."""

    def points(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 2)`` foreground points ``(x, y)`` -> ``(N, 3, H, W)`` bool masks and ``(N, 3)`` predicted IoUs."""


class SamMasks:
    """SAM's masks through ``SamPredictor.predict_torch`` (the batched form of ``SamPredictor.predict``)."""

    def __init__(self, sam: Any, batch: int = BATCH) -> None:
        from segment_anything import SamPredictor

        self.predictor, self.batch = SamPredictor(sam), batch

    def set_image(self, rgb: np.ndarray) -> None:
        self.predictor.set_image(rgb, image_format="RGB")

    def boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        masks, scores = self._decode(np.asarray(boxes, np.float32), None)
        return masks[:, 0], scores[:, 0]

    def points(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._decode(None, np.asarray(points, np.float32))

    def _decode(self, boxes: np.ndarray | None, points: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        p = self.predictor
        n = len(boxes if boxes is not None else points)
        masks, scores = [], []
        for i in range(0, n, self.batch):
            kwargs: dict[str, Any] = {"point_coords": None, "point_labels": None}
            if boxes is not None:
                b = torch.as_tensor(boxes[i:i + self.batch], device=p.device)
                kwargs["boxes"] = p.transform.apply_boxes_torch(b, p.original_size)
            else:
                c = torch.as_tensor(points[i:i + self.batch, None], device=p.device)
                kwargs["point_coords"] = p.transform.apply_coords_torch(c, p.original_size)
                kwargs["point_labels"] = torch.ones(c.shape[:2], dtype=torch.int, device=p.device)
            m, s, _ = p.predict_torch(**kwargs, multimask_output=boxes is None)
            masks.append(m.cpu().numpy())
            scores.append(s.float().cpu().numpy())
        return np.concatenate(masks), np.concatenate(scores)


@dataclass
class EvalData:
    """The checked evaluation set: the COCO annotations, the images to evaluate, the detector's boxes if any."""

    coco: Any
    image_dir: Path
    image_ids: list[int]
    detections: dict[int, list[dict[str, Any]]] | None = None  # image id -> results scoring >= the threshold
    boxes_file: str | None = None
    score_thr: float = 0.0
    skipped: Skips | None = None  # entries left out (unreadable images, degenerate boxes)

    @property
    def cat_ids(self) -> list[int]:
        return sorted(self.coco.cats)


def read_detections(path: str | Path, coco: Any, score_thr: float = 0.0) -> dict[int, list[dict[str, Any]]]:
    """A detector's COCO results JSON (a list of ``{image_id, category_id, bbox: [x, y, w, h], score}``) grouped
    by image, those scoring below ``score_thr`` dropped; every image and category id must be in ``coco``."""
    path = Path(path)
    expected = "a COCO results list: [{image_id, category_id, bbox: [x, y, w, h], score}, ...]"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--boxes {path}: not valid JSON ({e}); expected {expected}") from None
    if not isinstance(entries, list):
        raise UsageError(f"--boxes {path}: a JSON {type(entries).__name__}, expected {expected}")
    for i, e in enumerate(entries):
        if not _is_result(e):
            raise UsageError(f"--boxes {path}: entry {i} is {str(e)[:80]}; expected {expected}")
    unknown = sorted({e["image_id"] for e in entries if e["image_id"] not in coco.imgs})
    if unknown:
        raise UsageError(f"--boxes {path}: image ids not in the annotations: {listed(unknown)} (a detector's "
                         "results on another set?)")
    bad_cats = sorted({e["category_id"] for e in entries if e["category_id"] not in coco.cats})
    if bad_cats:
        raise UsageError(f"--boxes {path}: category ids not in the annotations: {listed(bad_cats)}")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for e in entries:
        if e["score"] >= score_thr:
            by_image.setdefault(e["image_id"], []).append(e)
    return by_image


def _is_result(e: Any) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return (isinstance(e, dict) and isinstance(e.get("image_id"), int) and isinstance(e.get("category_id"), int)
            and number(e.get("score")) and isinstance(e.get("bbox"), list) and len(e["bbox"]) == 4
            and all(number(v) for v in e["bbox"]))


def load_eval_data(val_images: str | Path, val_ann: str | Path, boxes: str | Path | None = None,
                   score_thr: float = 0.0, max_images: int | None = None, strict: bool = False) -> EvalData:
    """Read and check everything the evaluation needs (before any model is built); one-line errors otherwise.

    The annotations are validated and checked against the folder by the COCO reader of the dense tasks
    (:func:`regla.data.coco.load_coco`, :func:`~regla.data.coco.check_coco`: sizes, paths inside the folder).
    Unreadable images are skipped and recorded in ``EvalData.skipped`` (``strict``: refused); annotations with a
    degenerate box stay in the ground truth and are not prompted (:func:`~regla.data.coco.usable`). A set whose
    evaluated images hold no usable ground-truth instance is refused: there is
    nothing to score."""
    from ..preflight import existing_dir, existing_file

    image_dir = existing_dir(val_images, "--val-images")
    ann = existing_file(val_ann, "--val-ann")
    skips = Skips(str(ann), strict)
    coco = load_coco(ann)  # the ground truth as COCO's protocol scores it
    ids = sorted(coco.imgs)[:max_images]
    unreadable = check_coco(coco, image_dir, ann, skips, image_ids=ids)
    ids = [i for i in ids if i not in unreadable]
    if not ids:
        raise DataError(f"{ann}: none of the {len(unreadable)} image(s) to evaluate can be read ({skips.first()})")
    instances = sum(usable(a) for i in ids for a in coco.imgToAnns.get(i, []))
    if not instances:
        raise DataError(f"{ann}: no ground truth: the {len(ids)} readable image(s) evaluated hold no usable "
                        "instance (non-crowd, box width and height >= 1), so there is nothing to score")
    detections = read_detections(existing_file(boxes, "--boxes"), coco, score_thr) if boxes is not None else None
    return EvalData(coco, image_dir, ids, detections, str(boxes) if boxes is not None else None, score_thr, skips)


def _read_rgb(data: EvalData, image_id: int) -> np.ndarray:
    """The image as stored (no EXIF rotation: COCO's annotations are in the stored pixels), as RGB uint8."""
    return decode(data.image_dir / data.coco.imgs[image_id]["file_name"], f"image id {image_id}")


@dataclass
class ZeroShotResult:
    """``scores`` (``segm_AP`` ... ``segm_APl``, ``point_mIoU``, ``point_oracle_mIoU`` and counts), the COCO
    ``segm`` results of the box prompts and one record per point-prompted instance."""

    scores: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)


def _box_prompts(data: EvalData, image_id: int, anns: list[dict[str, Any]],
                 hw: tuple[int, int]) -> tuple[np.ndarray, list[int], list[float] | None, int]:
    """XYXY boxes (clipped to the image), their category ids, the detector's scores (None for ground-truth
    boxes) and how many detector boxes were dropped as empty after clipping."""
    source = anns if data.detections is None else data.detections.get(image_id, [])
    xywh = np.array([a["bbox"] for a in source], np.float64).reshape(-1, 4)
    h, w = hw
    xyxy = np.stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2], xywh[:, 1] + xywh[:, 3]], 1)
    xyxy = np.clip(xyxy, 0, [w, h, w, h])
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    cats = [a["category_id"] for a, k in zip(source, keep, strict=True) if k]
    scores = None if data.detections is None else [float(a["score"]) for a, k in zip(source, keep, strict=True) if k]
    return xyxy[keep], cats, scores, int((~keep).sum())


def _box_results(source: MaskSource, data: EvalData, image_id: int, boxes: np.ndarray, cats: list[int],
                 det_scores: list[float] | None) -> list[dict[str, Any]]:
    """COCO ``segm`` results of one image's box prompts (RLE through :func:`regla.eval.metrics.coco_results`)."""
    import torch

    from ..eval.metrics import coco_results

    masks, predicted_iou = source.boxes(boxes)
    label = {c: i + 1 for i, c in enumerate(data.cat_ids)}
    out = {"boxes": torch.as_tensor(boxes, dtype=torch.float32),
           "labels": torch.tensor([label[c] for c in cats], dtype=torch.int64),
           "scores": torch.as_tensor(det_scores if det_scores is not None else predicted_iou, dtype=torch.float32),
           "masks": torch.from_numpy(np.ascontiguousarray(masks[:, None], dtype=np.uint8))}
    return coco_results([(image_id, out)], data.cat_ids)


def _point_records(source: MaskSource, image_id: int, anns: list[dict[str, Any]],
                   gts: list[np.ndarray]) -> list[dict[str, Any]]:
    """One record per instance: its interior point, SAM's three masks' IoUs with it and predicted IoUs."""
    points = np.array([interior_point(m) for m in gts], np.float32)
    masks, predicted_iou = source.points(points)
    records = []
    for ann, gt, point, three, pred in zip(anns, gts, points, masks, predicted_iou, strict=True):
        ious = [mask_iou(m, gt) for m in three]
        records.append({"image_id": int(image_id), "ann_id": int(ann["id"]), "category_id": int(ann["category_id"]),
                        "area": int(gt.sum()), "point": [float(v) for v in point],
                        "ious": ious, "predicted_ious": [float(v) for v in pred],
                        "iou_top": ious[int(np.argmax(pred))], "iou_oracle": max(ious)})
    return records


def evaluate_zero_shot(source: MaskSource, data: EvalData, prompts: Sequence[str] = PROMPTS,
                       show_bar: bool = False) -> ZeroShotResult:
    """Box-prompted mask AP and/or single-point mIoU of ``source`` over ``data`` (see the module docstring)."""
    from tqdm import tqdm

    from ..eval.metrics import coco_scores

    unknown = [p for p in prompts if p not in PROMPTS]
    if unknown or not prompts:
        raise UsageError(f"prompts {list(prompts)}: expected one or more of {', '.join(PROMPTS)}")
    results: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    dropped = no_mask = 0
    for image_id in tqdm(data.image_ids, desc="sam eval", unit="img", disable=not show_bar):
        info = data.coco.imgs[image_id]
        anns = [a for a in data.coco.imgToAnns.get(image_id, []) if usable(a)]
        hw = (int(info["height"]), int(info["width"]))
        boxes, cats, det_scores = np.zeros((0, 4)), [], None
        if "box" in prompts:
            boxes, cats, det_scores, n_dropped = _box_prompts(data, image_id, anns, hw)
            dropped += n_dropped
        with_mask = []
        if "point" in prompts:
            gts = [data.coco.annToMask(a).astype(bool) for a in anns]
            with_mask = [(a, m) for a, m in zip(anns, gts, strict=True) if m.any()]
            no_mask += len(gts) - len(with_mask)
        if not len(boxes) and not with_mask:
            continue  # nothing to prompt: the image is not encoded
        source.set_image(_read_rgb(data, image_id))
        if len(boxes):
            results += _box_results(source, data, image_id, boxes, cats, det_scores)
        if with_mask:
            points += _point_records(source, image_id, [a for a, _ in with_mask], [m for _, m in with_mask])
    scores: dict[str, Any] = {"images": len(data.image_ids), **(data.skipped or Skips("")).summary()}
    if "box" in prompts:
        scores.update(box_source="detector" if data.detections is not None else "ground truth",
                      box_masks=len(results), boxes_dropped_empty=dropped)
        scores.update(coco_scores(data.coco, results, iou_types=("segm",), image_ids=data.image_ids))
    if "point" in prompts:
        scores.update(point_instances=len(points), point_instances_without_mask=no_mask,
                      point_mIoU=_mean_percent([r["iou_top"] for r in points]),
                      point_oracle_mIoU=_mean_percent([r["iou_oracle"] for r in points]))
    return ZeroShotResult(scores, results, points)


def _mean_percent(values: list[float]) -> float | None:
    """The mean in percent; None (no figure) for no instance."""
    return 100 * float(np.mean(values)) if values else None
