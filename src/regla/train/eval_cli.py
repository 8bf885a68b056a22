"""``regla eval``: top-1/top-5 and throughput of a checkpoint or a fused model on an image folder.

Any resolution and crop ratio (resize to ``img_size / crop_pct``, centre crop ``img_size``; the ReGLA/iFormer
protocol is 224 px at 0.875). ``--fuse`` evaluates the re-parameterised network (``timm.utils.reparameterize_model``:
BN folded into convolutions, parallel branches merged), as deployed. Runs as one process or under ``torchrun``
(each rank evaluates a disjoint shard; counts are summed, so no image is counted twice).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

_logger = logging.getLogger("regla.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="folder of class folders, or a dataset root holding val/ (see --split)")
    parser.add_argument("--split", default="val", help="sub-folder to evaluate when --data is a dataset root")
    parser.add_argument("--dataset", default="", help="timm create_dataset name for non-folder datasets")
    parser.add_argument("--checkpoint", required=True, help="a `regla train` .pth, or a .safetensors (+ --model)")
    parser.add_argument("--model", help="timm model name (required for .safetensors; checks a .pth)")
    parser.add_argument("--num-classes", type=int, help="for .safetensors on non-folder datasets")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw weights, not the EMA")
    parser.add_argument("--fuse", action="store_true", help="re-parameterise (fuse) the model before evaluation")
    parser.add_argument("--img-size", type=int, default=None, help="evaluation resolution (default: the recipe's)")
    parser.add_argument("--crop-pct", type=float, default=None, help="centre-crop ratio (default: the recipe's)")
    parser.add_argument("--interpolation", default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")


def eval_folder(data: str, split: str) -> tuple[Path, bool]:
    """The folder to read: ``data`` itself if it holds class folders, else ``data/split`` (must exist)."""
    from .data import DataError, find_split

    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    try:
        return find_split(root, split), True
    except DataError:
        return root, False


def load_for_eval(args: argparse.Namespace, folder_classes: list[str] | None) -> tuple[torch.nn.Module, dict]:
    """Build the model and load its weights; returns it with the recipe used for evaluation transforms."""
    import timm

    import regla  # noqa: F401

    from .checkpoint import CheckpointError, load_checkpoint
    from .config import DEFAULTS
    from .data import class_map_for

    path = Path(args.checkpoint)
    if path.suffix == ".safetensors":
        from regla.checkpoints import read_weights

        if not args.model:
            raise CheckpointError("a .safetensors file holds weights only: give --model NAME")
        state = read_weights(path).state
        cfg = dict(DEFAULTS, model=args.model)
        num_classes = args.num_classes or (len(folder_classes) if folder_classes else None)
        class_map = class_map_for(folder_classes) if folder_classes else None
        distillation = any(k.startswith("head_dist") or ".head_dist" in k for k in state)
    else:
        ckpt = load_checkpoint(path)
        cfg, arch = dict(ckpt["cfg"]), ckpt["arch"]
        if args.model and args.model != arch["model"]:
            raise CheckpointError(f"{path} was trained as {arch['model']!r}, not {args.model!r}")
        num_classes, class_map, distillation = arch["num_classes"], ckpt["class_map"], arch["distillation"]
        use_ema = ckpt["model_ema"] is not None and not args.no_ema
        state = ckpt["model_ema"] if use_ema else ckpt["model"]
    if not num_classes:
        raise CheckpointError("cannot tell the number of classes: give --num-classes")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if distillation:
        kwargs["distillation"] = True
    model = timm.create_model(cfg["model"], pretrained=False, **kwargs)
    model = load_maybe_fused(model, state, path, args)
    cfg["class_map"] = class_map
    return model, cfg


def load_maybe_fused(model: torch.nn.Module, state: dict, path: Path, args: argparse.Namespace) -> torch.nn.Module:
    """Load training-time weights (then fuse if ``--fuse``), or weights saved from an already fused model."""
    from timm.utils import reparameterize_model

    from regla.checkpoints import load_into

    from .checkpoint import CheckpointError

    try:
        model, report = load_into(model, state, source=str(path))
        fused = report.fused
    except CheckpointError as e:
        raise CheckpointError(f"{e} - a checkpoint from another architecture?") from None
    if fused:
        args.fuse = True  # the file holds a fused model
        return model
    return reparameterize_model(model) if args.fuse else model


def evaluate_cli(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation itself (also used by tests): returns top-1/top-5/loss/img_s and the settings."""
    from timm.data import create_dataset

    from .data import DataError, SkipUnreadable, build_eval_loader, check_class_folders
    from .engine import evaluate
    from .trainer import setup_distributed

    folder, _ = eval_folder(args.data, args.split) if not args.dataset else (Path(args.data), False)
    classes = check_class_folders(folder) if not args.dataset else None
    d = setup_distributed({"device": args.device})
    try:
        model, cfg = load_for_eval(args, classes)
        if classes and cfg["class_map"]:
            unknown = sorted(set(classes) - set(cfg["class_map"]))
            if unknown:
                raise DataError(f"{folder}: classes the model was not trained on: {', '.join(unknown[:10])}")
        cfg.update(workers=args.workers, interpolation=args.interpolation or cfg["interpolation"])
        if args.dataset:
            ds = create_dataset(args.dataset, root=args.data, split=args.split, is_training=False)
        else:
            ds = SkipUnreadable(create_dataset("", root=str(folder), search_split=False,
                                               class_map=cfg["class_map"] or ""))
        use_prefetcher = d.device.type == "cuda"
        loader = build_eval_loader(cfg, ds, d.device, use_prefetcher, rank=d.rank, world=d.world_size,
                                   img_size=args.img_size, crop_pct=args.crop_pct, batch_size=args.batch_size)
        model = model.to(d.device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp or "")
        m = evaluate(model, loader, d.device, amp_dtype=dtype, channels_last=args.channels_last,
                     show_bar=d.primary)
        m.update(model=cfg["model"], checkpoint=str(args.checkpoint), fused=bool(args.fuse),
                 img_size=args.img_size or cfg["img_size"], crop_pct=args.crop_pct or cfg["crop_pct"],
                 processes=d.world_size, device=str(d.device), data=str(folder))
        return m
    finally:
        if d.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    from regla.utils.io import atomic_write_text

    from .checkpoint import CheckpointError
    from .data import DataError

    try:
        m = evaluate_cli(args)
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as e:
        print(f"regla eval: error: {e}", file=sys.stderr)
        return 2
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{m['model']}{' (fused)' if m['fused'] else ''} @ {m['img_size']} px, crop {m['crop_pct']}: "
              f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  on {m['n']} images  "
              f"({m['img_s']:.1f} img/s, {m['processes']} process(es) on {m['device']})")
        print(json.dumps(m))
        if args.json_out:
            atomic_write_text(args.json_out, json.dumps(m, indent=2) + "\n")
    return 0
