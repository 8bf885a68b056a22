"""``regla train``: train a backbone from a recipe (configs/*.yaml), on a folder of images, or the built-in demo.

Precedence, lowest first: built-in defaults, the demo recipe (``--demo``), the checkpoint's recipe (``--resume``
without ``--config``), the ``--config`` file, the shortcut flags (``--lr`` ...), then each ``--set key=value``.

Every input is checked before training starts (:func:`preflight`): the recipe's values (:mod:`regla.config`), the
model name, the device, and the paths it names. Errors propagate to :func:`regla.cli.main` (one line, exit 2 for
bad input).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from ..config import Recipe
from ..errors import UsageError
from ..preflight import check_device, existing_dir, existing_file, require_model

# shortcut flag -> recipe key
SHORTCUTS = {
    "model": "model", "data": "data_dir", "output": "output", "epochs": "epochs", "batch_size": "batch_size",
    "lr": "lr", "device": "device", "seed": "seed", "workers": "workers", "grad_accum": "grad_accum",
    "teacher_path": "teacher_path", "img_size": "img_size",
}
SWITCHES = {"sync_bn": "sync_bn", "channels_last": "channels_last", "compile": "compile",
            "grad_checkpointing": "grad_checkpointing", "deterministic": "deterministic"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``regla train`` options on ``parser``."""
    parser.add_argument("-c", "--config", help="recipe YAML, or a name under configs/ (regla_t, iformer_t, ...)")
    parser.add_argument("--data", help="dataset root: train/ and val/ with one folder per class")
    parser.add_argument("--output", help="run folder (default runs/<model>)")
    parser.add_argument("--model", help="timm model name (regla_t ... regla_x, repvit_m1_0, iformer_t, ...)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--lr", type=float, help="absolute learning rate (default: lr_base scaled by global batch)")
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (checked before training starts)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int, help="data loader processes per rank")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--teacher-path", help="local weights of the distillation teacher (regnety_160)")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision (fp16 adds a loss scaler)")
    for flag in SWITCHES:
        parser.add_argument(f"--{flag.replace('_', '-')}", action="store_true", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key (repeatable), e.g. --set mixup=0 --set scale=[0.5,1]")
    parser.add_argument("--resume", metavar="RUN_DIR|CKPT", help="continue a run from RUN_DIR/last.pth or a file")
    parser.add_argument("--demo", action="store_true",
                        help="train regla_t on scikit-learn's digits (CPU, a few minutes, >= 90%% val top-1)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def shortcut_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Values given through the shortcut flags, as recipe keys."""
    out = {key: getattr(args, flag) for flag, key in SHORTCUTS.items() if getattr(args, flag, None) is not None}
    out.update({key: True for flag, key in SWITCHES.items() if getattr(args, flag, None)})
    if args.amp:
        out.update(amp=True, amp_dtype="bfloat16" if args.amp == "bf16" else "float16")
    return out


def resolve_config(args: argparse.Namespace) -> Recipe:
    """The recipe this invocation runs, following the documented precedence."""
    from regla.runs.config import resolve_recipe

    from .config import SCHEMA

    base: dict[str, Any] = {}
    if args.demo:
        try:
            import sklearn  # noqa: F401

            from regla.data.digits import write_digits

            from .demo import DEMO_RECIPE
        except ImportError as e:
            raise UsageError("the demo reads scikit-learn's digits: pip install 'regla[train]'") from e

        base = {**DEMO_RECIPE, "data_dir": str(write_digits())} if not args.print_config else dict(DEMO_RECIPE)
    return resolve_recipe(SCHEMA, args.config, args.overrides, flags=shortcut_overrides(args), base=base,
                          resume=args.resume, output=args.output)


def preflight(cfg: Recipe, resume: str | None) -> None:
    """Everything that can be checked before training starts: model, device, the paths the recipe names."""
    from regla.runs.config import check_output

    require_model(cfg.task.model)
    check_device(cfg.run.device)
    if cfg.task.data_dir and not cfg.task.dataset:
        existing_dir(cfg.task.data_dir, "--data")
    if cfg.task.initial_checkpoint:
        existing_file(cfg.task.initial_checkpoint, "initial_checkpoint")
    if cfg.task.distillation_type != "none":
        existing_file(cfg.task.teacher_path, "--teacher-path")
    check_output(cfg.run, cfg.task.model, resume, "regla train")


def setup_logging() -> None:
    """INFO on rank 0, warnings only on the other ranks, to stdout."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s",
                        stream=sys.stdout)


def run(args: argparse.Namespace) -> int:
    """Resolve the recipe, check every input, train; print the result on rank 0."""
    setup_logging()
    cfg = resolve_config(args)
    if args.print_config:
        from .config import dump

        print(dump(cfg), end="")
        return 0
    preflight(cfg, args.resume)

    from .trainer import train

    result = train(cfg, resume=args.resume, show_bar=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    last = result.last
    if last.get("top1") is not None:
        print(f"done: {result.epochs} epochs, val top-1 {last['top1']:.2f}% (best {result.best['score']:.2f}%), "
              f"run folder {result.run_dir}")
    if last.get("skipped_images"):
        print(f"{last['skipped_images']} unreadable image(s) were skipped: see "
              f"{result.run_dir / 'skipped_images.txt'}", file=sys.stderr)
    return 0
