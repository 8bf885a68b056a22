"""``regla distill`` recipes: the run harness's section plus the distillation section (``recipe.task``:
:data:`DISTILL_FIELDS`), one typed schema (regla.config).

Every Table 8 switch is a key (docs/distillation.md maps each row to a recipe in configs/distill/):

* ``teachers``: ``[4tea]``, ``[6tea]``, ``[7tea]`` (Table 8), registry names, or mappings for any timm model;
* ``addcls``: the student's class token from adaptive average pooling of its patch tokens, with a class-token loss
  for every teacher (a teacher without one gets its pooled patch tokens as target); off: patch tokens only;
* ``onlycos`` (+ ``onlycos_tokens``: ``patch`` as §3.5 says, or ``all`` as Table 8's caption reads);
* ``sync_bn`` (syBN, the harness's SyncBatchNorm under DDP);
* ``standardize`` (teacher features standardised with running statistics, UNIC's EMA with a cosine momentum);
* ``teacher_drop`` (UNIC: 0.5, keeping the teacher with the largest loss; ReGLA: 0);
* ``grid_stride`` (16: every stage resampled to the 1/16 grid; 32: to the last stage's grid).

The defaults are Table 8's last row (7 teachers, onlycos, addcls, syBN, no teacher dropping) with UNIC's optimiser
settings (AdamW, lr 3e-4 per 256 images, weight decay 0.03, betas (0.9, 0.99), 10 warm-up epochs).
"""

from __future__ import annotations

from typing import Any

from regla.config import ConfigError, Field, Recipe, Schema, dump
from regla.runs.config import RUN_RULES, run_fields

__all__ = ["DISTILL_FIELDS", "SCHEMA", "build_config"]

PROB = dict(ge=0.0, le=1.0)

DISTILL_FIELDS: dict[str, Field] = {
    # student
    "model": Field(str, "regla_m", help="student: a regla backbone or any timm model with forward_intermediates"),
    "model_kwargs": Field(dict, {}),
    "drop_path": Field(float, 0.0, ge=0.0, lt=1.0),
    "ladder_stages": Field(list, None, nullable=True, items=int, help="feature_info entries (None: all stages)"),
    "grid_stride": Field(int, 16, choices=(8, 16, 32), help="the ladder grid: 1/16 of the input (§3.5)"),
    "head_hidden": Field(int, 768, ge=1, help="hidden width of the heads' MLPs (UNIC: 768)"),
    "head_last_hidden": Field(int, 3072, ge=1, help="hidden width for the last stage (UNIC: 3072)"),
    # teachers and Table 8's switches
    "teachers": Field(list, ["7tea"], help="sets (4tea, 6tea, 7tea), registry names or mappings"),
    "teacher_checkpoints": Field(dict, {}, help="teacher name -> local release file"),
    "addcls": Field(bool, True),
    "onlycos": Field(bool, True),
    "onlycos_tokens": Field(str, "patch", choices=("patch", "all")),
    "cos_weight": Field(float, 0.5, ge=0.0),
    "sl1_weight": Field(float, 0.5, ge=0.0),
    "standardize": Field(bool, True),
    "tnorm_momentum_start": Field(float, 1.0, **PROB),
    "tnorm_momentum_end": Field(float, 0.001, **PROB),
    "teacher_drop": Field(float, 0.0, ge=0.0, lt=1.0),
    # data (labels unused)
    "data_dir": Field(str, None, nullable=True, help="training images: a folder of class folders, or a root with "
                                                    "train/"),
    "train_split": Field(str, "train"),
    "img_size": Field(int, 224, ge=16),
    "mean": Field(list, None, nullable=True, items=float, length=3),
    "std": Field(list, None, nullable=True, items=float, length=3, gt=0.0),
    "interpolation": Field(str, "bicubic", choices=("bicubic", "bilinear", "nearest")),
    "scale": Field(list, [0.08, 1.0], items=float, length=2, gt=0.0, le=1.0),
    "ratio": Field(list, [0.75, 1.3333333333333333], items=float, length=2, gt=0.0),
    "hflip": Field(float, 0.5, **PROB),
    "color_jitter": Field(float, 0.0, ge=0.0),
    # KNN evaluation (Fig. 3): bank and queries
    "knn_bank": Field(str, None, nullable=True, help="labelled bank folder (class folders)"),
    "knn_queries": Field(str, None, nullable=True, help="query folder (class folders)"),
    "knn_k": Field(list, [20], items=int, ge=1),
    "knn_temperature": Field(float, 0.07, gt=0.0),
    "knn_bank_per_class": Field(int, None, nullable=True, ge=1, help="few-shot bank: this many images per class"),
    "knn_crop_pct": Field(float, 0.875, gt=0.0, le=1.0),
    "knn_batch_size": Field(int, None, nullable=True, ge=1),
}

#: The harness's keys this command sets differently: UNIC's optimiser (lr 3e-4 x 1024 / 256 for 8 GPUs x 128),
#: SyncBN on (Table 8's syBN), no EMA, 100 epochs (Table 8's ablation length).
RUN_DEFAULTS: dict[str, Any] = {
    "epochs": 100, "batch_size": 128, "opt": "adamw", "lr": 1.2e-3, "weight_decay": 0.03, "opt_betas": [0.9, 0.99],
    "warmup_epochs": 10, "min_lr": 1e-6, "sync_bn": True, "model_ema": False, "workers": 8,
}


def _knn_pair(recipe: Recipe) -> str | None:
    if bool(recipe.task.knn_bank) != bool(recipe.task.knn_queries):
        return "knn_bank and knn_queries go together (the KNN bank and the images it classifies)"
    return None


def _momentum_order(recipe: Recipe) -> str | None:
    if recipe.task.tnorm_momentum_end > recipe.task.tnorm_momentum_start:
        return "tnorm_momentum_end must not exceed tnorm_momentum_start (a decreasing cosine schedule)"
    return None


def _some_loss(recipe: Recipe) -> str | None:
    t = recipe.task
    if t.cos_weight == 0 and (t.sl1_weight == 0 or (t.onlycos and t.onlycos_tokens == "all")):
        return "cos_weight and sl1_weight leave no loss"
    return None


SCHEMA = Schema(DISTILL_FIELDS, run_fields(**RUN_DEFAULTS), rules=(*RUN_RULES, _knn_pair, _momentum_order, _some_loss),
                command="regla distill", name="Distillation", order="run-first")


def build_config(config: str | None = None, overrides: list[str] | None = None,
                 base: dict[str, Any] | None = None) -> Recipe:
    """Defaults < ``base`` < recipe (a path, or a name under ``configs/distill/``; ``base:`` chains) < ``--set``."""
    return SCHEMA.build(config, overrides, base=base, configs_dir="distill")


__all__ += ["ConfigError", "RUN_DEFAULTS", "dump"]
