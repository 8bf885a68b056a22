"""Training recipes: defaults, YAML loading, command-line overrides and the learning-rate scaling rule.

A recipe is a flat mapping of option names to values (the names follow timm's ``train.py`` where one exists).
``configs/*.yaml`` hold the ReGLA recipes of Table 2 (ReGLA §4.1: ImageNet-1K, 224 px, 300 epochs, 20-epoch
linear warm-up, the ConvNeXt / iFormer recipe) and the peers' published recipes. Every key can be overridden on
the command line with ``--set key=value`` (values parsed as YAML, so ``--set scale=[0.5,1.0]`` gives a list).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

# The defaults are iFormer's published recipe (github.com/ChuanyangZheng/iFormer, main.py arguments and
# configs/iFormer_t.yaml), which ReGLA §4.1 follows. The recipe files in configs/ repeat every value that matters.
DEFAULTS: dict[str, Any] = {
    # model
    "model": "regla_t",
    "model_kwargs": {},  # extra timm.create_model arguments, e.g. the ablation switches {early_block: dw7}
    "num_classes": None,  # None: the number of class folders of the training set
    "drop_path": 0.0,
    "initial_checkpoint": None,  # weights to start from (fine-tuning); not a resume
    # data (anything timm.data.create_dataset reads; "" = an ImageNet-style folder)
    "data_dir": None,
    "dataset": "",
    "train_split": "train",
    "val_split": "val",
    "img_size": 224,
    "crop_pct": 0.875,  # 224/256, ConvNeXt/iFormer and DeiT evaluation resize
    "interpolation": "bicubic",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "in_chans": 3,
    # schedule and optimizer
    "epochs": 300,
    "batch_size": 512,  # per process
    "grad_accum": 1,
    "opt": "adamw",
    "lr": None,  # absolute learning rate; None: lr_base * global_batch / lr_base_batch
    "lr_base": 4e-3,
    "lr_base_batch": 4096,
    "weight_decay": 0.05,
    "opt_eps": 1e-8,
    "opt_betas": None,
    "momentum": 0.9,
    "clip_grad": None,
    "clip_mode": "norm",
    "sched": "cosine",
    "warmup_epochs": 20,
    "warmup_lr": 1e-6,
    "min_lr": 1e-6,
    "cooldown_epochs": 0,
    "sched_on_updates": True,
    # augmentation and regularisation
    "aa": "rand-m9-mstd0.5-inc1",
    "color_jitter": 0.4,
    "hflip": 0.5,
    "scale": [0.08, 1.0],
    "ratio": [0.75, 1.3333333333333333],
    "reprob": 0.25,
    "remode": "pixel",
    "recount": 1,
    "mixup": 0.8,
    "cutmix": 1.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "mixup_mode": "batch",
    "smoothing": 0.1,
    "aug_repeats": 0,
    # EMA (ConvNeXt [19] 0.9999; iFormer's T-L configs turn it off, see configs/iformer_*.yaml)
    "model_ema": True,
    "model_ema_decay": 0.9999,
    "model_ema_warmup": False,
    # distillation (DeiT-style, through the classifier's distillation head)
    "distillation_type": "none",  # none | hard | soft
    "teacher_model": "regnety_160",
    "teacher_path": None,
    "distillation_alpha": 0.5,
    "distillation_tau": 1.0,
    # systems
    "device": "auto",  # auto | cpu | cuda
    "amp": False,
    "amp_dtype": "bfloat16",  # bfloat16 | float16 (float16 uses a loss scaler)
    "channels_last": False,
    "compile": False,
    "grad_checkpointing": False,
    "sync_bn": False,
    "workers": 8,
    "pin_mem": True,
    "prefetcher": None,  # None: timm's GPU prefetcher (normalise, erase, fast mixup on device) on CUDA only
    "seed": 0,
    "deterministic": False,
    "torch_threads": None,
    # output
    "output": None,  # run folder; default runs/<model>
    "eval_every": 1,
    "log_every": 50,
    "keep_best": True,
    "allow_class_change": False,  # resume on data whose class names differ from the checkpoint's (deliberately)
}

CHOICES: dict[str, tuple[Any, ...]] = {
    "distillation_type": ("none", "hard", "soft"),
    "amp_dtype": ("bfloat16", "float16"),
    "clip_mode": ("norm", "value", "agc"),
}


class ConfigError(ValueError):
    """A recipe or an override that cannot be used; the message says which key and why."""


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
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of option: value")
    base = data.pop("base", None)
    if base is None:
        return data
    local = path.parent / str(base)
    parent = load_yaml(local if local.is_file() else find_config(str(base)), (*_seen, path))
    return {**parent, **data}


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value`` and parse the value as YAML (``1e-3`` -> float, ``[1, 2]`` -> list, ``null`` -> None)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return key, _number(value)


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read it as the number it is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _coerce(key: str, value: Any) -> Any:
    """Make YAML's ``4e-3`` (a string in YAML 1.1) a float where the default is numeric."""
    default = DEFAULTS.get(key)
    if isinstance(value, str) and (isinstance(default, float) or key in ("lr", "clip_grad")):
        try:
            return float(value)
        except ValueError as e:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from e
    return value


def merge(base: dict[str, Any], updates: dict[str, Any], source: str) -> dict[str, Any]:
    """Return ``base`` updated with ``updates``; unknown keys and bad choices are errors naming ``source``."""
    out = copy.deepcopy(base)
    for key, value in updates.items():
        if key not in DEFAULTS:
            raise ConfigError(f"{source}: unknown option {key!r} (see `regla train --print-config` for the keys)")
        value = _coerce(key, value)
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{source}: {key} must be one of {CHOICES[key]}, got {value!r}")
        out[key] = value
    return out


def build_config(config: str | None, overrides: list[str] | None = None, base: dict[str, Any] | None = None,
                 flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults < ``base`` (demo / resumed run) < recipe file < ``flags`` (shortcut options) < ``key=value`` list."""
    cfg = merge(DEFAULTS, base or {}, "built-in recipe")
    if config:
        path = find_config(config)
        cfg = merge(cfg, load_yaml(path), str(path))
    cfg = merge(cfg, flags or {}, "command line")
    for text in overrides or []:
        key, value = parse_override(text)
        cfg = merge(cfg, {key: value}, f"--set {text}")
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Reject values that would fail later with a less clear message."""
    if not isinstance(cfg["model_kwargs"], dict):
        raise ConfigError(f"model_kwargs must be a mapping of timm.create_model arguments, got {cfg['model_kwargs']!r}")
    for key in ("epochs", "batch_size", "grad_accum", "img_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["distillation_type"] != "none" and not cfg["teacher_path"]:
        raise ConfigError("distillation needs teacher_path: a local file with the teacher's weights "
                          "(e.g. DeiT's regnety_160-a5fe301d.pth); nothing is downloaded")


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
