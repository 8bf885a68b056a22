"""``regla train``: a classification recipe run on the one harness (:func:`regla.runs.harness.run`)."""

from __future__ import annotations

from pathlib import Path

from regla.config import Recipe
from regla.runs.harness import RunResult, run

from .config import data_settings
from .task import ClassificationTask


def train(cfg: Recipe, resume: str | Path | None = None, show_bar: bool = True) -> RunResult:
    """Run (or resume) training as ``cfg`` says; returns the run folder, the last metrics and the best top-1.

    Unset transform keys come from the model's pretrained_cfg and are recorded in ``config.yaml``; the run is
    named after the model (default run folder ``runs/<model>``).
    """
    cfg = data_settings(cfg)
    return run(ClassificationTask(), cfg, cfg.task.model, resume=resume, show_bar=show_bar)
