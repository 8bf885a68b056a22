"""scikit-learn's handwritten digits as an image folder: the ``regla train --demo`` data set.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 scans of handwritten digits (10 classes) inside the package,
so nothing is downloaded. They are written once as 32x32 PNGs to ``<cache>/regla/digits/{train,val}/<digit>/``
(a stratified 80/20 split) and then read by the same folder pipeline as ImageNet; ``regla export --int8`` and
``regla bench`` calibrate on them when no folder is given.
"""

from __future__ import annotations

import os
from pathlib import Path

from .cache import COMPLETE, build_once, cache_dir

__all__ = ["DEMO_SIZE", "DEMO_THREADS", "cache_dir", "write_digits"]

DEMO_SIZE = 32
#: CPU threads of the digits demos (``regla train --demo``, ``regla distill --demo``): one per physical core, at
#: most 4 (oversubscription is slow).
DEMO_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))


def write_digits(root: str | Path | None = None, size: int = DEMO_SIZE, val_fraction: float = 0.2,
                 seed: int = 0, limit: int | None = None) -> Path:
    """Write the digits as ``root/{train,val}/<digit>/<n>.png`` (once; reused if complete) and return ``root``.

    ``limit`` keeps only the first ``limit`` images (for quick tests). The folder is built in a temporary sibling
    and renamed into place, so an interrupted write never leaves a half-filled dataset.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root) if root else cache_dir() / ("digits" if limit is None else f"digits_{limit}")
    if (root / COMPLETE).is_file():
        return root
    digits = load_digits()
    images, labels = digits.images, digits.target
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    idx_train, idx_val = train_test_split(range(len(labels)), test_size=val_fraction, random_state=seed,
                                          stratify=labels)

    def fill(folder: Path) -> None:
        for split, ids in (("train", idx_train), ("val", idx_val)):
            for i in ids:
                sub = folder / split / str(labels[i])
                sub.mkdir(parents=True, exist_ok=True)
                pixels = (images[i] * (255.0 / 16.0)).clip(0, 255).astype("uint8")
                Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).save(sub / f"{i:04d}.png")

    return build_once(root, "sklearn.datasets.load_digits", fill)
