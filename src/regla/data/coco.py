"""COCO-format instance data (an image folder + an ``instances_*.json``), read with pycocotools.

The reader is checked when built: the annotation file parses, it lists images, every listed file exists in the
folder, every annotation names a listed image and a listed category. Training sets skip images without a usable
(non-crowd, non-degenerate) annotation, as mmdet's ``filter_empty_gt=True`` does. Categories are numbered 1..K in
the order of their COCO ids (0 is the background of torchvision's detectors).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError, listed


def load_coco(ann_file: str | Path) -> Any:
    """``pycocotools.coco.COCO`` of ``ann_file`` (its prints silenced); a DataError when it cannot be read."""
    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist (expected a COCO instances JSON)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {path} is not valid JSON: {e}") from None
    except (KeyError, TypeError, AssertionError) as e:
        raise DataError(f"annotation file {path} is not in COCO instances format (missing {e}); expected "
                        "'images', 'annotations' and 'categories' lists") from None


def check_coco(coco: Any, image_dir: Path, ann_file: Path) -> None:
    """The checks of the module docstring; each failure names the file and the offending ids or names."""
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} does not exist")
    if not coco.imgs:
        raise DataError(f"{ann_file} lists no images (empty 'images' list)")
    if not coco.cats:
        raise DataError(f"{ann_file} lists no categories (empty 'categories' list)")
    missing = [img["file_name"] for img in coco.imgs.values() if not (image_dir / img["file_name"]).is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {ann_file} are not in {image_dir}: {listed(missing)} "
                        "(file_name must be relative to the image folder)")
    orphans = sorted({a["image_id"] for a in coco.anns.values() if a["image_id"] not in coco.imgs})
    if orphans:
        raise DataError(f"{ann_file}: annotations name image ids that are not in its 'images' list: {listed(orphans)}")
    bad_cats = sorted({a["category_id"] for a in coco.anns.values() if a["category_id"] not in coco.cats})
    if bad_cats:
        raise DataError(f"{ann_file}: annotations name unknown category ids: {listed(bad_cats)}")


def usable(ann: dict[str, Any]) -> bool:
    """A training target: not crowd, box of positive width and height (mmdet's ``_parse_ann_info``)."""
    x, y, w, h = ann["bbox"]
    return not ann.get("iscrowd", 0) and w >= 1 and h >= 1 and ann.get("area", 1) > 0


class CocoInstances(Dataset):
    """COCO-format instances as ``(image, target)``: a ``tv_tensors.Image`` (uint8, CHW) and a dict with
    ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY), ``masks`` (``tv_tensors.Mask``, N x H x W), ``labels``
    (1..K) and ``image_id``, passed through ``transforms(image, target)`` (``torchvision.transforms.v2``).

    ``train=True`` skips images without a usable annotation. ``image_ids`` restricts to those ids.
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path, transforms: Callable | None = None,
                 train: bool = False) -> None:
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        self.coco = load_coco(self.ann_file)
        check_coco(self.coco, self.image_dir, self.ann_file)
        self.cat_ids = sorted(self.coco.cats)
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        ids = sorted(self.coco.imgs)
        if train:
            ids = [i for i in ids if any(usable(a) for a in self.coco.imgToAnns.get(i, []))]
            if not ids:
                raise DataError(f"{self.ann_file}: no image has a usable annotation (non-crowd, width and "
                                "height >= 1), so there is nothing to train on")
        self.ids = ids
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Image and target before the transforms."""
        from PIL import Image
        from torchvision import tv_tensors

        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(self.image_dir / info["file_name"]) as im:
            rgb = np.array(im.convert("RGB"))
        h, w = rgb.shape[:2]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if usable(a)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": image_id,
        }
        return tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous()), target

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.load(index)
        return self.transforms(image, target) if self.transforms else (image, target)


def detection_collate(batch: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Images and targets as two lists (torchvision's detectors take lists of differently sized images)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
