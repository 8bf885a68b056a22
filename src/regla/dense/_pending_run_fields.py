"""The run harness's recipe keys as ``regla/runs/task.py`` documents them, used only until
``regla.runs.config.RUN_FIELDS`` is merged (then this file is deleted)."""

from __future__ import annotations

from ..config import Field
from ..preflight import DEVICE_PATTERN

RUN_FIELDS: dict[str, Field] = {
    "epochs": Field(int, 1, ge=1), "batch_size": Field(int, 1, ge=1), "grad_accum": Field(int, 1, ge=1),
    "opt": Field(str, "adamw"), "lr": Field(float, 1e-3, gt=0.0), "weight_decay": Field(float, 0.05, ge=0.0),
    "opt_eps": Field(float, 1e-8, gt=0.0), "opt_betas": Field(list, None, nullable=True, items=float, length=2),
    "momentum": Field(float, 0.9, ge=0.0, le=1.0), "clip_grad": Field(float, None, nullable=True, gt=0.0),
    "clip_mode": Field(str, "norm", choices=("norm", "value", "agc")),
    "sched": Field(str, "cosine", choices=("cosine", "tanh", "step", "multistep", "plateau", "poly")),
    "decay_milestones": Field(list, [90, 180], items=int), "decay_rate": Field(float, 0.1, gt=0.0),
    "warmup_epochs": Field(int, 0, ge=0), "warmup_updates": Field(int, 0, ge=0), "warmup_lr": Field(float, 0.0, ge=0.0),
    "min_lr": Field(float, 0.0, ge=0.0), "sched_on_updates": Field(bool, True),
    "model_ema": Field(bool, False), "model_ema_decay": Field(float, 0.9998, ge=0.0, le=1.0),
    "model_ema_warmup": Field(bool, False),
    "device": Field(str, "auto", check=lambda v: None if DEVICE_PATTERN.match(v) else "not a device name"),
    "amp": Field(bool, False), "amp_dtype": Field(str, "bfloat16", choices=("bfloat16", "float16")),
    "channels_last": Field(bool, False), "compile": Field(bool, False), "sync_bn": Field(bool, False),
    "workers": Field(int, 2, ge=0), "seed": Field(int, 0, ge=0), "deterministic": Field(bool, False),
    "torch_threads": Field(int, None, nullable=True, ge=1), "output": Field(str, None, nullable=True),
    "eval_every": Field(int, 1, ge=1), "log_every": Field(int, 50, ge=1),
}
