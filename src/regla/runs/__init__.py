"""The one run harness that every trainer runs on (see :mod:`regla.runs.task`)."""
