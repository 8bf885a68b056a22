"""``regla distill --demo``: two teachers of different kinds, a ReGLA-T distilled from them without labels (§3.5).

1. Two teachers are trained with labels on scikit-learn's digits by ``regla train --demo`` as a child process
   (cached under ``<cache>/regla/distill_demo/``, reused by later runs): a small ViT with a class token (patch 8,
   4 blocks of width 64, timm's ``VisionTransformer``, inception normalisation) and a RegNetX-200MF (convolutional,
   no class token, ImageNet normalisation).
2. A ReGLA-T student is distilled from both on the digits' training images (labels unused) with Table 8's final
   strategy (``addcls``: the RegNet's class-token target is its pooled patch tokens), on the run harness.
3. KNN (k=20, DINO's weighted vote) top-1 on the digits' validation split is reported for the distilled student,
   the same student at random initialisation, and each teacher, with two banks: the whole training split and 5
   labelled images per class (few-shot, fixed seed). Random features already do well on digits, so the student is
   judged against them. The table is printed and written to ``demo.json`` in the run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from regla.config import Recipe

_logger = logging.getLogger("regla.distill")

#: The two teachers: name -> regla train overrides and the teacher entry of the distillation recipe.
TEACHERS: dict[str, dict[str, Any]] = {
    "vit": {"model": "vit_tiny_patch16_224", "class_token": "token", "train": {"epochs": 15, "lr": 1e-3},
            "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2}},
    "regnet": {"model": "regnetx_002", "class_token": None, "model_kwargs": {}, "train": {"epochs": 6}},
}

#: The distillation recipe of the demo (the regla train demo's optimizer family, 32 px, small heads).
DISTILL_DEMO: dict[str, Any] = {
    "model": "regla_t", "img_size": 32, "epochs": 8, "warmup_epochs": 1, "batch_size": 32, "lr": 2e-3,
    "min_lr": 1e-5, "weight_decay": 0.05, "head_hidden": 128, "head_last_hidden": 256, "scale": [0.75, 1.0],
    "ratio": [0.9, 1.1], "hflip": 0.0, "color_jitter": 0.0, "knn_crop_pct": 1.0, "workers": 0, "sync_bn": False,
    "model_ema": False, "knn_k": [20], "log_every": 10, "eval_every": 2, "device": "auto",
    "output": "runs/distill_demo",
}
FEW_SHOT = 5


#: torchrun's variables: a teacher is trained by its own one-process ``regla train``.
_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def teacher_command(name: str, digits: Path, run_dir: Path, show_bar: bool) -> list[str]:
    """The ``regla train --demo`` command line that trains (or resumes) one teacher into ``run_dir``."""
    t = TEACHERS[name]
    argv = [sys.executable, "-m", "regla.cli", "train", "--demo", "--data", str(digits), "--model", t["model"],
            "--output", str(run_dir), "--set", "model_kwargs=" + json.dumps(t["model_kwargs"]),
            *(f"--set={key}={value}" for key, value in t["train"].items())]
    if (run_dir / "last.pth").is_file():
        argv += ["--resume", str(run_dir)]
    return argv + ([] if show_bar else ["--no-progress"])


def teacher_run(name: str, digits: Path, show_bar: bool) -> Path:
    """The cached ``regla train`` run of one teacher (trained, or resumed, when not complete); its folder.

    The teacher is trained by ``regla train --demo`` itself, in a child process (one trainer does not import
    another): the demo recipe with the teacher's model, ``model_kwargs``, epochs and learning rate.
    """
    from regla.data.digits import cache_dir
    from regla.errors import RunFailure

    run_dir = cache_dir() / "distill_demo" / name
    if (run_dir / ".complete").is_file():
        return run_dir
    _logger.info("demo: training the %s teacher (%s) on the digits with regla train -> %s", name,
                 TEACHERS[name]["model"], run_dir)
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV}
    sys.stdout.flush()
    done = subprocess.run(teacher_command(name, digits, run_dir, show_bar), env=env, check=False)
    if done.returncode != 0:
        raise RunFailure(f"training the {name} teacher with regla train failed (exit {done.returncode}); "
                         f"its run folder is {run_dir}")
    (run_dir / ".complete").write_text("regla train\n")
    return run_dir


def teacher_entry(name: str, run_dir: Path) -> dict[str, Any]:
    """The recipe's teacher mapping: model, its own normalisation (as it was trained) and the weights file."""
    from regla.checkpoints import read_weights

    path = run_dir / "best.safetensors"
    info = read_weights(path).info
    t = TEACHERS[name]
    return {"name": name, "model": t["model"], "model_kwargs": t["model_kwargs"], "class_token": t["class_token"],
            "resolution": int(info.input_size[-1]), "mean": list(info.mean), "std": list(info.std),
            "layout": "timm", "checkpoint": str(path)}


def knn_row(model: torch.nn.Module, pool: str, mean, std, digits: Path, device: torch.device,
            size: int) -> dict[str, float]:
    """KNN (k=20) top-1 on the validation split with the whole training split, then 5 per class, as the bank."""
    from regla.data.folders import check_class_folders, class_map_for
    from regla.eval.knn import extract_features, folder_batches, knn_scores

    class_map = class_map_for(check_class_folders(digits / "train"))
    config = {"input_size": (3, size, size), "interpolation": "bicubic", "mean": tuple(mean), "std": tuple(std),
              "crop_pct": 1.0, "crop_mode": "center"}
    model = model.to(device).eval()

    def feats(folder: Path, per_class: int | None):
        return extract_features(model, folder_batches(folder, class_map, config, batch_size=128, workers=0,
                                                      device=device, per_class=per_class, seed=0), device, pool)

    queries, query_y = feats(digits / "val", None)
    row = {}
    for key, per_class in (("whole_bank", None), ("five_per_class", FEW_SHOT)):
        bank, bank_y = feats(digits / "train", per_class)
        row[key] = knn_scores(bank, bank_y, queries, query_y, [20], 0.07, len(class_map))["top1_k20"]
    return row


def evaluate_all(cfg: Recipe, run_dir: Path, teachers: dict[str, dict[str, Any]], digits: Path,
                 device: torch.device) -> dict[str, dict[str, float]]:
    """The demo table: distilled student, the student at random initialisation, each teacher."""
    import timm

    from regla.checkpoints import create_model_from_weights

    size = cfg.task.img_size
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    student, _, _ = create_model_from_weights(run_dir / "last.safetensors", cfg.task.model, num_classes=0)
    table = {"student": knn_row(student, "avg", mean, std, digits, device, size)}
    torch.manual_seed(cfg.run.seed)
    table["random_init"] = knn_row(timm.create_model(cfg.task.model, num_classes=0), "avg", mean, std, digits, device,
                                   size)
    for name, t in teachers.items():
        model, _, _ = create_model_from_weights(t["checkpoint"], t["model"], **t["model_kwargs"])
        table[f"{name}_teacher"] = knn_row(model, "auto", t["mean"], t["std"], digits, device, t["resolution"])
    return table


def print_table(table: dict[str, dict[str, float]]) -> None:
    print(f"{'KNN k=20 top-1 on digits val':34s} {'whole bank':>10s} {'5 per class':>12s}")
    for name, row in table.items():
        print(f"{name:34s} {row['whole_bank']:9.2f}% {row['five_per_class']:11.2f}%")


def demo_base(args: argparse.Namespace) -> dict[str, Any]:
    """The demo's recipe keys: the digits (written once), the KNN folders and the two teachers, trained and cached
    unless only the recipe is printed (then the teachers are named only). ``args``: the command's flags."""
    from regla.data.digits import DEMO_THREADS, write_digits

    digits = write_digits()
    base = {**DISTILL_DEMO, "torch_threads": DEMO_THREADS, "data_dir": str(digits),
            "knn_bank": str(digits / "train"), "knn_queries": str(digits / "val")}
    if args.print_config:
        return {**base, "teachers": list(TEACHERS)}
    return {**base, "teachers": list(demo_teachers(digits, show_bar=not args.no_progress).values())}


def demo_teachers(digits: Path, show_bar: bool) -> dict[str, dict[str, Any]]:
    """Each teacher's recipe entry, its ``regla train --demo`` run trained first if the cache does not hold it."""
    return {name: teacher_entry(name, teacher_run(name, digits, show_bar)) for name in TEACHERS}


def finish(f: Any) -> str:
    """The KNN table (printed and written to ``demo.json`` in the run folder); the closing line's text.

    ``f`` is the front door's :class:`regla.runs.frontdoor.Finished`."""
    from regla.data.digits import write_digits
    from regla.outputs import atomic_write_text
    from regla.runs.distributed import resolve_device

    digits = write_digits()
    teachers = demo_teachers(digits, show_bar=False)
    device = torch.device(resolve_device(f.cfg.run.device))
    run_dir = f.result.run_dir
    table = evaluate_all(f.cfg, run_dir, teachers, digits, device)
    print_table(table)
    out = {**table, "seconds": round(f.seconds, 1), "teachers": teachers, "command": "regla distill --demo"}
    atomic_write_text(run_dir / "demo.json", json.dumps(out, indent=2) + "\n")
    return f"demo in {out['seconds']:.0f} s; table in {run_dir / 'demo.json'}"
