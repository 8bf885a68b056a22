"""The ``regla train --demo`` dataset and recipe: scikit-learn's handwritten digits as an image folder.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 scans of handwritten digits (10 classes) inside the package,
so the demo needs no download. :func:`regla.data.digits.write_digits` writes them once as 32x32 PNGs to
``<cache>/regla/digits/{train,val}/<digit>/`` (a stratified 80/20 split); they are read by the same folder pipeline
as ImageNet.
"""

from __future__ import annotations

from typing import Any

from ..data.digits import DEMO_SIZE, DEMO_THREADS

__all__ = ["DEMO_RECIPE"]

# A short CPU recipe: same optimizer/schedule family as Table 2, with the heavy ImageNet augmentations off
# (RandAugment, mixup and large random crops destroy 8x8 digits) and 32 px inputs.
DEMO_RECIPE: dict[str, Any] = {
    "model": "regla_t",
    "img_size": DEMO_SIZE,
    "crop_pct": 1.0,
    "epochs": 6,
    "warmup_epochs": 1,
    "batch_size": 32,
    "lr": 2e-3,
    "min_lr": 1e-5,
    "weight_decay": 0.05,
    "aa": None,
    "mixup": 0.0,
    "cutmix": 0.0,
    "smoothing": 0.1,
    "reprob": 0.0,
    "hflip": 0.0,
    "color_jitter": 0.0,
    "scale": [0.75, 1.0],
    "ratio": [0.9, 1.1],
    "model_ema": False,
    "workers": 0,
    "torch_threads": DEMO_THREADS,
    "device": "auto",
    "output": "runs/demo",
}
