"""Datasets and readers shared by the trainers, the evaluation and deployment (layer ``data``).

:mod:`regla.data.digits`: scikit-learn's handwritten digits written once as an image folder (the training demo's
data set, and the default calibration images of ``regla export --int8`` and ``regla bench``).
"""
