"""``regla sam predict|export|encoders``: segment anything with a fast image encoder (docs/sam.md).

* ``regla sam predict IMAGE --box x1,y1,x2,y2 | --point x,y``: the mask SAM predicts, drawn on the image (PNG);
* ``regla sam export``: the image encoder and the prompt decoder as two ONNX files, each checked in ONNX Runtime
  against PyTorch inside the command;
* ``regla sam encoders``: the encoder names.

Every input (image, prompt, encoder name, weights file, output place) is checked before a model is built. Errors
propagate to :func:`regla.cli.main` (one line; exit 2 bad input, 1 export mismatch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError
from ..outputs import check_writable, resolve_output
from ..preflight import existing_file, float_range, int_range

LAST_STAGE_CHOICES = ("stride1", "fuse")
DEFAULT_ENCODER = "regla_m_sam"


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", "-e", default=DEFAULT_ENCODER,
                   help=f"image encoder: repvit_sam, mobile_sam, sam_vit_b|l|h, regla_<t|s|m|l|x>_sam "
                        f"(default {DEFAULT_ENCODER}; `regla sam encoders` lists them)")
    p.add_argument("--last-stage", choices=LAST_STAGE_CHOICES, default="stride1",
                   help="ReGLA encoders: how stage 4 reaches 1/16 - stride-1 last downsampling (default) or "
                        "stride-16 and stride-32 features fused")
    p.add_argument("--checkpoint", "-c", default=None,
                   help="whole-SAM weights (.pth/.pt/.safetensors: SAM's, RepViT-SAM's repvit_sam.pt, ours); "
                        "default: random weights (the pipeline runs, the masks mean nothing)")
    p.add_argument("--img-size", type=int_range(64, 4096), default=1024,
                   help="encoder input side, a multiple of 16 (default 1024, SAM's)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``regla sam``'s subcommands on ``parser``."""
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
    p.add_argument("--atol", type=float_range(0.0, lo_open=True), default=1e-4,
                   help="allowed max abs difference from PyTorch, times max(1, max |output|) (default 1e-4)")
    _add_model_arguments(p)

    sub.add_parser("encoders", help="list the image encoder names")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the subcommand."""
    command = getattr(args, "sam_command", None)
    if command is None:
        raise UsageError("regla sam needs a subcommand: predict, export or encoders (see `regla sam --help`)")
    return {"predict": run_predict, "export": run_export, "encoders": run_encoders}[command](args)


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
    from ..outputs import atomic_output
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
    check_writable(out)
    _check_model_args(args)
    sam = _build(args)
    pred = predict_mask(sam, image, box=box, point=point)
    with atomic_output(out) as tmp:
        draw_prediction(image, pred).save(tmp, format="PNG")
    area = int(pred.mask.sum())
    print(f"{out}: mask of {area} px ({100 * area / pred.mask.size:.1f}% of {hw[1]}x{hw[0]}), "
          f"predicted IoU {pred.score:.3f}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``regla sam export``: both ONNX files, each checked against PyTorch."""
    from .export import export_sam_onnx

    _check_model_args(args)
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output {folder}: is a file; expected a folder for the two ONNX files")
    stem = args.name or args.encoder
    encoder_path, decoder_path = folder / f"{stem}_encoder.onnx", folder / f"{stem}_decoder.onnx"
    check_writable(encoder_path)
    sam = _build(args)
    result = export_sam_onnx(sam, encoder_path, decoder_path, opset=args.opset, atol=args.atol)
    size = args.img_size
    print(f"{result.encoder}: image (1,3,{size},{size}) -> image_embeddings (1,256,{size // 16},{size // 16}); "
          f"ONNX Runtime vs PyTorch max abs diff {result.encoder_max_abs_diff:.2e}")
    print(f"{result.decoder}: SamOnnxModel (dynamic point count); ONNX Runtime vs PyTorch max abs diff "
          f"{result.decoder_max_abs_diff:.2e}")
    return 0
