"""``regla train``: train a backbone from a recipe (configs/*.yaml), on a folder of images, or the built-in demo.

A declaration on the one front door (:mod:`regla.runs.frontdoor`: the shared flags, the recipe's precedence, logging,
the output check, the harness call and the closing line). Precedence, lowest first: built-in defaults, the demo
recipe (``--demo``), the checkpoint's recipe (``--resume`` without ``--config``), the ``--config`` file, the shortcut
flags (``--lr`` ...), then each ``--set key=value``.

Every input is checked before training starts (:func:`check`): the recipe's values (:mod:`regla.config`), the
model name, the device, and the paths it names. Errors propagate to :func:`regla.cli.main` (one line, exit 2 for
bad input).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import Recipe
from ..errors import UsageError
from ..preflight import existing_dir, existing_file, require_model
from ..runs import frontdoor

# shortcut flag -> recipe key (the run section's are the front door's)
SHORTCUTS = {"model": "model", "data": "data_dir", "grad_accum": "grad_accum", "teacher_path": "teacher_path",
             "img_size": "img_size"}
SWITCHES = {"sync_bn": "sync_bn", "channels_last": "channels_last", "compile": "compile",
            "grad_checkpointing": "grad_checkpointing", "deterministic": "deterministic"}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``regla train``'s own options."""
    parser.add_argument("--data", help="dataset root: train/ and val/ with one folder per class")
    parser.add_argument("--model", help="timm model name (regla_t ... regla_x, repvit_m1_0, iformer_t, ...)")
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--teacher-path", help="local weights of the distillation teacher (regnety_160)")
    for flag in SWITCHES:
        parser.add_argument(f"--{flag.replace('_', '-')}", action="store_true", default=None)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """Values given through ``regla train``'s own flags, as recipe keys."""
    out = {key: getattr(args, flag) for flag, key in SHORTCUTS.items() if getattr(args, flag, None) is not None}
    out.update({key: True for flag, key in SWITCHES.items() if getattr(args, flag, None)})
    return out


def schema() -> Any:
    from .config import SCHEMA

    return SCHEMA


def demo_base(args: argparse.Namespace) -> dict[str, Any]:
    """The demo recipe on scikit-learn's digits (written once to the cache, unless only the recipe is printed)."""
    try:
        import sklearn  # noqa: F401

        from regla.data.digits import write_digits

        from .demo import DEMO_RECIPE
    except ImportError as e:
        raise UsageError("the demo reads scikit-learn's digits: pip install 'regla[train]'") from e
    return dict(DEMO_RECIPE) if args.print_config else {**DEMO_RECIPE, "data_dir": str(write_digits())}


def check(cfg: Recipe, args: argparse.Namespace) -> None:
    """The model and the paths the recipe names, before anything is built."""
    require_model(cfg.task.model)
    if cfg.task.data_dir and not cfg.task.dataset:
        existing_dir(cfg.task.data_dir, "--data")
    if cfg.task.initial_checkpoint:
        existing_file(cfg.task.initial_checkpoint, "initial_checkpoint")
    if cfg.task.distillation_type != "none":
        existing_file(cfg.task.teacher_path, "--teacher-path")


def complete(cfg: Recipe) -> Recipe:
    """Unset transform keys from the model's pretrained_cfg (saved in config.yaml)."""
    from .config import data_settings

    return data_settings(cfg)


def make_task(cfg: Recipe, args: argparse.Namespace) -> Any:
    """The classification task."""
    from .task import ClassificationTask

    return ClassificationTask()


def summary(f: frontdoor.Finished) -> str | None:
    """Top-1 of the last and the best epoch; the skipped images, if any, on stderr."""
    last, run_dir = f.result.last, f.result.run_dir
    if last.get("skipped_images"):
        print(f"{last['skipped_images']} unreadable image(s) were skipped: see {run_dir / 'skipped_images.txt'}",
              file=sys.stderr)
    if last.get("top1") is None:
        return None
    return (f"{f.result.epochs} epochs, val top-1 {last['top1']:.2f}% (best {f.result.best['score']:.2f}%), "
            f"run folder {run_dir}")


TRAINER = frontdoor.Trainer(
    command="regla train", schema=schema, task=make_task, summary=summary, check=check, complete=complete,
    add_flags=add_flags, flags=flag_values,
    config_help="recipe YAML, or a name under configs/ (regla_t, iformer_t, ...)",
    demo=frontdoor.Demo("train regla_t on scikit-learn's digits (CPU, a few minutes, >= 90%% val top-1)", demo_base))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``regla train`` options on ``parser``."""
    frontdoor.add_arguments(parser, TRAINER)


def run(args: argparse.Namespace) -> int:
    """Resolve the recipe, check every input, train; print the result on rank 0."""
    return frontdoor.run(args, TRAINER)
