"""``regla sam eval --task edges|seginw``: the command-line side of RepViT Table 4's other zero-shot tasks.

``--task coco`` (the default) is :func:`regla.sam.cli.run_eval`'s COCO protocol; this module adds the task switch,
the flags of the two other tasks, the check that each flag given belongs to the task, and their runs:

* ``edges`` (:mod:`regla.sam.edges`): BSDS500's layout under ``--data``, SAM's point-grid edge maps, ODS / OIS / AP;
* ``seginw`` (:mod:`regla.sam.seginw`): SegInW's sets under ``--data``, a detector's results per set in ``--boxes``,
  the mean mask AP.

Everything is checked (flags, folders, files, the output folder) before the model is built. Imports nothing heavy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

TASKS = ("coco", "edges", "seginw")
DEFAULT_OUTPUT = {"coco": "sam_eval", "edges": "sam_eval_edges", "seginw": "sam_eval_seginw"}
FILES = {"edges": ("scores.json", "images.json"), "seginw": ("scores.json", "results.json")}
DEFAULT_SPLIT = {"edges": "test", "seginw": "valid"}
#: flag -> (argparse dest, the tasks it applies to); a flag given for another task is refused
TASK_FLAGS = {"--val-images": ("val_images", ("coco",)), "--val-ann": ("val_ann", ("coco",)),
              "--prompts": ("prompts", ("coco",)), "--boxes": ("boxes", ("coco", "seginw")),
              "--score-thr": ("score_thr", ("coco", "seginw")), "--strict": ("strict", ("coco", "seginw")),
              "--data": ("data", ("edges", "seginw")), "--split": ("split", ("edges", "seginw")),
              "--workers": ("workers", ("edges",))}

TASK_HELP = ("coco: box prompts -> mask AP, one point -> mIoU on a COCO-format set (--val-images, --val-ann); "
             "edges: zero-shot edge detection on BSDS500 (--data: images/<split>/*.jpg, groundTruth/<split>/*.mat), "
             "ODS/OIS/AP; seginw: Segmentation in the Wild (--data: <set>/<split>/_annotations_min1cat.coco.json, "
             "--boxes: a folder of <set>.json detector results), mean mask AP over the sets (default coco)")


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """The task switch and the flags of ``edges`` and ``seginw`` on ``regla sam eval``'s parser."""
    from ..preflight import int_range

    p.add_argument("--task", choices=TASKS, default="coco", help=TASK_HELP)
    p.add_argument("--data", default=None, metavar="DIR",
                   help="edges: the BSDS500 folder (holding images/ and groundTruth/); seginw: the folder of the "
                        "SegInW sets")
    p.add_argument("--split", default=None, metavar="NAME",
                   help="edges: BSDS500 split (default test, its 200 images); seginw: each set's split folder "
                        "(default valid)")
    p.add_argument("--workers", type=int_range(1, 256), default=None, metavar="N",
                   help="edges: processes matching boundaries while SAM computes the next maps (default 1)")


def check_task_flags(args: argparse.Namespace) -> None:
    """Refuse a flag given for a task it does not apply to; fill the task's default output folder."""
    for flag, (dest, tasks) in TASK_FLAGS.items():
        if args.task not in tasks and getattr(args, dest) not in (None, False):
            raise UsageError(f"{flag} applies to --task {' or '.join(tasks)}, not to --task {args.task}")
    if args.output is None:
        args.output = DEFAULT_OUTPUT[args.task]


@dataclass(frozen=True)
class EvalHooks:
    """What ``regla sam eval``'s CLI (:mod:`regla.sam.cli`) lends every task, so that this module never imports it:
    the writer name of its reports, its model-flag checks, its device resolver and its SAM builder."""

    writer: str
    check_model: Callable[[argparse.Namespace], None]
    resolve_device: Callable[[str], str]
    build: Callable[[argparse.Namespace], Any]


def run_task(args: argparse.Namespace, hooks: EvalHooks) -> int:
    """``regla sam eval --task edges|seginw``."""
    return {"edges": run_edges, "seginw": run_seginw}[args.task](args, hooks)


def _prepare(args: argparse.Namespace, hooks: EvalHooks) -> tuple:
    """The checks every task shares, in order: data flag, output folder, model flags, device."""
    from ..outputs import check_report_folder

    if args.data is None:
        raise UsageError(f"--task {args.task} needs --data DIR (see `regla sam eval --help`)")
    if args.task == "seginw" and args.score_thr is not None and args.boxes is None:
        raise UsageError("--score-thr applies to a detector's boxes: give --boxes DIR too")
    out = check_report_folder(args.output, FILES[args.task], hooks.writer, inputs=(args.data, args.boxes))
    hooks.check_model(args)
    return out, hooks.resolve_device(args.device)


def _header(args: argparse.Namespace, device: str) -> dict:
    return {"task": args.task, "encoder": args.encoder, "last_stage": args.last_stage, "checkpoint": args.checkpoint,
            "img_size": args.img_size, "data": str(args.data), "split": args.split or DEFAULT_SPLIT[args.task],
            "device": device}


def run_edges(args: argparse.Namespace, hooks: EvalHooks) -> int:
    """Check the BSDS500 folder, then SAM's edge maps scored with the BSDS benchmark (docs/sam.md)."""
    import json
    import time

    from ..outputs import write_report_files
    from .edges import SamEdges, evaluate_edges, load_bsds

    out, device = _prepare(args, hooks)
    data = load_bsds(args.data, args.split or DEFAULT_SPLIT["edges"], args.max_images)
    sam = hooks.build(args).to(device)
    started = time.perf_counter()
    result = evaluate_edges(SamEdges(sam), data, workers=args.workers or 1, show_bar=not args.no_progress)
    scores = {**_header(args, device), **result.scores, "seconds": round(time.perf_counter() - started, 2)}
    write_report_files(out, hooks.writer, scores, {"images.json": json.dumps(result.images)})
    random = "" if args.checkpoint else " (random weights: the figures mean nothing)"
    print(f"zero-shot edges: {args.encoder} on {scores['images']} BSDS image(s) in {scores['seconds']:.1f} s{random}")
    print(f"  ODS {scores['ODS']:.3f}   OIS {scores['OIS']:.3f}   AP {scores['AP']:.3f}")
    print(f"written {', '.join(str(out / n) for n in FILES['edges'])}")
    return 0


def run_seginw(args: argparse.Namespace, hooks: EvalHooks) -> int:
    """Check every SegInW set and its detector results, then box-prompted mask AP per set and the mean."""
    import json
    import time

    from ..outputs import write_report_files
    from .evaluate import SamMasks
    from .seginw import evaluate_seginw, load_seginw

    out, device = _prepare(args, hooks)
    sets = load_seginw(args.data, args.boxes, args.split or DEFAULT_SPLIT["seginw"], args.score_thr or 0.0,
                       args.max_images, strict=args.strict)
    sam = hooks.build(args).to(device)
    started = time.perf_counter()
    result = evaluate_seginw(SamMasks(sam), sets, show_bar=not args.no_progress)
    scores = {**_header(args, device), "boxes": args.boxes,
              "score_thr": (args.score_thr or 0.0) if args.boxes else None, **result.scores,
              "seconds": round(time.perf_counter() - started, 2)}
    write_report_files(out, hooks.writer, scores, {"results.json": json.dumps(result.results)})
    random = "" if args.checkpoint else " (random weights: the figures mean nothing)"
    print(f"zero-shot SegInW: {args.encoder} on {scores['sets']} set(s), {scores['box_source']} boxes, in "
          f"{scores['seconds']:.1f} s{random}")
    width = max(len(n) for n in scores["per_set"])
    for name, s in scores["per_set"].items():
        print(f"  {name:<{width}}  mask AP {s['segm_AP']:5.1f}  ({s['images']} images, {s['box_masks']} masks)")
    print(f"  {'mean':<{width}}  mask AP {scores['mean_AP']:5.1f}")
    if scores["sets_missing"]:
        print(f"regla sam eval: warning: {len(scores['sets_missing'])} of SegInW's 25 sets not in --data; the "
              "published mean is over all 25", file=sys.stderr)
    print(f"written {', '.join(str(out / n) for n in FILES['seginw'])}")
    return 0
