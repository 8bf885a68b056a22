"""Prompting SAM: images and box/point prompts checked and converted, masks through Meta's ``SamPredictor``.

Conversions (documented in docs/sam.md): a grayscale image (H x W or H x W x 1) is repeated to three channels; an
RGBA image (H x W x 4) loses its alpha channel (the colour channels are kept as they are, not composited); files
are read with Pillow (EXIF orientation applied) and converted to RGB. Anything else (two channels, more than
four, a non-uint8 array) is a :class:`~regla.errors.UsageError`.

Prompts are in the original image's pixels (x right, y down), as ``SamPredictor`` takes them. A box must have
``x2 > x1`` and ``y2 > y1``; one that reaches over the image's border is clipped to it (SAM's boxes from detectors
often do), one that does not overlap the image is an error. A point must lie inside the image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["Prediction", "check_box", "check_point", "draw_prediction", "interior_point", "load_image", "mask_box",
           "mask_iou", "parse_numbers", "predict_mask", "prompted_miou", "to_rgb"]

MASK_COLOUR = (30, 144, 255)  # SAM's notebooks' blue
PROMPT_COLOUR = (0, 220, 0)


@dataclass
class Prediction:
    """One mask for one prompt: ``mask`` (H x W bool, the image's size), SAM's predicted IoU, the prompt used."""

    mask: np.ndarray
    score: float
    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None


def to_rgb(image: np.ndarray) -> np.ndarray:
    """An ``H x W x 3`` uint8 RGB array from a uint8 grayscale, RGB or RGBA array (see the module docstring)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise UsageError(f"expected a uint8 image (0-255), got dtype {image.dtype}; scale and convert it first")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise UsageError(f"expected an image of shape H x W, H x W x 1 (grayscale), H x W x 3 (RGB) or H x W x 4 "
                         f"(RGBA), got {image.shape}")
    if min(image.shape[:2]) < 1:
        raise UsageError(f"the image is empty: shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB (EXIF orientation applied; alpha dropped; gray repeated)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"image {path} not found")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"cannot read image {path}: {e}; expected a JPEG, PNG or another Pillow format") from e


def parse_numbers(text: str, count: int, flag: str) -> tuple[float, ...]:
    """``"10,20,30,40"`` -> four floats; a :class:`UsageError` naming ``flag`` otherwise."""
    parts = [p for p in text.replace(" ", "").split(",") if p != ""]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(np.isfinite(values)):
        form = {2: "x,y", 4: "x1,y1,x2,y2"}[count]
        raise UsageError(f"{flag} expects {count} comma-separated numbers {form} in image pixels, got {text!r}")
    return values


def check_box(box: Sequence[float], hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """A box ``(x1, y1, x2, y2)`` clipped to a ``H x W`` image; empty or outside boxes are errors."""
    if len(box) != 4:
        raise UsageError(f"a box is 4 numbers x1,y1,x2,y2, got {len(box)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    h, w = hw
    if not (x2 > x1 and y2 > y1):
        raise UsageError(f"empty box ({x1:g},{y1:g},{x2:g},{y2:g}): expected x1 < x2 and y1 < y2")
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
    if not (cx2 > cx1 and cy2 > cy1):
        raise UsageError(f"box ({x1:g},{y1:g},{x2:g},{y2:g}) lies outside the {w}x{h} image "
                         f"(x in [0, {w}], y in [0, {h}])")
    return cx1, cy1, cx2, cy2


def check_point(point: Sequence[float], hw: tuple[int, int]) -> tuple[float, float]:
    """A point ``(x, y)`` inside a ``H x W`` image; outside it is an error."""
    if len(point) != 2:
        raise UsageError(f"a point is 2 numbers x,y, got {len(point)}")
    x, y = (float(v) for v in point)
    h, w = hw
    if not (0 <= x < w and 0 <= y < h):
        raise UsageError(f"point ({x:g},{y:g}) lies outside the {w}x{h} image (x in [0, {w}), y in [0, {h}))")
    return x, y


def predict_mask(sam_or_predictor: Any, image: np.ndarray | None, box: Sequence[float] | None = None,
                 point: Sequence[float] | None = None) -> Prediction:
    """The mask SAM predicts for one box and/or one foreground point, at the image's size.

    ``sam_or_predictor``: a ``segment_anything.Sam`` or a ``SamPredictor`` (whose image is kept when ``image``
    is None, to prompt one image many times). A box alone gives SAM's single mask; a point alone (ambiguous) gives
    the best-scored of SAM's three (``multimask_output=True``, as SAM's notebooks do).
    """
    from segment_anything import SamPredictor

    if box is None and point is None:
        raise UsageError("give a prompt: a box x1,y1,x2,y2 and/or a point x,y")
    predictor = sam_or_predictor if isinstance(sam_or_predictor, SamPredictor) else SamPredictor(sam_or_predictor)
    if image is not None:
        predictor.set_image(to_rgb(image), image_format="RGB")
    elif not predictor.is_image_set:
        raise UsageError("no image: pass one, or a SamPredictor whose image is set")
    hw = tuple(predictor.original_size)
    box = check_box(box, hw) if box is not None else None
    point = check_point(point, hw) if point is not None else None
    masks, scores, _ = predictor.predict(
        point_coords=np.array([point], dtype=np.float32) if point else None,
        point_labels=np.array([1]) if point else None,
        box=np.array(box, dtype=np.float32) if box else None,
        multimask_output=box is None,
    )
    best = int(np.argmax(scores))
    return Prediction(mask=masks[best].astype(bool), score=float(scores[best]), box=box, point=point)


def draw_prediction(image: np.ndarray, pred: Prediction, alpha: float = 0.5) -> Any:
    """The image with the mask blended in (SAM's blue) and the prompt drawn (box outline, point disc); a PIL image."""
    from PIL import Image, ImageDraw

    rgb = to_rgb(image).astype(np.float32)
    colour = np.array(MASK_COLOUR, dtype=np.float32)
    rgb[pred.mask] = (1 - alpha) * rgb[pred.mask] + alpha * colour
    out = Image.fromarray(rgb.round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 300))
    if pred.box is not None:
        draw.rectangle(pred.box, outline=PROMPT_COLOUR, width=width)
    if pred.point is not None:
        x, y = pred.point
        r = 3 * width
        draw.ellipse((x - r, y - r, x + r, y + r), fill=PROMPT_COLOUR, outline=(255, 255, 255))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Prompts from ground-truth masks, and the mIoU of the masks they give (SAM §7.1's single-point and box protocols)
# ---------------------------------------------------------------------------------------------------------------


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The tight box ``(x1, y1, x2, y2)`` of a non-empty mask, in pixel edges (``x2 = last column + 1``)."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        raise UsageError("an empty mask has no box")
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """The mask's point farthest from its boundary (SAM §7.1 / RITM's first click), as pixel centre ``(x, y)``.

    Unlike the centroid, it lies inside any shape (a ring, a crescent). Among equally deep points (the ridge of an
    elongated shape) the one nearest to their mean is taken: a rectangle's centre.
    """
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        raise UsageError("an empty mask has no interior point")
    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # the image border counts as boundary
    ys, xs = np.nonzero(dist == dist.max())
    best = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return float(xs[best]) + 0.5, float(ys[best]) + 0.5


def prompted_miou(sam_or_predictor: Any, image: np.ndarray, masks: Sequence[np.ndarray],
                  prompt: str = "box") -> tuple[float, list[float]]:
    """mIoU (%) of the masks SAM predicts for each ground-truth mask's box or interior point, and each IoU.

    ``prompt="box"``: the mask's tight box (SAM's box-prompted protocol, as with ground-truth boxes); ``"point"``:
    one foreground point, :func:`interior_point` (SAM's single-point protocol; the best of SAM's three masks).
    """
    from segment_anything import SamPredictor

    if prompt not in ("box", "point"):
        raise UsageError(f"prompt must be 'box' or 'point', got {prompt!r}")
    predictor = sam_or_predictor if isinstance(sam_or_predictor, SamPredictor) else SamPredictor(sam_or_predictor)
    predictor.set_image(to_rgb(image), image_format="RGB")
    ious = []
    for gt in masks:
        kwargs = {"box": mask_box(gt)} if prompt == "box" else {"point": interior_point(gt)}
        ious.append(mask_iou(predict_mask(predictor, None, **kwargs).mask, gt))
    return 100 * float(np.mean(ious)) if ious else float("nan"), ious
