"""COCO-format instance data (an image folder + an ``instances_*.json``), read with pycocotools.

The file is validated before pycocotools indexes it (:data:`COCO_RULES`, :func:`validate_coco`): the three lists,
each image's ``id``, ``file_name``, ``height`` and ``width``, each annotation's ids, ``bbox`` (4 finite numbers),
``segmentation`` (polygons of at least 3 points, or RLE with ``size`` and ``counts``), optional ``iscrowd`` and
``area``, each category's ``id`` and ``name``; ids unique per list; every annotation names a listed image and
category; an RLE's ``size`` is its image's ``[height, width]``. Against the folder (:func:`check_coco`): every
``file_name`` is relative and stays inside the image folder, exists, and its header states the size the JSON does.
Any of these is a :class:`DataError` (exit 2) naming the file, the entry and what was expected.

Entries a real data set contains are skipped, counted and named (:mod:`regla.data.skips`): unreadable images (not
an image, a truncated PNG) and, in training sets, annotations with a degenerate box (width or height < 1, area
<= 0) and images without a usable (non-crowd, non-degenerate) annotation, as mmdet's ``filter_empty_gt=True``
does. An evaluation set keeps every annotation in its ground truth (COCO's protocol); none is used as a prompt or
target unless usable. Categories are numbered 1..K in the order of their COCO ids (0 is the background of
torchvision's detectors).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError, listed
from .images import Unreadable, decode, probe
from .rules import Rule, check_entry, entry_name, finite_number, is_int, nonempty_str, numbers, positive_int, show
from .skips import DEGENERATE_BOX, NO_USABLE_ANNOTATION, UNREADABLE, Skips


def is_segmentation(value: Any) -> bool:
    """Polygons ``[[x1, y1, x2, y2, x3, y3, ...], ...]`` (even length, at least 3 points) or RLE ``{size: [h, w],
    counts: str | [int, ...]}`` (compressed or not), as pycocotools' ``annToRLE`` takes them."""
    if isinstance(value, list):
        return bool(value) and all(numbers(p) and len(p) >= 6 and len(p) % 2 == 0 for p in value)
    if isinstance(value, dict):
        size, counts = value.get("size"), value.get("counts")
        return (isinstance(size, list) and len(size) == 2 and all(positive_int(v) for v in size)
                and (isinstance(counts, str) or (isinstance(counts, list) and all(is_int(c) and c >= 0
                                                                                  for c in counts))))
    return False


#: The sections of an instances file and the rules of their entries (the tests are generated from these).
COCO_RULES: dict[str, tuple[Rule, ...]] = {
    "file": (
        Rule("images", lambda v: isinstance(v, list), "a list of images", {"id": 1}),
        Rule("annotations", lambda v: isinstance(v, list), "a list of annotations", {}),
        Rule("categories", lambda v: isinstance(v, list), "a list of categories", "person"),
    ),
    "image": (
        Rule("id", is_int, "an integer id", "1"),
        Rule("file_name", nonempty_str, "a path relative to the image folder", 7),
        Rule("height", positive_int, "the image height in pixels (a positive integer)", 0),
        Rule("width", positive_int, "the image width in pixels (a positive integer)", "500"),
    ),
    "annotation": (
        Rule("id", is_int, "an integer id", 1.5),
        Rule("image_id", is_int, "the integer id of a listed image", "1"),
        Rule("category_id", is_int, "the integer id of a listed category", None),
        Rule("bbox", lambda v: numbers(v, 4), "[x, y, width, height]: 4 finite numbers", [1, 2, 3]),
        Rule("segmentation", is_segmentation, "polygons [[x1, y1, x2, y2, x3, y3, ...], ...] or RLE "
             "{'size': [height, width], 'counts': ...}", [1, 2, 3, 4, 5, 6]),
        Rule("iscrowd", lambda v: is_int(v) and v in (0, 1), "0 or 1", 2, required=False),
        Rule("area", finite_number, "a finite number (pixels)", "big", required=False),
    ),
    "category": (
        Rule("id", is_int, "an integer id", "cat"),
        Rule("name", nonempty_str, "a non-empty name", ""),
    ),
}
#: JSON list -> the kind of entry it holds.
SECTIONS = {"images": "image", "annotations": "annotation", "categories": "category"}


def validate_coco(doc: Any, source: str) -> None:
    """Every rule of :data:`COCO_RULES` and the cross-checks of the module docstring, on a parsed instances file."""
    check_entry(doc, COCO_RULES["file"], "the file", source)
    for section in ("images", "categories"):
        if not doc[section]:
            raise DataError(f"{source} lists no {section} (empty {section!r} list)")
    for section, kind in SECTIONS.items():
        for i, entry in enumerate(doc[section]):
            check_entry(entry, COCO_RULES[kind], entry_name(kind, entry, i, section), source)
        twice = [k for k, n in Counter(e["id"] for e in doc[section]).items() if n > 1]
        if twice:
            raise DataError(f"{source}: {kind} id {twice[0]} appears more than once in {section!r} "
                            f"({len(twice)} repeated id(s): {listed(twice)}); expected unique ids")
    images = {im["id"]: im for im in doc["images"]}
    categories = {c["id"] for c in doc["categories"]}
    for ann in doc["annotations"]:
        where = f"{source}: annotation id {ann['id']}"
        if ann["image_id"] not in images:
            raise DataError(f"{where}: image_id {ann['image_id']} is not in the 'images' list")
        if ann["category_id"] not in categories:
            raise DataError(f"{where}: category_id {ann['category_id']} is not in the 'categories' list")
        seg, im = ann["segmentation"], images[ann["image_id"]]
        if isinstance(seg, dict) and seg["size"] != [im["height"], im["width"]]:
            raise DataError(f"{where}: the RLE size {seg['size']} is not its image's [height, width] "
                            f"[{im['height']}, {im['width']}]")


def degenerate(ann: dict[str, Any]) -> bool:
    """A box of width or height below 1 pixel, or an area of 0 or less (mmdet's ``_parse_ann_info`` drops it)."""
    _, _, w, h = ann["bbox"]
    return w < 1 or h < 1 or ann.get("area", 1) <= 0


def usable(ann: dict[str, Any]) -> bool:
    """A training target: not crowd, not degenerate."""
    return not ann.get("iscrowd", 0) and not degenerate(ann)


def load_coco(ann_file: str | Path, skips: Skips | None = None) -> Any:
    """``pycocotools.coco.COCO`` of ``ann_file``, validated (:func:`validate_coco`) before it is indexed;
    annotations with a degenerate box are left out and recorded in ``skips`` when it is given (training sets; an
    evaluation's ground truth keeps them, as COCO's protocol scores every annotation)."""
    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist (expected a COCO instances JSON)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {path} is not valid JSON: {e}") from None
    validate_coco(doc, str(path))
    if skips is not None:
        kept = []
        for ann in doc["annotations"]:
            if degenerate(ann):
                skips.add(DEGENERATE_BOX, f"annotation id {ann['id']} (bbox {show(ann['bbox'])})")
            else:
                kept.append(ann)
        doc["annotations"] = kept
    coco = COCO()
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def inside(root: Path, name: str) -> Path | None:
    """``root / name`` when ``name`` is relative and does not climb out of ``root`` (``..``); else None.

    Lexical, as a path in the JSON is: links inside the folder are the user's to make."""
    norm = os.path.normpath(name)
    if os.path.isabs(name) or Path(name).drive or norm == ".." or norm.startswith(".." + os.sep):
        return None
    return root / norm


def check_coco(coco: Any, image_dir: Path, ann_file: Path, skips: Skips | None = None,
               image_ids: list[int] | None = None) -> set[int]:
    """The folder checks of the module docstring on ``image_ids`` (default all); returns the ids of unreadable
    images (recorded in ``skips``; a DataError without it)."""
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} does not exist")
    ids = sorted(coco.imgs) if image_ids is None else image_ids
    paths = {}
    for i in ids:
        name = coco.imgs[i]["file_name"]
        paths[i] = inside(image_dir, name)
        if paths[i] is None:
            raise DataError(f"{ann_file}: image id {i}: file_name {name!r} is outside the image folder {image_dir}; "
                            "expected a path relative to it")
    missing = [coco.imgs[i]["file_name"] for i in ids if not paths[i].is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {ann_file} are not in {image_dir}: {listed(missing)} "
                        "(file_name must be relative to the image folder)")
    unreadable: set[int] = set()
    for i in ids:
        info = coco.imgs[i]
        try:
            w, h = probe(paths[i])
        except Unreadable as e:
            if skips is None:
                raise DataError(f"{ann_file}: image id {i}: cannot read {paths[i]}: {e}") from None
            skips.add(UNREADABLE, f"image id {i} ({info['file_name']}: {e})")
            unreadable.add(i)
            continue
        if (w, h) != (info["width"], info["height"]):
            raise DataError(f"{ann_file}: image id {i}: {info['file_name']} is {w}x{h}, not {info['width']}x"
                            f"{info['height']} (width x height) as the JSON states; expected the file's size")
    return unreadable


class CocoInstances(Dataset):
    """COCO-format instances as ``(image, target)``: a ``tv_tensors.Image`` (uint8, CHW) and a dict with
    ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY), ``masks`` (``tv_tensors.Mask``, N x H x W), ``labels``
    (1..K) and ``image_id``, passed through ``transforms(image, target)`` (``torchvision.transforms.v2``).

    ``train=True`` skips images without a usable annotation. ``skipped`` records every entry left out
    (:mod:`regla.data.skips`); ``strict=True`` refuses the first one instead.
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path, transforms: Callable | None = None,
                 train: bool = False, strict: bool = False) -> None:
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        self.skipped = Skips(str(self.ann_file), strict)
        # degenerate boxes leave a training set; an evaluation set's ground truth stays as pycocotools scores it
        self.coco = load_coco(self.ann_file, self.skipped if train else None)
        unreadable = check_coco(self.coco, self.image_dir, self.ann_file, self.skipped)
        self.cat_ids = sorted(self.coco.cats)
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        ids = [i for i in sorted(self.coco.imgs) if i not in unreadable]
        if train:
            empty = [i for i in ids if not any(usable(a) for a in self.coco.imgToAnns.get(i, []))]
            dropped = set(empty)
            for i in empty:
                self.skipped.add(NO_USABLE_ANNOTATION, f"image id {i} ({self.coco.imgs[i]['file_name']})")
            ids = [i for i in ids if i not in dropped]
            if not ids:
                raise DataError(f"{self.ann_file}: no readable image has a usable annotation (non-crowd, width and "
                                f"height >= 1), so there is nothing to train on ({self.skipped.first()})")
        elif not ids:
            raise DataError(f"{self.ann_file}: none of its {len(self.coco.imgs)} image(s) can be read "
                            f"({self.skipped.first()})")
        self.ids = ids
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Image and target before the transforms."""
        from torchvision import tv_tensors

        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        rgb = decode(self.image_dir / info["file_name"], f"image id {image_id}")
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
