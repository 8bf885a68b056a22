"""The run section every trainer shares: optimizer, schedule, EMA, AMP, systems and output (read by the harness).

A trainer's schema is ``Schema(TASK_FIELDS, run_fields(epochs=12, ...), rules=(*RUN_RULES, ...))``: its recipes
are ``recipe.run`` (these keys, a :data:`RunSection`) and ``recipe.task`` (the trainer's own). The harness reads
only ``recipe.run``, so one recipe vocabulary covers ``regla train``, ``distill``, ``det``, ``seg`` and ``sam``.
Names follow timm's ``train.py`` (``create_optimizer_v2`` / ``create_scheduler_v2`` arguments).

Imports inside ``regla.runs`` point one way: ``harness`` -> ``config`` -> ``folder`` / ``checkpoint_sets``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from regla.config import Field, Recipe, Schema, section_type
from regla.errors import UsageError
from regla.outputs import check_writable
from regla.preflight import DEVICE_PATTERN as _DEVICE

from .folder import check_run_dir, resume_dir, resume_path

PROB = dict(ge=0.0, le=1.0)  # a probability

RUN_FIELDS: dict[str, Field] = {
    # schedule and optimizer (timm create_optimizer_v2 / create_scheduler_v2)
    "epochs": Field(int, 300, ge=1),
    "batch_size": Field(int, 512, ge=1),  # per process
    "grad_accum": Field(int, 1, ge=1),
    "opt": Field(str, "adamw"),
    "lr": Field(float, None, nullable=True, gt=0.0),  # absolute learning rate; None: lr_base * global_batch / ...
    "lr_base": Field(float, 4e-3, gt=0.0),
    "lr_base_batch": Field(int, 4096, ge=1),
    "weight_decay": Field(float, 0.05, ge=0.0),
    "opt_eps": Field(float, 1e-8, gt=0.0),
    "opt_betas": Field(list, None, nullable=True, items=float, length=2, ge=0.0, lt=1.0),
    "momentum": Field(float, 0.9, ge=0.0, le=1.0),
    "clip_grad": Field(float, None, nullable=True, gt=0.0),
    "clip_mode": Field(str, "norm", choices=("norm", "value", "agc")),
    "sched": Field(str, "cosine", choices=("cosine", "tanh", "step", "multistep", "plateau", "poly")),
    "decay_milestones": Field(list, [], items=int, ge=1),  # multistep: after these epochs the LR is multiplied ...
    "decay_rate": Field(float, 0.1, gt=0.0),  # ... by decay_rate (poly: the power)
    "warmup_epochs": Field(int, 20, ge=0),
    "warmup_updates": Field(int, 0, ge=0),  # > 0: the warm-up in optimizer updates (mmdet's 500 iterations)
    "warmup_lr": Field(float, 1e-6, ge=0.0),
    "min_lr": Field(float, 1e-6, ge=0.0),
    "cooldown_epochs": Field(int, 0, ge=0),
    "sched_on_updates": Field(bool, True),
    # EMA of the weights (timm ModelEmaV3)
    "model_ema": Field(bool, True),
    "model_ema_decay": Field(float, 0.9999, **PROB),
    "model_ema_warmup": Field(bool, False),
    # systems
    "device": Field(str, "auto", check=lambda v: None if _DEVICE.match(v) else "not a device name"),
    "amp": Field(bool, False),
    "amp_dtype": Field(str, "bfloat16", choices=("bfloat16", "float16")),  # float16 uses a loss scaler
    "channels_last": Field(bool, False),
    "compile": Field(bool, False),
    "sync_bn": Field(bool, False),
    "workers": Field(int, 8, ge=0),
    "pin_mem": Field(bool, True),
    "seed": Field(int, 0, ge=0, lt=2**32),
    "deterministic": Field(bool, False),
    "torch_threads": Field(int, None, nullable=True, ge=1),
    # output
    "output": Field(str, None, nullable=True),  # run folder; default runs/<model>
    "eval_every": Field(int, 1, ge=1),
    "log_every": Field(int, 50, ge=1),
}

#: The run section's type (a frozen dataclass, one attribute per key of :data:`RUN_FIELDS`): ``recipe.run``.
RunSection = section_type("RunSection", RUN_FIELDS)

#: Keys that shape the LR schedule: a resume that changes one keeps the new recipe's schedule (with a warning).
SCHEDULE_KEYS = ("epochs", "sched", "decay_milestones", "decay_rate", "warmup_epochs", "warmup_updates", "warmup_lr",
                 "min_lr", "cooldown_epochs", "sched_on_updates", "lr", "lr_base", "lr_base_batch", "batch_size",
                 "grad_accum")


def schedule_changed(saved: Mapping[str, Any], run: Any) -> list[str]:
    """Recipe keys that shape the LR schedule (:data:`SCHEDULE_KEYS`) and differ between a checkpoint's (flat)
    recipe ``saved`` and this run's section ``run``."""
    return [k for k in SCHEDULE_KEYS if saved.get(k) != getattr(run, k)]


def run_fields(**defaults: Any) -> dict[str, Field]:
    """:data:`RUN_FIELDS` with other defaults (a trainer's recipe), e.g. ``run_fields(epochs=12, lr=2e-4)``."""
    unknown = sorted(set(defaults) - set(RUN_FIELDS))
    if unknown:
        raise KeyError(f"not run keys: {unknown}")
    return {k: dataclasses.replace(f, default=defaults[k]) if k in defaults else f for k, f in RUN_FIELDS.items()}


def _warmup_fits(recipe: Recipe) -> str | None:
    r = recipe.run
    if r.warmup_epochs > r.epochs and not r.warmup_updates:
        return (f"warmup_epochs = {r.warmup_epochs} > epochs = {r.epochs}: the warm-up must fit in the run "
                "(set warmup_epochs <= epochs, e.g. --set warmup_epochs=1)")
    return None


def _min_lr_below_lr(recipe: Recipe) -> str | None:
    r = recipe.run
    if r.lr is not None and r.min_lr > r.lr:
        return f"min_lr = {r.min_lr:g} > lr = {r.lr:g}: the schedule would rise; set min_lr <= lr"
    return None


def _milestones_fit(recipe: Recipe) -> str | None:
    r = recipe.run
    if r.sched != "multistep":
        return None
    ms = r.decay_milestones
    if not ms:
        return "sched = multistep needs decay_milestones (epochs where the LR drops), e.g. [8, 11]"
    if sorted(ms) != list(ms) or ms[-1] > r.epochs:
        return f"decay_milestones = {ms}: expected increasing epochs within the run's {r.epochs}"
    return None


RUN_RULES = (_warmup_fits, _min_lr_below_lr, _milestones_fit)


def scaled_lr(run: Any, world_size: int) -> float:
    """Learning rate for this run: ``lr`` if given, else ``lr_base * global_batch / lr_base_batch``.

    The global batch counts every process and accumulation step. iFormer trains with 4e-3 at 4096 images
    (8 GPUs x 512), RepViT/RepNeXt scale 1e-3 per 512 images (main.py: ``lr * batch_size * world_size / 512``).
    """
    if run.lr is not None:
        return float(run.lr)
    global_batch = run.batch_size * run.grad_accum * world_size
    return float(run.lr_base) * global_batch / float(run.lr_base_batch)


def resolve_recipe(schema: Schema, config: str | None, overrides: list[str] | None = None,
                   flags: dict[str, Any] | None = None, base: dict[str, Any] | None = None,
                   resume: str | None = None, output: str | None = None, configs_dir: str = "") -> Recipe:
    """A command's recipe: defaults < ``base`` (a demo) < the resumed run's recipe < ``config`` < ``flags`` <
    ``--set`` overrides. A resume without ``-c`` continues the recipe saved in its checkpoint; its ``output`` is
    ``output`` or the resumed folder (the folder may have moved)."""
    from .checkpoint_sets import load_checkpoint  # torch: only for a resume (``--print-config`` needs none)

    base = dict(base or {})
    if resume:
        if not Path(resume).expanduser().exists():
            raise UsageError(f"--resume {Path(resume).expanduser()}: no such file or folder")
        if not config:
            saved = load_checkpoint(resume_path(resume))["cfg"]
            base = {k: v for k, v in saved.items() if k in schema.fields and k != "output"}
    recipe = schema.build(config, overrides, base=base, flags=flags, configs_dir=configs_dir)
    if resume:
        recipe = recipe.replace(output=output or str(resume_dir(resume)))
    return recipe


def check_output(run: Any, name: str, resume: str | None, command: str | None = None) -> None:
    """The run folder (``run.output``, or ``runs/<name>``) can be created and written, before any work starts; and
    it is the run's to write (:func:`regla.runs.folder.check_run_dir`: no other live run, none of the user's files,
    made by ``command`` if it is resumed)."""
    if run.output or not resume:
        run_dir = Path(run.output or Path("runs") / name).expanduser()
        if run_dir.exists() and not run_dir.is_dir():
            raise UsageError(f"--output {run_dir}: is a file; a run folder is expected")
        check_writable(run_dir / "config.yaml")
        check_run_dir(run_dir, command, resume=bool(resume))
