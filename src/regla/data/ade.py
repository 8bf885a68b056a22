"""ADE20K-format semantic segmentation data: an image folder and a folder of single-channel PNG label maps.

The layout of ADEChallengeData2016 (``images/{training,validation}/*.jpg``, ``annotations/{training,
validation}/*.png``): each image has a label PNG of the same stem holding class indices 1..150 and 0 for "other",
which mmseg's ``reduce_zero_label=True`` maps to the ignore index 255 (and 1..150 to 0..149). Checked when built:
images exist, each has its label, each label is single-channel (mode ``L``/``P``/``I``) and holds no value above
the class count.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError, listed

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SINGLE_CHANNEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


def read_label(path: Path) -> np.ndarray:
    """A label PNG as an int64 array; a DataError for an RGB (or other multi-channel) PNG."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in SINGLE_CHANNEL_MODES:
            raise DataError(f"label {path} is a {im.mode} image ({len(im.getbands())} channels); expected a "
                            "single-channel PNG of class indices (mode L or P), not a colour rendering")
        return np.asarray(im).astype(np.int64)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 -> 255 (ignore), k -> k - 1."""
    out = label - 1
    out[label == 0] = IGNORE_INDEX
    return out


def pair_files(image_dir: Path, label_dir: Path) -> list[tuple[Path, Path]]:
    """``(image, label)`` paths matched by stem; DataError for a missing folder, no images or a missing label."""
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        if not folder.is_dir():
            raise DataError(f"{what} folder {folder} does not exist")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"image folder {image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    pairs = [(p, label_dir / f"{p.stem}.png") for p in images]
    missing = [lab.name for _, lab in pairs if not lab.is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {image_dir} have no label PNG in {label_dir}: {listed(missing)}")
    return pairs


def check_labels(pairs: list[tuple[Path, Path]], num_classes: int, reduce_zero: bool, show_bar: bool = False) -> None:
    """Every label single-channel and within the class count (0..num_classes with ``reduce_zero``, else
    0..num_classes-1 or 255); a DataError naming the first offending file."""
    from tqdm import tqdm

    top = num_classes if reduce_zero else num_classes - 1
    for _, path in tqdm(pairs, desc="checking labels", unit="label", disable=not show_bar or len(pairs) < 100):
        label = read_label(path)
        bad = label[(label > top) & (reduce_zero | (label != IGNORE_INDEX))]
        if bad.size:
            allowed = f"0..{top}" + ("" if reduce_zero else f" or {IGNORE_INDEX}")
            raise DataError(f"label {path} holds value {int(bad.max())}, above the {num_classes} classes (expected "
                            f"{allowed}); wrong num_classes or label format?")


class SegmentationFolder(Dataset):
    """``(image, label)`` pairs: a ``tv_tensors.Image`` (uint8, CHW) and a ``tv_tensors.Mask`` (int64, HW, 255 =
    ignore), passed through ``transforms(image, label)``.

    Args:
        image_dir, label_dir: the two folders (labels matched by stem, ``.png``).
        num_classes: classes after the reduction (150 for ADE20K).
        reduce_zero_label: 0 is "other" -> ignore (ADE20K); False: labels are 0..num_classes-1, 255 ignore.
        check: read every label once now (values and channels); False checks channels lazily, when read.
    """

    def __init__(self, image_dir: str | Path, label_dir: str | Path, num_classes: int = 150,
                 transforms: Callable | None = None, reduce_zero_label: bool = True, check: bool = True,
                 show_bar: bool = False) -> None:
        self.pairs = pair_files(Path(image_dir), Path(label_dir))
        self.num_classes, self.reduce_zero_label = num_classes, reduce_zero_label
        if check:
            check_labels(self.pairs, num_classes, reduce_zero_label, show_bar)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[Any, Any]:
        """Image and label before the transforms."""
        from PIL import Image
        from torchvision import tv_tensors

        image_path, label_path = self.pairs[index]
        with Image.open(image_path) as im:
            rgb = np.array(im.convert("RGB"))
        label = read_label(label_path)
        if label.shape != rgb.shape[:2]:
            raise DataError(f"label {label_path} is {label.shape[1]}x{label.shape[0]} but its image is "
                            f"{rgb.shape[1]}x{rgb.shape[0]}")
        if self.reduce_zero_label:
            label = reduce_zero_label(label)
        image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
        return image, tv_tensors.Mask(torch.from_numpy(label))

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, label = self.load(index)
        return self.transforms(image, label) if self.transforms else (image, label)
