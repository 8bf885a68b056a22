"""The contract between the one run harness (:func:`regla.runs.harness.run`) and a trainer.

``regla train``, ``regla distill``, ``regla det train``, ``regla seg train`` and ``regla sam distill`` are *tasks*:
each supplies its model, its data, its loss step and its evaluation. Everything else (run folder, torchrun/DDP and
SyncBN, AMP, gradient accumulation and clipping, EMA, the timm optimizer and schedule, progress bar, CSV/TensorBoard
logs, atomic checkpoint sets, exact resume to the batch, SIGINT/SIGTERM) is the harness's, so a fix there fixes
every command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from regla.checkpoints import WeightsInfo
from regla.config import Recipe


@dataclass
class Built:
    """What :meth:`Task.build` returns.

    ``model`` is what the optimizer trains and the checkpoint saves (``state_dict()``, buffers included: a
    distillation student with its projection heads and standardisation statistics, a detector). The harness moves
    it to the device, wraps it in DDP (and SyncBN when ``recipe.run.sync_bn``) and keeps an EMA copy if asked.
    ``train_loader`` yields batches; its ``sampler.set_epoch`` is called if it has one, and its order must be a
    function of the RNG state at the epoch's start (the harness restores that state to resume inside an epoch).
    ``param_groups`` (optional) replaces timm's default grouping (no weight decay on norms and biases).
    """

    model: nn.Module
    train_loader: Any
    param_groups: Any = None
    extra: dict[str, Any] = field(default_factory=dict)  # saved in every checkpoint (class map, teacher names ...)
    arch: dict[str, Any] = field(default_factory=dict)  # what was trained; a resume must match it (empty: no check)


class Task(Protocol):
    """A trainer, as the harness sees it.

    Optional methods the harness calls when present: ``check_resume(ckpt, recipe, path)`` (instead of comparing
    ``Built.arch``), ``annotate(row)`` (add columns to an epoch's metrics row) and ``report(row)`` (the epoch's log
    line). Before :meth:`build` the harness sets ``task.run_dir``, the run folder.
    """

    #: The command that resumes a run, for messages: ``regla train``, ``regla distill`` ...
    command: str
    #: The metric that decides ``best.*`` (higher is better), a key of :meth:`evaluate`'s result.
    score_key: str

    def build(self, recipe: Recipe, device: torch.device, rank: int, world_size: int) -> Built:
        """Data and model (on the CPU is fine); raise :class:`regla.errors.UsageError` for bad input."""

    def step(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss of one micro-batch (called under autocast) and named parts to log (tensors or floats)."""

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """Metrics after an epoch (``model`` is the bare model, or its EMA); may return {} to skip."""

    def weights_info(self, model: nn.Module, recipe: Recipe) -> WeightsInfo | None:
        """Metadata for ``last/best.safetensors``; None to write no ``.safetensors``."""

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights ``.safetensors`` holds (the distillation student without its heads, for instance)."""
