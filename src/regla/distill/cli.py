"""``regla distill``: multi-teacher feature distillation of a backbone (ReGLA §3.5, Table 8), or ``--demo``.

Recipes: ``configs/distill/table8_row{1..6}.yaml`` (each row of Table 8), ``regla_{m,l,x}_in21k.yaml`` (the 30-epoch
ImageNet-21K phase); then ``regla train -c distill/regla_m_in1k_ft`` fine-tunes the distilled backbone for 200
epochs. Precedence, lowest first: defaults (Table 8's last row), ``--demo``, the resumed run's recipe, ``-c``, the
shortcut flags, ``--set key=value``. Every input (recipe, model, device, folders, teacher checkpoints) is checked
before any work; the run itself is :func:`regla.runs.harness.run` (torchrun, AMP, resume, logs, checkpoints).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from regla.config import Recipe
from regla.errors import UsageError
from regla.preflight import check_device, existing_dir, require_model

SHORTCUTS = {"model": "model", "data": "data_dir", "output": "output", "epochs": "epochs", "batch_size": "batch_size",
             "lr": "lr", "device": "device", "seed": "seed", "workers": "workers", "img_size": "img_size",
             "knn_bank": "knn_bank", "knn_queries": "knn_queries"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="recipe YAML, or a name under configs/distill/ (table8_row6, ...)")
    parser.add_argument("--data", help="training images (class folders, or a root with train/); labels unused")
    parser.add_argument("--model", help="student: regla_t ... regla_x, or any timm model with forward_intermediates")
    parser.add_argument("--teachers", help="comma-separated: a set (4tea, 6tea, 7tea) and/or teacher names")
    parser.add_argument("--teacher-checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="local release file of a teacher (repeatable)")
    parser.add_argument("--knn-bank", help="labelled folder the KNN (k=20) evaluation takes neighbours from")
    parser.add_argument("--knn-queries", help="labelled folder the KNN evaluation classifies")
    parser.add_argument("--output", help="run folder")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--lr", type=float, help="absolute learning rate")
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision for the student")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key, e.g. --set onlycos=false --set teacher_drop=0.5")
    parser.add_argument("--resume", metavar="RUN_DIR|CKPT", help="continue a run from RUN_DIR/last.pth or a file")
    parser.add_argument("--demo", action="store_true", help="two teachers trained on scikit-learn's digits, a "
                        "ReGLA-T distilled from them without labels, KNN table (CPU, minutes)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def shortcut_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Values of the shortcut flags, as recipe keys."""
    out = {key: getattr(args, flag) for flag, key in SHORTCUTS.items() if getattr(args, flag, None) is not None}
    if args.teachers:
        out["teachers"] = [t.strip() for t in args.teachers.split(",") if t.strip()]
    if args.teacher_checkpoint:
        pairs = {}
        for text in args.teacher_checkpoint:
            name, sep, path = text.partition("=")
            if not sep or not name or not path:
                raise UsageError(f"--teacher-checkpoint {text!r}: expected NAME=PATH")
            pairs[name.strip()] = path.strip()
        out["teacher_checkpoints"] = pairs
    if args.amp:
        out.update(amp=True, amp_dtype="bfloat16" if args.amp == "bf16" else "float16")
    return out


def resolve_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Recipe:
    from regla.runs.config import resolve_recipe

    from .config import SCHEMA

    flags = shortcut_overrides(args)
    if "teacher_checkpoints" in flags and args.config:  # add to the recipe's list rather than replace it
        from regla.config import find_config, load_yaml

        recipe = load_yaml(find_config(args.config, "distill")).get("teacher_checkpoints") or {}
        flags["teacher_checkpoints"] = {**recipe, **flags["teacher_checkpoints"]}
    return resolve_recipe(SCHEMA, args.config, args.overrides, flags=flags, base=base, resume=args.resume,
                          output=args.output, configs_dir="distill")


def preflight(cfg: Recipe, resume: str | None) -> None:
    """Model, device, folders and every teacher's checkpoint file, before anything is built."""
    from regla.runs.config import check_output

    from .release import check_checkpoint
    from .teachers import resolve_teachers

    require_model(cfg.task.model)
    check_device(cfg.run.device)
    if cfg.task.data_dir:
        existing_dir(cfg.task.data_dir, "data_dir")
    for key, folder in (("knn_bank", cfg.task.knn_bank), ("knn_queries", cfg.task.knn_queries)):
        if folder:
            existing_dir(folder, key)
    check_output(cfg.run, cfg.task.model, resume, "regla distill")
    for spec in resolve_teachers(cfg.task.teachers, cfg.task.teacher_checkpoints):
        require_model(spec.model)
        check_checkpoint(spec)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(message)s", stream=sys.stdout)
    if args.demo:
        from .demo import run_demo

        return run_demo(args, resolve_config, preflight)
    cfg = resolve_config(args)
    if args.print_config:
        from regla.config import dump

        print(dump(cfg), end="")
        return 0
    preflight(cfg, args.resume)
    from regla.runs.harness import run as run_task

    from .task import DistillTask

    result = run_task(DistillTask(), cfg, cfg.task.model, resume=args.resume, show_bar=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        knn = result.last.get("knn_top1")
        shown = f", KNN (k={cfg.task.knn_k[0]}) top-1 {knn:.2f}%" if knn is not None else ""
        print(f"done: {result.epochs} epochs{shown}; student weights {result.run_dir / 'last.safetensors'}")
    return 0
