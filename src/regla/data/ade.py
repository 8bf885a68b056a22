"""ADE20K-format semantic segmentation data: an image folder and a folder of single-channel PNG label maps.

The layout of ADEChallengeData2016 (``images/{training,validation}/*.jpg``, ``annotations/{training,
validation}/*.png``): each image has a label PNG of the same stem holding class indices 1..150 and 0 for "other",
which mmseg's ``reduce_zero_label=True`` maps to the ignore index 255 (and 1..150 to 0..149).

Checked when built (:func:`check_pairs`, headers only, then :func:`check_labels`, which decodes every label):
images exist, each has its label, each label is single-channel (mode ``L``/``P``/``I``), has its image's size and
holds no value above the class count (or the ignore index 255 without ``reduce_zero_label``); each a DataError
(exit 2) naming the file. A pair whose image or label cannot be read (not an image, a truncated PNG) is skipped,
counted and named (:mod:`regla.data.skips`; ``strict`` refuses it). Paths come from listing the two folders, so no
file outside them is read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError, listed
from .images import Undecodable, Unreadable, decode, probe
from .skips import UNREADABLE, Skips

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SINGLE_CHANNEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


def read_label(path: Path) -> np.ndarray:
    """A label PNG as an int64 array; a DataError for an RGB (or other multi-channel) PNG."""
    from PIL import Image

    with Image.open(path) as im:
        check_label_mode(path, im.mode, len(im.getbands()))
    return decode(path, "label", mode=None).astype(np.int64)


def check_label_mode(path: Path, mode: str, bands: int) -> None:
    """A DataError unless ``mode`` is a single-channel mode (:data:`SINGLE_CHANNEL_MODES`)."""
    if mode not in SINGLE_CHANNEL_MODES:
        raise DataError(f"label {path} is a {mode} image ({bands} channels); expected a single-channel PNG of "
                        "class indices (mode L or P), not a colour rendering")


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


def check_pairs(pairs: list[tuple[Path, Path]], skips: Skips) -> list[tuple[Path, Path]]:
    """Headers only: each image and label readable (else skipped), each label single-channel and of its image's
    size (else a DataError naming both); the readable pairs."""
    from PIL import Image

    kept = []
    for image, label in pairs:
        try:
            size, label_size = probe(image), probe(label)
        except Unreadable as e:
            skips.add(UNREADABLE, f"pair {image.name} / {label.name}: {e}")
            continue
        with Image.open(label) as im:
            check_label_mode(label, im.mode, len(im.getbands()))
        if size != label_size:
            raise DataError(f"label {label} is {label_size[0]}x{label_size[1]} px but its image {image} is "
                            f"{size[0]}x{size[1]}; expected the same size")
        kept.append((image, label))
    return kept


def check_labels(pairs: list[tuple[Path, Path]], num_classes: int, reduce_zero: bool, show_bar: bool = False,
                 skips: Skips | None = None) -> list[tuple[Path, Path]]:
    """Every label decoded: single-channel and within the class count (0..num_classes with ``reduce_zero``, else
    0..num_classes-1 or 255), a DataError naming the first offending file; a label that fails to decode is skipped
    (recorded in ``skips``; a DataError without it). Returns the pairs kept."""
    from tqdm import tqdm

    top = num_classes if reduce_zero else num_classes - 1
    kept = []
    for pair in tqdm(pairs, desc="checking labels", unit="label", disable=not show_bar or len(pairs) < 100):
        try:
            label = read_label(pair[1])
        except Undecodable:
            if skips is None:
                raise
            skips.add(UNREADABLE, f"pair {pair[0].name} / {pair[1].name}: the label does not decode")
            continue
        bad = label[(label > top) & (reduce_zero | (label != IGNORE_INDEX))]
        if bad.size:
            allowed = f"0..{top}" + ("" if reduce_zero else f" or {IGNORE_INDEX}")
            raise DataError(f"label {pair[1]} holds value {int(bad.max())}, above the {num_classes} classes "
                            f"(expected {allowed}); wrong num_classes or label format?")
        kept.append(pair)
    return kept


class SegmentationFolder(Dataset):
    """``(image, label)`` pairs: a ``tv_tensors.Image`` (uint8, CHW) and a ``tv_tensors.Mask`` (int64, HW, 255 =
    ignore), passed through ``transforms(image, label)``.

    Args:
        image_dir, label_dir: the two folders (labels matched by stem, ``.png``).
        num_classes: classes after the reduction (150 for ADE20K).
        reduce_zero_label: 0 is "other" -> ignore (ADE20K); False: labels are 0..num_classes-1, 255 ignore.
        check: decode every label once now (values); False checks headers only (channels, size, truncation).
        strict: refuse an unreadable pair instead of skipping it (``skipped`` records the skipped ones).
    """

    def __init__(self, image_dir: str | Path, label_dir: str | Path, num_classes: int = 150,
                 transforms: Callable | None = None, reduce_zero_label: bool = True, check: bool = True,
                 show_bar: bool = False, strict: bool = False) -> None:
        self.skipped = Skips(str(label_dir), strict)
        pairs = check_pairs(pair_files(Path(image_dir), Path(label_dir)), self.skipped)
        self.num_classes, self.reduce_zero_label = num_classes, reduce_zero_label
        if check:
            pairs = check_labels(pairs, num_classes, reduce_zero_label, show_bar, self.skipped)
        if not pairs:
            raise DataError(f"{image_dir}: no image / label pair can be read ({self.skipped.first()})")
        self.pairs = pairs
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[Any, Any]:
        """Image and label before the transforms."""
        from torchvision import tv_tensors

        image_path, label_path = self.pairs[index]
        rgb = decode(image_path, "image")
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
