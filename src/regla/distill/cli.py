"""``regla distill``: multi-teacher feature distillation of a backbone (ReGLA §3.5, Table 8), or ``--demo``.

Recipes: ``configs/distill/table8_row{1..6}.yaml`` (each row of Table 8), ``regla_{m,l,x}_in21k.yaml`` (the 30-epoch
ImageNet-21K phase); then ``regla train -c distill/regla_m_in1k_ft`` fine-tunes the distilled backbone for 200
epochs. A declaration on the one front door (:mod:`regla.runs.frontdoor`); precedence, lowest first: defaults
(Table 8's last row), ``--demo``, the resumed run's recipe, ``-c``, the shortcut flags, ``--set key=value``. Every
input (recipe, model, device, folders, teacher checkpoints) is checked before any work; the run itself is
:func:`regla.runs.harness.run` (torchrun, AMP, resume, logs, checkpoints).
"""

from __future__ import annotations

import argparse
from typing import Any

from regla.config import Recipe
from regla.errors import UsageError
from regla.preflight import existing_dir, require_model
from regla.runs import frontdoor

SHORTCUTS = {"model": "model", "data": "data_dir", "img_size": "img_size", "knn_bank": "knn_bank",
             "knn_queries": "knn_queries"}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``regla distill``'s own options."""
    parser.add_argument("--data", help="training images (class folders, or a root with train/); labels unused")
    parser.add_argument("--model", help="student: regla_t ... regla_x, or any timm model with forward_intermediates")
    parser.add_argument("--teachers", help="comma-separated: a set (4tea, 6tea, 7tea) and/or teacher names")
    parser.add_argument("--teacher-checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="local release file of a teacher (repeatable)")
    parser.add_argument("--knn-bank", help="labelled folder the KNN (k=20) evaluation takes neighbours from")
    parser.add_argument("--knn-queries", help="labelled folder the KNN evaluation classifies")
    parser.add_argument("--img-size", type=int)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """Values of ``regla distill``'s own flags, as recipe keys; ``--teacher-checkpoint`` adds to the recipe's."""
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
        if args.config:  # add to the recipe's list rather than replace it
            from regla.config import find_config, load_yaml

            recipe = load_yaml(find_config(args.config, "distill")).get("teacher_checkpoints") or {}
            out["teacher_checkpoints"] = {**recipe, **pairs}
    return out


def schema() -> Any:
    from .config import SCHEMA

    return SCHEMA


def check(cfg: Recipe, args: argparse.Namespace) -> None:
    """Model, folders and every teacher's checkpoint file, before anything is built."""
    from .release import check_checkpoint
    from .teachers import resolve_teachers

    require_model(cfg.task.model)
    if cfg.task.data_dir:
        existing_dir(cfg.task.data_dir, "data_dir")
    for key, folder in (("knn_bank", cfg.task.knn_bank), ("knn_queries", cfg.task.knn_queries)):
        if folder:
            existing_dir(folder, key)
    for spec in resolve_teachers(cfg.task.teachers, cfg.task.teacher_checkpoints):
        require_model(spec.model)
        check_checkpoint(spec)


def make_task(cfg: Recipe, args: argparse.Namespace) -> Any:
    from .task import DistillTask

    return DistillTask()


def summary(f: frontdoor.Finished) -> str:
    """Epochs, the last KNN top-1 (when the recipe names KNN folders) and the student's weights file."""
    knn = f.result.last.get("knn_top1")
    shown = f", KNN (k={f.cfg.task.knn_k[0]}) top-1 {knn:.2f}%" if knn is not None else ""
    return f"{f.result.epochs} epochs{shown}; student weights {f.result.run_dir / 'last.safetensors'}"


def _demo_base(args: argparse.Namespace) -> dict[str, Any]:
    from .demo import demo_base

    return demo_base(args)


def _demo_finish(f: frontdoor.Finished) -> str:
    from .demo import finish

    return finish(f)


TRAINER = frontdoor.Trainer(
    command="regla distill", schema=schema, task=make_task, summary=summary, check=check, add_flags=add_flags,
    flags=flag_values, configs_dir="distill", output_help="run folder (default runs/<model>)",
    config_help="recipe YAML, or a name under configs/distill/ (table8_row6, ...)",
    demo=frontdoor.Demo("two teachers trained on scikit-learn's digits, a ReGLA-T distilled from them without "
                        "labels, KNN table (CPU, minutes)", _demo_base, _demo_finish))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    frontdoor.add_arguments(parser, TRAINER)


def run(args: argparse.Namespace) -> int:
    return frontdoor.run(args, TRAINER)
