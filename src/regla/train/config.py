"""Training recipes: defaults, YAML loading, command-line overrides and the learning-rate scaling rule.

A recipe file is a flat mapping of option names to values (the names follow timm's ``train.py`` where one exists);
the resolved recipe is a :class:`~regla.config.Recipe`: ``recipe.task`` holds this module's classification section
(:data:`FIELDS`), ``recipe.run`` the harness's run section (``regla.runs.config.RUN_FIELDS``).
``configs/*.yaml`` hold the ReGLA recipes of Table 2 (ReGLA §4.1: ImageNet-1K, 224 px, 300 epochs, 20-epoch
linear warm-up, the ConvNeXt / iFormer recipe) and the peers' published recipes. Every key can be overridden on
the command line with ``--set key=value`` (values parsed as YAML, so ``--set scale=[0.5,1.0]`` gives a list;
``--set model_kwargs.early_block=dw7`` sets one entry of a mapping).

Every key is typed and checked before any work by the shared schema of :mod:`regla.config` (:data:`SCHEMA`):
unknown keys, wrong types, out-of-range values and inconsistent pairs are a :class:`ConfigError` naming the key,
the value and what is allowed.
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError, Field, Recipe, Schema, dump, find_config, load_yaml, parse_override
from ..runs.config import PROB, RUN_FIELDS, RUN_RULES, scaled_lr

__all__ = ["CHOICES", "DEFAULTS", "SCHEMA", "ConfigError", "Recipe", "build_config", "dump", "find_config", "load_yaml",
           "merge", "parse_override", "scaled_lr", "validate"]


# The defaults are iFormer's published recipe (github.com/ChuanyangZheng/iFormer, main.py arguments and
# configs/iFormer_t.yaml), which ReGLA §4.1 follows. The recipe files in configs/ repeat every value that matters.
FIELDS: dict[str, Field] = {
    # model
    "model": Field(str, "regla_t"),
    "model_kwargs": Field(dict, {}),  # extra timm.create_model arguments, e.g. the ablation switches {early_block: dw7}
    "num_classes": Field(int, None, nullable=True, ge=1),  # None: the number of class folders of the training set
    "drop_path": Field(float, 0.0, ge=0.0, lt=1.0),
    "initial_checkpoint": Field(str, None, nullable=True),  # weights to start from (fine-tuning); not a resume
    # data (anything timm.data.create_dataset reads; "" = an ImageNet-style folder)
    "data_dir": Field(str, None, nullable=True),
    "dataset": Field(str, ""),
    "train_split": Field(str, "train"),
    "val_split": Field(str, "val"),
    "img_size": Field(int, 224, ge=16),
    # evaluation transform and normalisation; None: the model's timm pretrained_cfg (data_settings)
    "crop_pct": Field(float, None, nullable=True, gt=0.0, le=1.0),
    "interpolation": Field(str, None, nullable=True, choices=("bicubic", "bilinear", "nearest", "lanczos", "box",
                                                              "hamming", "random")),
    "mean": Field(list, None, nullable=True, items=float),
    "std": Field(list, None, nullable=True, items=float, gt=0.0),
    "in_chans": Field(int, 3, ge=1),
    # augmentation and regularisation
    "aa": Field(str, "rand-m9-mstd0.5-inc1", nullable=True),
    "color_jitter": Field(float, 0.4, nullable=True, ge=0.0),
    "hflip": Field(float, 0.5, **PROB),
    "scale": Field(list, [0.08, 1.0], items=float, length=2, gt=0.0, le=1.0),
    "ratio": Field(list, [0.75, 1.3333333333333333], items=float, length=2, gt=0.0),
    "reprob": Field(float, 0.25, **PROB),
    "remode": Field(str, "pixel", choices=("pixel", "rand", "const")),
    "recount": Field(int, 1, ge=1),
    "mixup": Field(float, 0.8, ge=0.0),  # Beta(alpha, alpha); 0: off
    "cutmix": Field(float, 1.0, ge=0.0),
    "mixup_prob": Field(float, 1.0, **PROB),
    "mixup_switch_prob": Field(float, 0.5, **PROB),
    "mixup_mode": Field(str, "batch", choices=("batch", "pair", "elem")),
    "smoothing": Field(float, 0.1, ge=0.0, lt=1.0),
    "aug_repeats": Field(int, 0, ge=0),
    # distillation (DeiT-style, through the classifier's distillation head)
    "distillation_type": Field(str, "none", choices=("none", "hard", "soft")),
    "teacher_model": Field(str, "regnety_160"),
    "teacher_path": Field(str, None, nullable=True),
    "distillation_alpha": Field(float, 0.5, **PROB),
    "distillation_tau": Field(float, 1.0, gt=0.0),
    # systems (the rest are the harness's run section, RUN_FIELDS; its EMA default is ConvNeXt [19]'s 0.9999,
    # iFormer's T-L configs turn it off: configs/iformer_*.yaml)
    "grad_checkpointing": Field(bool, False),
    "prefetcher": Field(bool, None, nullable=True),  # None: timm's GPU prefetcher on CUDA only
    "allow_class_change": Field(bool, False),  # resume on data whose class names differ from the checkpoint's
}


def _ordered_pairs(recipe: Recipe) -> str | None:
    for key, (lo, hi) in (("scale", recipe.task.scale), ("ratio", recipe.task.ratio)):
        if lo > hi:
            return f"{key} = {[lo, hi]}: expected [low, high] with low <= high"
    return None


def _channels_agree(recipe: Recipe) -> str | None:
    t = recipe.task
    if t.mean is None or t.std is None:
        if t.mean is not t.std:
            return "give both mean and std, or neither (the model's defaults)"
        if t.in_chans != 3:
            return (f"in_chans = {t.in_chans}: mean and std need one value per input channel "
                    "(the models' defaults are for RGB): set both")
        return None
    if not len(t.mean) == len(t.std) == t.in_chans:
        return (f"mean ({len(t.mean)} values) and std ({len(t.std)} values) must have one value per input "
                f"channel (in_chans = {t.in_chans})")
    return None


def _teacher_given(recipe: Recipe) -> str | None:
    if recipe.task.distillation_type != "none" and not recipe.task.teacher_path:
        return ("distillation needs teacher_path: a local file with the teacher's weights "
                "(e.g. DeiT's regnety_160-a5fe301d.pth); nothing is downloaded")
    return None


def _model_kwargs_entries(recipe: Recipe) -> str | None:
    dropped = [k for k, v in recipe.task.model_kwargs.items() if v is None and ":" in k]
    if dropped:
        return f"model_kwargs key {dropped[0]!r} has no value: write {{key: value}} or --set model_kwargs.KEY=VALUE"
    return None


SCHEMA = Schema(FIELDS, RUN_FIELDS, rules=(*RUN_RULES, _ordered_pairs, _channels_agree, _teacher_given,
                                           _model_kwargs_entries), name="Classification")
DEFAULTS: dict[str, Any] = SCHEMA.defaults()
CHOICES: dict[str, tuple[Any, ...]] = {k: f.choices for k, f in SCHEMA.fields.items() if f.choices}


DATA_KEYS = ("crop_pct", "interpolation", "mean", "std")


def data_settings(recipe: Recipe) -> Recipe:
    """``recipe`` with each unset evaluation/normalisation key (``DATA_KEYS``) taken from the model's timm
    ``pretrained_cfg`` (ReGLA's: 224 px, crop 0.875, bicubic, ImageNet mean/std), so a recipe that does not say
    evaluates a model as its registry entry says; timm's ImageNet defaults for a model without one."""
    unset = [k for k in DATA_KEYS if getattr(recipe.task, k) is None]
    if not unset:
        return recipe
    import timm
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    name = recipe.task.model
    pcfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    model = pcfg.to_dict() if pcfg is not None else {}
    fallback = {"crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
                "std": IMAGENET_DEFAULT_STD}
    values = {key: model.get(key) or fallback[key] for key in unset}
    return recipe.replace("the model's pretrained_cfg",
                          **{k: list(v) if isinstance(v, (tuple, list)) else v for k, v in values.items()})


def merge(base: dict[str, Any], updates: dict[str, Any], source: str) -> dict[str, Any]:
    """``base`` updated with ``updates``; unknown keys, wrong types and bad values are errors naming ``source``."""
    return SCHEMA.merge(base, updates, source)


def build_config(config: str | None, overrides: list[str] | None = None, base: dict[str, Any] | None = None,
                 flags: dict[str, Any] | None = None) -> Recipe:
    """Defaults < ``base`` (demo / resumed run) < recipe file < ``flags`` (shortcut options) < ``key=value`` list.

    Returns the :class:`~regla.config.Recipe`, each value checked; raises :class:`ConfigError`.
    """
    return SCHEMA.build(config, overrides, base, flags)


def validate(recipe: Recipe | dict[str, Any], source: str = "recipe") -> None:
    """Check a complete recipe (or its flat mapping): every value (type, range, choices) and the rules between
    keys."""
    SCHEMA.validate(recipe, source)
