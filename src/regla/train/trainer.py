"""``regla train``: a classification recipe run on the one harness (:func:`regla.runs.harness.run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regla.runs.harness import RunResult, run

from .config import data_settings
from .task import ClassificationTask


def train(cfg: dict[str, Any], resume: str | Path | None = None, show_bar: bool = True) -> RunResult:
    """Run (or resume) training as ``cfg`` says; returns the run folder, the last metrics and the best top-1.

    Unset transform keys come from the model's pretrained_cfg and are recorded in ``config.yaml``.
    """
    cfg.update(data_settings(cfg))
    return run(ClassificationTask(), cfg, resume=resume, show_bar=show_bar)
