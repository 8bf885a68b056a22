"""``regla eval``: top-1/top-5 and throughput of any weights file on an image folder.

Weights are read through :mod:`regla.checkpoints` (``regla train`` checkpoints, ``.safetensors`` with or without
our metadata, plain state dicts, containers; training-time or fused; EMA weights first unless ``--no-ema``). The
model name, class names and evaluation transform come from the flags, then the file, then the model's timm
``pretrained_cfg`` (:mod:`regla.eval.settings`). ``--fuse`` evaluates the re-parameterised network, as deployed.

Only what was read is counted: an unreadable image is skipped and reported by path (``n`` images evaluated,
``skipped`` files), never replaced by another; ``--strict`` stops at the first one. Runs as one process or under
``torchrun`` (each rank evaluates a disjoint shard; counts are summed, so no image is counted twice).

Every flag and path is checked before any model is built: bad input exits 2 with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from regla.errors import ReglaError, UsageError
from regla.preflight import float_range, int_range

__all__ = ["add_arguments", "check_args", "evaluate_cli", "run"]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="folder of class folders, or a dataset root holding val/ (see --split)")
    parser.add_argument("--split", default="val", help="sub-folder to evaluate when --data is a dataset root")
    parser.add_argument("--dataset", default="", help="timm create_dataset name for non-folder datasets")
    parser.add_argument("--checkpoint", required=True,
                        help="weights: a `regla train` .pth, a .safetensors, a state dict or checkpoint (.pth/.pt)")
    parser.add_argument("--model", help="timm model name (needed when the file does not record it; else checked)")
    parser.add_argument("--num-classes", type=int_range(1), help="number of classes (default: from the file)")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw weights, not the EMA")
    parser.add_argument("--fuse", action="store_true", help="re-parameterise (fuse) the model before evaluation")
    parser.add_argument("--img-size", type=int_range(1), default=None,
                        help="evaluation resolution (default: the file's, else the model's pretrained_cfg)")
    parser.add_argument("--crop-pct", type=float_range(0.0, 1.0, lo_open=True), default=None,
                        help="centre-crop ratio in (0, 1] (default: the file's, else the model's)")
    parser.add_argument("--interpolation", default=None, choices=INTERPOLATIONS,
                        help="resize interpolation (default: the file's, else the model's)")
    parser.add_argument("--batch-size", type=int_range(1), default=256)
    parser.add_argument("--workers", type=int_range(0), default=4)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--layout", choices=("auto", "contiguous", "channels-last"), default="auto",
                        help="memory layout of the model and images: auto (on CPU, the faster of the two in a few "
                             "timed batch-1 forwards; contiguous on other devices), contiguous or channels-last")
    parser.add_argument("--channels-last", dest="layout", action="store_const", const="channels-last",
                        help="same as --layout channels-last")
    parser.add_argument("--strict", action="store_true", help="fail on the first unreadable image (default: skip it)")
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")


# ---------------------------------------------------------------------------------------------------------------
# Input checks (before any work)
# ---------------------------------------------------------------------------------------------------------------


def check_args(args: argparse.Namespace) -> None:
    """What the argparse types (``regla.preflight``) cannot check: ``--json``'s place and the device."""
    from regla.preflight import check_device

    if args.json_out:
        from regla.outputs import check_new_output, json_written_by

        # a file of ours from an earlier run may be replaced; the user's own file, or an input, never
        check_new_output(Path(args.json_out), lambda p: json_written_by(p, "regla eval"),
                         inputs=(getattr(args, "checkpoint", None),), flag="--json", what="a report of regla eval")
    check_device(args.device)


def eval_folder(data: str, split: str) -> Path:
    """The folder to read: ``data`` itself if it holds class folders, else ``data/split`` (must exist)."""
    from regla.data.errors import DataError
    from regla.data.folders import find_split

    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist" if not root.exists() else f"--data {root} is a file; "
                        "expected a folder of class folders")
    try:
        return find_split(root, split)
    except DataError:
        from regla.data.folders import TRAIN_SPLITS, VAL_SPLITS

        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in TRAIN_SPLITS + VAL_SPLITS)
        if splits:  # a dataset root without the requested split, not a folder of class folders
            raise DataError(f"{root} has no '{split}/' folder (it has {', '.join(splits)}): give --split NAME") \
                from None
        return root


#: Dataset-name prefixes timm's ``create_dataset`` understands (``""`` is an image folder).
DATASET_PREFIXES = ("torch", "hfds", "hfids", "tfds", "wds")


def check_dataset(name: str) -> None:
    """``--dataset`` must be a name timm's ``create_dataset`` reads: ``PREFIX/NAME`` or empty (a folder)."""
    prefix, sep, rest = name.partition("/")
    if name and not (sep and rest and prefix.lower() in DATASET_PREFIXES):
        raise UsageError(f"--dataset {name!r}: expected PREFIX/NAME with PREFIX one of "
                         f"{', '.join(DATASET_PREFIXES)} (timm.data.create_dataset), or no --dataset for a folder")


# ---------------------------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------------------------


def _model_cfg(model: Any) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return dict(cfg)


def _make_dataset(args: argparse.Namespace, folder: Path, class_map: dict[str, int] | None) -> Any:
    from timm.data import create_dataset

    from .samples import wrap_dataset

    if args.dataset:
        ds = create_dataset(args.dataset, root=args.data, split=args.split, is_training=False,
                            batch_size=args.batch_size)
    else:
        ds = create_dataset("", root=str(folder), search_split=False, class_map=class_map or "")
    return wrap_dataset(ds)


def _evaluate(args: argparse.Namespace, d: Any, folder: Path, classes: list[str] | None) -> dict[str, Any]:
    """Build the model from the weights, resolve settings and classes, run the loop; the results of this rank."""
    import torch

    from regla.checkpoints import create_model_from_weights
    from regla.data.errors import DataError
    from regla.deploy.layout import apply_layout

    from .loop import evaluate
    from .samples import CountingBatches, build_loader, gather_skipped
    from .settings import class_names_of, map_classes, resolve_settings

    model, weights, report = create_model_from_weights(args.checkpoint, args.model, args.num_classes,
                                                       prefer_ema=not args.no_ema, fuse=args.fuse)
    pretrained, num_classes = _model_cfg(model), getattr(model, "num_classes", None)
    flags = {"img_size": args.img_size, "crop_pct": args.crop_pct, "interpolation": args.interpolation}
    config, sources = resolve_settings(flags, weights.info, pretrained)
    class_map = None
    if classes is not None:
        class_map = map_classes(folder, classes, class_names_of(weights.info, pretrained, num_classes), num_classes)
    dataset = _make_dataset(args, folder, class_map)
    loader = build_loader(dataset, config, batch_size=args.batch_size, workers=args.workers, device=d.device,
                          rank=d.rank, world=d.world_size)
    batches = CountingBatches(loader, strict=args.strict)
    model = model.to(d.device)
    layout = args.layout if args.layout != "auto" or d.device.type == "cpu" else "contiguous"
    channels_last = apply_layout(model, layout, (1, 3, *config["input_size"][1:]))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp or "")
    m = evaluate(model, batches, d.device, amp_dtype=dtype, channels_last=channels_last, show_bar=d.primary)
    skipped = gather_skipped(batches.skipped)
    if m["n"] == 0:
        first = next(iter(skipped), "-")
        raise DataError(f"{folder}: no image could be read ({len(skipped)} unreadable, first {first})")
    m.update(model=args.model or weights.info.model or pretrained.get("architecture"),
             checkpoint=str(args.checkpoint), weights=weights.container or "state dict", ema=weights.ema,
             fused=bool(args.fuse or report.fused), **settings_fields(config, sources),
             classes=len(class_map) if class_map else num_classes,
             skipped=len(skipped), skipped_files=list(skipped), skipped_errors=skipped,
             processes=d.world_size, device=str(d.device), data=str(folder),
             layout="channels-last" if channels_last else "contiguous")
    return m


def settings_fields(config: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    """The transform settings of a result (JSON types), with where each came from."""
    size = config["input_size"]
    return dict(img_size=size[-1] if size[-1] == size[-2] else list(size[1:]), input_size=list(size),
                crop_pct=config["crop_pct"], crop_mode=config.get("crop_mode"), interpolation=config["interpolation"],
                mean=list(config["mean"]), std=list(config["std"]), settings_from=sources)


def evaluate_cli(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation itself (also used by tests): top-1/top-5/loss/img_s, ``n``, ``skipped`` and the settings.

    Raises :class:`~regla.errors.UsageError` subclasses for bad input (flags, paths, weights, data) before any
    model is built where it can, and :class:`~regla.eval.samples.TransformError` for a transform failure.
    """
    from regla.data.folders import check_class_folders
    from regla.runs.distributed import setup_distributed

    check_args(args)
    check_dataset(args.dataset)
    folder = Path(args.data) if args.dataset else eval_folder(args.data, args.split)
    classes = None if args.dataset else check_class_folders(folder)
    d = setup_distributed(args.device)  # "auto": a GPU if there is one
    try:
        return _evaluate(args, d, folder, classes)
    finally:
        if d.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------


def summary_line(m: dict[str, Any]) -> str:
    """The one-line human summary of a result."""
    skipped = f", {m['skipped']} unreadable skipped" if m["skipped"] else ""
    return (f"{m['model']}{' (fused)' if m['fused'] else ''} @ {m['img_size']} px, crop {m['crop_pct']}, "
            f"{m['interpolation']}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  on {m['n']} images{skipped}  "
            f"({m['img_s']:.1f} img/s, {m['processes']} process(es) on {m['device']})")


def report_skipped(m: dict[str, Any], limit: int = 20) -> None:
    """Name the unreadable files on stderr (the first ``limit`` of them)."""
    errors = m.get("skipped_errors") or {}
    if not errors:
        return
    print(f"regla eval: skipped {len(errors)} unreadable image(s) (not counted in n={m['n']}):", file=sys.stderr)
    for path, error in list(errors.items())[:limit]:
        print(f"  {path}: {error}", file=sys.stderr)
    if len(errors) > limit:
        print(f"  ... and {len(errors) - limit} more (all listed in the JSON's skipped_files)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import os

    from regla.outputs import atomic_write_text

    try:
        m = evaluate_cli(args)
    except ReglaError as e:
        print(f"regla eval: error: {e}", file=sys.stderr)
        return e.exit_code
    if int(os.environ.get("RANK", "0")) == 0:
        report_skipped(m)
        print(summary_line(m))
        out = {k: v for k, v in m.items() if k != "skipped_errors"}
        print(json.dumps(out))
        if args.json_out:
            atomic_write_text(args.json_out, json.dumps({"written_by": "regla eval", **out}, indent=2) + "\n")
    return 0
