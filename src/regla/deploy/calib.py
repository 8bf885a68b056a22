"""Real images for int8 calibration and for checking an export against PyTorch: a folder, or the digits demo set.

A folder is searched recursively for image files (timm's extensions); unreadable files are skipped, and a folder
with no readable image is a :class:`~regla.errors.UsageError` naming it. Images are resized with timm's eval
transform (whole image, ``crop_pct=1``) to the export size and normalised with the model's mean and std.

With no folder, the scikit-learn digits that ``regla train --demo`` trains on are used
(:func:`regla.data.digits.write_digits`): the ``train`` split calibrates, the ``val`` split checks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError

DEFAULT_CALIB_IMAGES = 32
DEFAULT_CHECK_IMAGES = 360  # the whole digits validation split


@dataclass
class ImageSet:
    """Preprocessed images ``(N, 3, H, W)`` float32, with the files they came from and the files skipped."""

    images: np.ndarray
    files: list[Path]
    skipped: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, size: int = 1):
        """The images in order, ``size`` at a time (float32 numpy arrays)."""
        for i in range(0, len(self), size):
            yield self.images[i:i + size]


def image_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` with an image extension timm reads, sorted (class folders stay together)."""
    from timm.data.readers.img_extensions import get_img_extensions

    exts = {e.lower() for e in get_img_extensions(as_set=True)}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def spread(items: Sequence, n: int) -> list:
    """``n`` items evenly spaced over ``items`` (all of them when there are no more than ``n``)."""
    if n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in dict.fromkeys(idx.tolist())]


def eval_transform(hw: tuple[int, int], mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic"):
    """timm's eval transform to ``hw`` (the whole image resized, no crop), as a callable ``PIL -> tensor``."""
    from timm.data import create_transform

    return create_transform(input_size=(3, *hw), is_training=False, crop_pct=1.0, mean=tuple(mean), std=tuple(std),
                            interpolation=interpolation)


def model_norm(model) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Mean, std and interpolation of ``model``'s pretrained config (ImageNet's when it has none)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    defaults = getattr(model, "pretrained_cfg", None) or {}
    return (tuple(defaults.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(defaults.get("std", IMAGENET_DEFAULT_STD)),
            defaults.get("interpolation", "bicubic") or "bicubic")


def read_images(files: Sequence[Path], hw: tuple[int, int], norm: tuple = (), source: str = "") -> ImageSet:
    """Open, convert to RGB, resize and normalise ``files``; files PIL cannot read are listed in ``skipped``."""
    from PIL import Image, UnidentifiedImageError

    mean, std, interp = norm or model_norm(None)
    tf = eval_transform(hw, mean, std, interp)
    arrays, kept, skipped = [], [], []
    for f in files:
        try:
            with Image.open(f) as im:
                arrays.append(tf(im.convert("RGB")).numpy())
            kept.append(Path(f))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            skipped.append(f"{f}: {type(e).__name__}")
    images = np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, 3, *hw), np.float32)
    return ImageSet(images, kept, skipped, source)


def check_folder(folder: str | os.PathLike, flag: str = "--calib") -> Path:
    """``folder`` if it holds at least one image file PIL can open; else a UsageError naming ``flag``.

    Run before any long work (building or lowering a model) starts.
    """
    from PIL import Image

    path = Path(folder).expanduser()
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise UsageError(f"{flag} {path}: {what}; expected a folder of images (searched recursively)")
    files = image_files(path)
    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
            return path
        except Exception:  # noqa: BLE001, S112 - any unreadable file is skipped, the next one is tried
            continue
    found = f"{len(files)} image file(s), none readable" if files else "no image file (.png, .jpg, ...)"
    raise UsageError(f"{flag} {path}: {found}; expected a folder with at least one readable image")


def digits_folder(split: str) -> Path:
    """The digits demo set's ``train`` or ``val`` folder, written on first use (no download)."""
    from ..data.digits import write_digits

    return write_digits() / split


def calibration_set(folder: str | os.PathLike | None, hw: tuple[int, int], norm: tuple = (),
                    limit: int = DEFAULT_CALIB_IMAGES) -> ImageSet:
    """Up to ``limit`` images, evenly spread over ``folder`` (default: the digits ``train`` split)."""
    root = check_folder(folder) if folder is not None else digits_folder("train")
    out = read_images(spread(image_files(root), limit), hw, norm, source=str(root))
    if not len(out):
        raise UsageError(f"--calib {root}: none of the chosen image files could be read ({'; '.join(out.skipped[:3])})")
    return out


def check_set(folder: str | os.PathLike | None, hw: tuple[int, int], norm: tuple = (),
              limit: int = DEFAULT_CHECK_IMAGES, exclude: Sequence[Path] = ()) -> ImageSet:
    """Images to compare an export with PyTorch on: the digits ``val`` split, or ``folder`` minus ``exclude``.

    In a user's folder the images used for calibration are left out when enough others remain (at least 10);
    otherwise all of them are used (and the JSON says so through the file count).
    """
    root = check_folder(folder) if folder is not None else digits_folder("val")
    files = image_files(root)
    used = set(exclude)
    rest = [f for f in files if f not in used]
    chosen = spread(rest if len(rest) >= 10 else files, limit)
    return read_images(chosen, hw, norm, source=str(root))


def agreement(ref: np.ndarray, out: np.ndarray) -> dict[str, float | int]:
    """Top-1 agreement and logit cosine similarity (mean and worst over images) of ``out`` against ``ref``."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"logit shapes differ: {out.shape} vs {ref.shape}")
    num = (ref * out).sum(axis=1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)
    return {"images": int(ref.shape[0]), "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean()),
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "max_abs_diff": float(np.abs(ref - out).max())}
