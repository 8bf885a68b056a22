"""Training recipes: defaults, YAML loading, command-line overrides and the learning-rate scaling rule.

A recipe is a flat mapping of option names to values (the names follow timm's ``train.py`` where one exists).
``configs/*.yaml`` hold the ReGLA recipes of Table 2 (ReGLA §4.1: ImageNet-1K, 224 px, 300 epochs, 20-epoch
linear warm-up, the ConvNeXt / iFormer recipe) and the peers' published recipes. Every key can be overridden on
the command line with ``--set key=value`` (values parsed as YAML, so ``--set scale=[0.5,1.0]`` gives a list;
``--set model_kwargs.early_block=dw7`` sets one entry of a mapping).

Every key is typed and checked before any work by the shared schema of :mod:`regla.config` (:data:`SCHEMA`):
unknown keys, wrong types, out-of-range values and inconsistent pairs are a :class:`ConfigError` naming the key,
the value and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, Field, Schema, parse_override, yaml_load
from ..preflight import DEVICE_PATTERN as _DEVICE

__all__ = ["CHOICES", "DEFAULTS", "SCHEMA", "ConfigError", "build_config", "dump", "find_config", "load_yaml",
           "merge", "parse_override", "scaled_lr", "validate"]

PROB = dict(ge=0.0, le=1.0)  # a probability

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
    # schedule and optimizer
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
    "warmup_epochs": Field(int, 20, ge=0),
    "warmup_lr": Field(float, 1e-6, ge=0.0),
    "min_lr": Field(float, 1e-6, ge=0.0),
    "cooldown_epochs": Field(int, 0, ge=0),
    "sched_on_updates": Field(bool, True),
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
    # EMA (ConvNeXt [19] 0.9999; iFormer's T-L configs turn it off, see configs/iformer_*.yaml)
    "model_ema": Field(bool, True),
    "model_ema_decay": Field(float, 0.9999, **PROB),
    "model_ema_warmup": Field(bool, False),
    # distillation (DeiT-style, through the classifier's distillation head)
    "distillation_type": Field(str, "none", choices=("none", "hard", "soft")),
    "teacher_model": Field(str, "regnety_160"),
    "teacher_path": Field(str, None, nullable=True),
    "distillation_alpha": Field(float, 0.5, **PROB),
    "distillation_tau": Field(float, 1.0, gt=0.0),
    # systems
    "device": Field(str, "auto", check=lambda v: None if _DEVICE.match(v) else "not a device name"),
    "amp": Field(bool, False),
    "amp_dtype": Field(str, "bfloat16", choices=("bfloat16", "float16")),  # float16 uses a loss scaler
    "channels_last": Field(bool, False),
    "compile": Field(bool, False),
    "grad_checkpointing": Field(bool, False),
    "sync_bn": Field(bool, False),
    "workers": Field(int, 8, ge=0),
    "pin_mem": Field(bool, True),
    "prefetcher": Field(bool, None, nullable=True),  # None: timm's GPU prefetcher on CUDA only
    "seed": Field(int, 0, ge=0, lt=2**32),
    "deterministic": Field(bool, False),
    "torch_threads": Field(int, None, nullable=True, ge=1),
    # output
    "output": Field(str, None, nullable=True),  # run folder; default runs/<model>
    "eval_every": Field(int, 1, ge=1),
    "log_every": Field(int, 50, ge=1),
    "keep_best": Field(bool, True),
    "allow_class_change": Field(bool, False),  # resume on data whose class names differ from the checkpoint's
}


def _warmup_fits(cfg: Mapping[str, Any]) -> str | None:
    if cfg["warmup_epochs"] > cfg["epochs"]:
        return (f"warmup_epochs = {cfg['warmup_epochs']} > epochs = {cfg['epochs']}: the warm-up must fit in the run "
                "(set warmup_epochs <= epochs, e.g. --set warmup_epochs=1)")
    return None


def _min_lr_below_lr(cfg: Mapping[str, Any]) -> str | None:
    if cfg["lr"] is not None and cfg["min_lr"] > cfg["lr"]:
        return f"min_lr = {cfg['min_lr']:g} > lr = {cfg['lr']:g}: the schedule would rise; set min_lr <= lr"
    return None


def _ordered_pairs(cfg: Mapping[str, Any]) -> str | None:
    for key in ("scale", "ratio"):
        lo, hi = cfg[key]
        if lo > hi:
            return f"{key} = {cfg[key]}: expected [low, high] with low <= high"
    return None


def _channels_agree(cfg: Mapping[str, Any]) -> str | None:
    if cfg["mean"] is None or cfg["std"] is None:
        if cfg["mean"] is not cfg["std"]:
            return "give both mean and std, or neither (the model's defaults)"
        if cfg["in_chans"] != 3:
            return (f"in_chans = {cfg['in_chans']}: mean and std need one value per input channel "
                    "(the models' defaults are for RGB): set both")
        return None
    if not len(cfg["mean"]) == len(cfg["std"]) == cfg["in_chans"]:
        return (f"mean ({len(cfg['mean'])} values) and std ({len(cfg['std'])} values) must have one value per input "
                f"channel (in_chans = {cfg['in_chans']})")
    return None


def _teacher_given(cfg: Mapping[str, Any]) -> str | None:
    if cfg["distillation_type"] != "none" and not cfg["teacher_path"]:
        return ("distillation needs teacher_path: a local file with the teacher's weights "
                "(e.g. DeiT's regnety_160-a5fe301d.pth); nothing is downloaded")
    return None


def _model_kwargs_entries(cfg: Mapping[str, Any]) -> str | None:
    dropped = [k for k, v in cfg["model_kwargs"].items() if v is None and ":" in k]
    if dropped:
        return f"model_kwargs key {dropped[0]!r} has no value: write {{key: value}} or --set model_kwargs.KEY=VALUE"
    return None


SCHEMA = Schema(FIELDS, rules=(_warmup_fits, _min_lr_below_lr, _ordered_pairs, _channels_agree, _teacher_given,
                               _model_kwargs_entries))
DEFAULTS: dict[str, Any] = SCHEMA.defaults()
CHOICES: dict[str, tuple[Any, ...]] = {k: f.choices for k, f in FIELDS.items() if f.choices}


DATA_KEYS = ("crop_pct", "interpolation", "mean", "std")


def data_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with each unset evaluation/normalisation key (``DATA_KEYS``) taken from the model's timm
    ``pretrained_cfg`` (ReGLA's: 224 px, crop 0.875, bicubic, ImageNet mean/std), so a recipe that does not say
    evaluates a model as its registry entry says; timm's ImageNet defaults for a model without one."""
    if all(cfg[k] is not None for k in DATA_KEYS):
        return cfg
    import timm
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    pcfg = timm.models.get_pretrained_cfg(cfg["model"]) if timm.is_model(cfg["model"]) else None
    model = pcfg.to_dict() if pcfg is not None else {}
    fallback = {"crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
                "std": IMAGENET_DEFAULT_STD}
    out = dict(cfg)
    for key in DATA_KEYS:
        if out[key] is None:
            value = model.get(key) or fallback[key]
            out[key] = list(value) if isinstance(value, (tuple, list)) else value
    return out


def find_config(name_or_path: str) -> Path:
    """Resolve ``name_or_path`` to a YAML file: a path, or a recipe name under ``configs/`` (``regla_t``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidates = [Path(os.environ.get("REGLA_CONFIGS", "configs")), Path(__file__).resolve().parents[3] / "configs"]
    for folder in candidates:
        for cand in (folder / name_or_path, folder / f"{name_or_path}.yaml"):
            if cand.is_file():
                return cand
    raise ConfigError(f"recipe {name_or_path!r} not found (not a file, nor a name under configs/)")


def load_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one recipe file; it must be a mapping of known keys.

    A recipe may start from another with ``base: NAME_OR_PATH`` (resolved like ``-c``; relative paths from the
    recipe's folder) and change only what differs, as the ablation recipes of Tables 5-7 do.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: recipes include each other in a loop ({' -> '.join(map(str, _seen))})")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the recipe ({e.strerror})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of option: value")
    base = data.pop("base", None)
    if base is None:
        return data
    local = path.parent / str(base)
    parent = load_yaml(local if local.is_file() else find_config(str(base)), (*_seen, path))
    return {**parent, **data}


def merge(base: dict[str, Any], updates: dict[str, Any], source: str) -> dict[str, Any]:
    """``base`` updated with ``updates``; unknown keys, wrong types and bad values are errors naming ``source``."""
    return SCHEMA.merge(base, updates, source)


def build_config(config: str | None, overrides: list[str] | None = None, base: dict[str, Any] | None = None,
                 flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults < ``base`` (demo / resumed run) < recipe file < ``flags`` (shortcut options) < ``key=value`` list.

    Returns a plain dict with every key of :data:`DEFAULTS`, each value checked; raises :class:`ConfigError`.
    """
    cfg = merge(DEFAULTS, base or {}, "built-in recipe")
    source = "built-in recipe"
    if config:
        path = find_config(config)
        cfg, source = merge(cfg, load_yaml(path), str(path)), str(path)
    if flags:
        cfg, source = merge(cfg, flags, "command line"), "command line"
    for text in overrides or []:
        key, value = parse_override(text)
        cfg, source = merge(cfg, {key: value}, f"--set {text}"), "the recipe with its overrides"
    validate(cfg, source)
    return cfg


def validate(cfg: dict[str, Any], source: str = "recipe") -> None:
    """Check a complete recipe: every value (type, range, choices) and the rules between keys."""
    SCHEMA.validate(cfg, source)


def scaled_lr(cfg: dict[str, Any], world_size: int) -> float:
    """Learning rate for this run: ``lr`` if given, else ``lr_base * global_batch / lr_base_batch``.

    The global batch counts every process and accumulation step. iFormer trains with 4e-3 at 4096 images
    (8 GPUs x 512), RepViT/RepNeXt scale 1e-3 per 512 images (main.py: ``lr * batch_size * world_size / 512``).
    """
    if cfg["lr"] is not None:
        return float(cfg["lr"])
    global_batch = cfg["batch_size"] * cfg["grad_accum"] * world_size
    return float(cfg["lr_base"]) * global_batch / float(cfg["lr_base_batch"])


def dump(cfg: dict[str, Any]) -> str:
    """The recipe as YAML text (saved in each run folder as ``config.yaml``)."""
    return yaml.safe_dump(cfg, sort_keys=False)
