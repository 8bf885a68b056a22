"""Single-image inference to a PNG: boxes and masks drawn on the photo (``regla det predict``), or the colour
label map (``regla seg predict``), with ``torchvision.utils.draw_bounding_boxes`` / ``draw_segmentation_masks``.
Written atomically (:mod:`regla.outputs`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.errors import DataError
from ..outputs import atomic_write_bytes, png_info

#: The smallest image side ``predict`` takes: below it there is nothing a model trained on photos can find.
MIN_SIDE = 16
#: The backbones' coarsest features are 1/32 of the input: each side of the resized image must reach this.
STRIDE = 32


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as a uint8 CHW tensor (RGB); a DataError naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except (FileNotFoundError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e.__class__.__name__}: {e}") from None


def check_image_size(path: str | Path, hw: tuple[int, int], resized: tuple[int, int], resize: str) -> None:
    """Refuse a tiny image (a side below :data:`MIN_SIDE`) or one so elongated that the model's test resize
    (``resize`` describes it) leaves a side below :data:`STRIDE` px, before any model is built."""
    (h, w), (rh, rw) = hw, resized
    if min(h, w) < MIN_SIDE:
        raise DataError(f"image {path} is {w}x{h} px; expected at least {MIN_SIDE} px on each side")
    if min(rh, rw) < STRIDE:
        raise DataError(f"image {path} is {w}x{h} px: the model's test resize ({resize}) makes it {rw}x{rh}, below "
                        f"the {STRIDE} px its coarsest features need on each side; crop it into less elongated parts")


def detector_resize(hw: tuple[int, int], min_size: int, max_size: int) -> tuple[int, int]:
    """The size torchvision's ``GeneralizedRCNNTransform`` resizes an image of size ``hw`` to."""
    h, w = hw
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return int(h * scale), int(w * scale)


def write_png(image: torch.Tensor, path: str | Path, writer: str = "regla") -> Path:
    """A uint8 CHW (or HW) tensor as a PNG naming ``writer``, atomically."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy() if image.ndim == 3 else image.numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", pnginfo=png_info(writer))
    return atomic_write_bytes(path, buf.getvalue())


def palette(n: int) -> torch.Tensor:
    """``n`` distinct colours (uint8, n x 3): the PASCAL VOC colour map (bit interleaving of the index)."""
    colours = torch.zeros(n, 3, dtype=torch.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = torch.tensor([r, g, b], dtype=torch.uint8)
    return colours


@torch.no_grad()
def draw_detections(model: nn.Module, image: torch.Tensor, class_names: Sequence[str],
                    score_thresh: float = 0.5) -> tuple[torch.Tensor, int]:
    """The photo with the detector's boxes (labelled ``name score``) and masks above ``score_thresh``; and how many
    were drawn."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    model.eval()
    device = next(model.parameters()).device
    out = model([image.float().div(255).to(device)])[0]
    keep = out["scores"] >= score_thresh
    boxes, labels, scores = out["boxes"][keep].cpu(), out["labels"][keep].cpu(), out["scores"][keep].cpu()
    colours = [tuple(int(v) for v in c) for c in palette(max(len(class_names) + 1, 2))[labels.tolist()]]
    drawn = image
    if "masks" in out and keep.any():
        masks = out["masks"][keep][:, 0].cpu() > 0.5
        drawn = draw_segmentation_masks(drawn, masks, alpha=0.5, colors=colours)
    names = [f"{class_names[k - 1] if 0 < k <= len(class_names) else k} {s:.2f}"
             for k, s in zip(labels.tolist(), scores.tolist(), strict=True)]
    drawn = draw_bounding_boxes(drawn, boxes, labels=names, colors=colours, width=2)
    return drawn, int(keep.sum())


def colour_labels(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A predicted label map (H x W class indices) as a colour image (3 x H x W, uint8)."""
    return palette(num_classes)[pred.long()].permute(2, 0, 1).contiguous()
