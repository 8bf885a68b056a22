"""``regla knn``: weighted k-NN top-1/top-5 of frozen features (DINO's protocol; ReGLA Fig. 3/4, Table 8).

The bank (labelled images the neighbours come from) and the queries (images to classify) are two folders of class
folders; the queries' classes must be among the bank's. The model is a weights file read through
:mod:`regla.checkpoints` (``--checkpoint``, the model name from the file or ``--model``), or ``--model`` alone for a
randomly initialised network (``--seed``), the baseline a distilled student is judged against. The transform
comes from the flags, then the file, then the model's timm ``pretrained_cfg`` (as ``regla eval``).
Runs as one process or under torchrun (:mod:`regla.eval.knn`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from regla.errors import UsageError
from regla.preflight import float_range, int_range

__all__ = ["add_arguments", "knn_cli", "run"]

POOLS = ("auto", "avg", "prelogits")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bank", required=True, help="labelled images the neighbours come from (class folders)")
    parser.add_argument("--queries", required=True, help="images to classify (class folders, a subset of the bank's)")
    parser.add_argument("--checkpoint", help="weights file (.safetensors, a regla run's .pth, a state dict ...)")
    parser.add_argument("--model", help="timm model name (needed without --checkpoint, or when the file does not "
                                        "record it)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    parser.add_argument("--k", type=int_range(1), nargs="+", default=[20], help="neighbours (several allowed)")
    parser.add_argument("--temperature", type=float_range(0.0, lo_open=True), default=0.07,
                        help="vote weight exp(sim / T)")
    parser.add_argument("--pool", choices=POOLS, default="auto",
                        help="feature: avg of the last map/patch tokens, the classifier's pre-logits, or auto")
    parser.add_argument("--img-size", type=int_range(1), default=None)
    parser.add_argument("--crop-pct", type=float_range(0.0, 1.0, lo_open=True), default=None)
    parser.add_argument("--interpolation", default=None, choices=INTERPOLATIONS)
    parser.add_argument("--batch-size", type=int_range(1), default=256)
    parser.add_argument("--workers", type=int_range(0), default=4)
    parser.add_argument("--query-chunk", type=int_range(1), default=1024, help="queries per similarity block")
    parser.add_argument("--bank-chunk", type=int_range(1), default=65536, help="bank rows per similarity block")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--bank-per-class", type=int_range(1), default=None,
                        help="a few-shot bank: this many images per class, drawn with --seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the few-shot draw and, without --checkpoint, "
                                                           "of the initialisation")
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    parser.add_argument("--strict", action="store_true",
                        help="fail on the first unreadable image (default: skip it, count and name it)")


def _folder(path: str, flag: str) -> Path:
    from regla.preflight import existing_dir

    return existing_dir(path, flag)


def _check(args: argparse.Namespace) -> tuple[Path, Path, list[str]]:
    """Paths, classes and flags, before any model is built."""
    from regla.data.errors import DataError
    from regla.data.folders import check_class_folders
    from regla.preflight import check_device, existing_file, require_model

    if not args.checkpoint and not args.model:
        raise UsageError("give --checkpoint FILE (and --model if the file does not record it), or --model NAME "
                         "for a randomly initialised network")
    if args.model:
        require_model(args.model)
    if args.checkpoint:
        existing_file(args.checkpoint, "--checkpoint")
    if args.json_out:
        from regla.outputs import check_new_output, json_written_by

        # a file of ours from an earlier run may be replaced; the user's own file, or an input, never
        check_new_output(Path(args.json_out), lambda p: json_written_by(p, "regla knn"),
                         inputs=(getattr(args, "checkpoint", None),), flag="--json", what="a report of regla knn")
    check_device(args.device)
    bank, queries = _folder(args.bank, "--bank"), _folder(args.queries, "--queries")
    classes = check_class_folders(bank)
    unknown = sorted(set(check_class_folders(queries)) - set(classes))
    if unknown:
        raise DataError(f"--queries {queries}: class(es) not in the bank {bank}: {', '.join(unknown[:10])}")
    return bank, queries, classes


def _build_model(args: argparse.Namespace) -> tuple[Any, Any]:
    import timm
    import torch

    from regla.checkpoints import WeightsInfo, create_model_from_weights

    if args.checkpoint:
        model, weights, _ = create_model_from_weights(args.checkpoint, args.model, prefer_ema=not args.no_ema)
        return model, weights.info
    torch.manual_seed(args.seed)
    return timm.create_model(args.model, pretrained=False).eval(), WeightsInfo()


def _loader(args: argparse.Namespace, folder: Path, class_map: dict[str, int], config: dict[str, Any], d: Any,
            per_class: int | None = None):
    from .knn import folder_batches

    return folder_batches(folder, class_map, config, batch_size=args.batch_size, workers=args.workers,
                          device=d.device, rank=d.rank, world=d.world_size, per_class=per_class, seed=args.seed,
                          strict=getattr(args, "strict", False))


def knn_cli(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation (also used by tests): ``top1_k20`` ... in percent, ``n``, ``bank`` and the settings."""
    import torch

    from regla.data.folders import class_map_for
    from regla.runs.distributed import setup_distributed

    from .cli import settings_fields
    from .knn import extract_features, knn_scores
    from .samples import gather_skipped
    from .settings import resolve_settings

    bank_dir, query_dir, classes = _check(args)
    d = setup_distributed(args.device)
    try:
        model, info = _build_model(args)
        flags = {"img_size": args.img_size, "crop_pct": args.crop_pct, "interpolation": args.interpolation}
        config, sources = resolve_settings(flags, info, dict(getattr(model, "pretrained_cfg", None) or {}))
        class_map = class_map_for(classes)
        model = model.to(d.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp or "")
        bank_batches = _loader(args, bank_dir, class_map, config, d, args.bank_per_class)
        query_batches = _loader(args, query_dir, class_map, config, d)
        bank, bank_labels = extract_features(model, bank_batches, d.device, args.pool, dtype)
        queries, query_labels = extract_features(model, query_batches, d.device, args.pool, dtype)
        skipped = {"bank": gather_skipped(bank_batches.skipped), "queries": gather_skipped(query_batches.skipped)}
        scores = knn_scores(bank, bank_labels, queries, query_labels, args.k, args.temperature, len(classes),
                            args.query_chunk, args.bank_chunk)
    finally:
        if d.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    return {**scores, "model": args.model or info.model, "checkpoint": args.checkpoint, "k": sorted(set(args.k)),
            "temperature": args.temperature, "pool": args.pool, "bank_per_class": args.bank_per_class,
            "classes": len(classes), "bank_dir": str(bank_dir),
            "skipped": sum(len(v) for v in skipped.values()), "skipped_bank": len(skipped["bank"]),
            "skipped_queries": len(skipped["queries"]), "skipped_files": {k: dict(v) for k, v in skipped.items()},
            "queries_dir": str(query_dir), "processes": d.world_size, "device": str(d.device),
            **settings_fields(config, sources)}


def report_skipped(files: dict[str, dict[str, str]], limit: int = 20) -> None:
    """Name the unreadable files of the bank and the queries on stderr (the first ``limit`` of each)."""
    for part, errors in files.items():
        if errors:
            print(f"regla knn: skipped {len(errors)} unreadable {part} image(s) (not counted):", file=sys.stderr)
            for path, error in list(errors.items())[:limit]:
                print(f"  {path}: {error}", file=sys.stderr)
            if len(errors) > limit:
                print(f"  ... and {len(errors) - limit} more (all in the JSON's skipped_files)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from regla.outputs import atomic_write_text

    m = knn_cli(args)
    if int(os.environ.get("RANK", "0")) == 0:
        scores = "  ".join(f"k={k}: top-1 {m[f'top1_k{k}']:.2f}% top-5 {m[f'top5_k{k}']:.2f}%" for k in m["k"])
        skipped = (f" ({m['skipped_bank']} bank and {m['skipped_queries']} query image(s) unreadable, skipped)"
                   if m["skipped"] else "")
        print(f"{m['model']} KNN (T={m['temperature']}) on {m['n']} queries, bank of {m['bank']}{skipped}: {scores}",
              file=sys.stdout)
        report_skipped(m["skipped_files"])
        print(json.dumps(m))
        if args.json_out:
            atomic_write_text(args.json_out, json.dumps({"written_by": "regla knn", **m}, indent=2) + "\n")
    return 0
