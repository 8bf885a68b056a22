"""``regla export MODEL --format onnx|executorch|coreml|torchscript [--int8]``: fused export, checked against PyTorch.

Every input is checked before the model is built: the model name, the weights file, the output place (the
folder rule of :func:`regla.outputs.resolve_output`: ``-o DIR`` writes ``DIR/<default name>``), the calibration
folder (``--calib``: at least one readable image). Errors propagate
to :func:`regla.cli.main`, which reports them in one line (exit 2 bad input, 1 export failure).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError
from ..outputs import check_not_clobbering, check_writable, resolve_output
from ..preflight import existing_file, float_range, int_range, require_model
from .files import SAME_KIND, SUFFIX, is_agreement

FORMAT_CHOICES = ("onnx", "executorch", "coreml", "torchscript")
INT8_FORMATS = ("onnx", "executorch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``regla export`` options on ``parser``."""
    parser.add_argument("model", help="registered model name, e.g. regla_m, repnext_m3, repvit_m1_1")
    parser.add_argument("--format", "-f", choices=FORMAT_CHOICES, default="onnx", help="output format (default onnx)")
    parser.add_argument("--output", "-o", default=None,
                        help="output path (default <model>[_int8].onnx, <model>.pt, <model>_<H>x<W>.mlpackage, "
                             "<model>_<H>x<W>[_int8].pte); "
                             "an existing folder receives the file under that default name")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing file at --output even if it is not of the exported format")
    parser.add_argument("--checkpoint", "-c", default=None,
                        help="weights to load: .safetensors or .pth state dict, training-time or fused form")
    parser.add_argument("--num-classes", type=int_range(1), default=None, metavar="N",
                        help="classifier size of the weights (e.g. 10 for a `regla train --demo` model; "
                             "default: the model's 1000)")
    parser.add_argument("--img-size", type=int_range(16, 4096), nargs="+", default=[224], metavar="N",
                        help="example input size: N or H W (the fixed input size for Core ML and ExecuTorch; ONNX "
                             "stays dynamic)")
    parser.add_argument("--atol", type=float_range(0.0, lo_open=True), default=1e-4,
                        help="allowed max abs difference from PyTorch, times max(1, max |logit|) (default 1e-4)")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime / TorchScript check")
    parser.add_argument("--opset", type=int_range(7, 23), default=18, help="ONNX opset (default 18)")
    parser.add_argument("--exporter", choices=("legacy", "dynamo", "auto"), default="legacy",
                        help="torch.onnx exporter: legacy (TorchScript-based, default), dynamo, or auto (fallback)")
    parser.add_argument("--int8", action="store_true",
                        help="ONNX and ExecuTorch: static int8 quantization (ONNX Runtime QDQ per-channel; XNNPACK "
                             "quantizer), calibrated on real images and checked against fp32 PyTorch on others")
    parser.add_argument("--calib", default=None, metavar="DIR",
                        help="folder of images (searched recursively) to calibrate --int8 on and to check int8 and "
                             "ExecuTorch files on; default: the digits demo set (train split calibrates, val checks)")
    parser.add_argument("--calib-images", type=int_range(1, 10000), default=32, metavar="N",
                        help="images to calibrate on (default 32)")
    parser.add_argument("--check-images", type=int_range(1, 100000), default=360, metavar="N",
                        help="real images to compare with fp32 PyTorch (default 360: the digits validation split)")
    parser.add_argument("--min-agreement", type=float_range(0.0, 1.0), default=0.0, metavar="F",
                        help="fail when top-1 agreement with fp32 on the real images is below F (default: report)")
    parser.add_argument("--min-cosine", type=float_range(-1.0, 1.0), default=-1.0, metavar="F",
                        help="fail when the mean logit cosine with fp32 is below F (default: report)")
    parser.add_argument("--coreml-precision", choices=("fp16", "fp32"), default="fp16",
                        help="Core ML compute precision (default fp16, what the Neural Engine runs)")


def img_size_of(sizes: list[int]) -> tuple[int, int]:
    """``--img-size N`` or ``--img-size H W`` as (H, W)."""
    if len(sizes) > 2:
        raise UsageError(f"--img-size takes N or H W, got {len(sizes)} numbers")
    return (sizes[0], sizes[-1])


def check_side_files(path: Path, fmt: str) -> None:
    """Before any work: the files an export may write beside ``path`` (``.failed``, ``.agreement.json``) replace
    only an earlier one of their kind, never a file of the user's (exit 2)."""
    from ..outputs import check_new_output

    if fmt not in SAME_KIND:
        return
    check_new_output(path.with_name(path.name + ".failed"), SAME_KIND[fmt],
                     what=f"a failed {fmt} export kept by regla export")
    check_new_output(path.with_name(path.name + ".agreement.json"), is_agreement,
                     what="an agreement report of regla export")


def output_path(args: argparse.Namespace, hw: tuple[int, int]) -> Path:
    """Where the export goes, checked: writable, not the weights file, not clobbering a file of another kind."""
    stem = args.model if args.format not in ("coreml", "executorch") else f"{args.model}_{hw[0]}x{hw[1]}"
    stem += "_int8" if args.int8 else ""
    path = resolve_output(args.output, stem + SUFFIX[args.format], directory=args.format == "coreml")
    check_writable(path)
    if args.checkpoint and path.exists() and path.resolve() == Path(args.checkpoint).resolve():
        raise UsageError(f"--output {path} is the --checkpoint file: choose another output")
    if args.format != "coreml":
        check_not_clobbering(path, args.force, same_kind=SAME_KIND[args.format])
        check_side_files(path, args.format)
    elif path.suffix != ".mlpackage":
        raise UsageError(f"--output {path}: a Core ML ML Program is a .mlpackage folder; give a name ending in "
                         ".mlpackage (or a folder to write it into)")
    elif path.exists() and not (path / "Manifest.json").is_file():
        raise UsageError(f"--output {path} exists and is not a Core ML package: refusing to replace it")
    return path


def report_skipped(agreement: dict) -> None:
    """Name, on stderr, the image files of the calibration and check sets that could not be read."""
    from ..data.errors import listed

    for part, files in agreement.get("skipped_files", {}).items():
        if files:
            print(f"regla export: skipped {len(files)} unreadable {part} image(s) (not used): {listed(files)}",
                  file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Export ``args.model``; print where it went and how closely it matches PyTorch."""
    hw = img_size_of(args.img_size)
    require_model(args.model)
    if args.checkpoint:
        existing_file(args.checkpoint, "--checkpoint")
    if args.int8 and args.format not in INT8_FORMATS:
        raise UsageError(f"--int8 goes with --format {' or '.join(INT8_FORMATS)}, not {args.format}")
    if args.calib is not None:
        from .calib import check_folder

        check_folder(args.calib, "--calib")
    path = output_path(args, hw)

    from .export import export_model

    result = export_model(args.model, args.format, path, checkpoint=args.checkpoint, img_size=hw,
                          verify=not args.no_verify, atol=args.atol, opset=args.opset, exporter=args.exporter,
                          coreml_precision=args.coreml_precision, num_classes=args.num_classes, int8=args.int8,
                          calib=args.calib, calib_images=args.calib_images, check_images=args.check_images,
                          min_agreement=args.min_agreement, min_cosine=args.min_cosine)
    layout = f", {result.layout} weights (faster here)" if result.layout else ""
    print(f"wrote {result.path} ({result.format}{' int8' if result.int8 else ''}, fused, "
          f"example input {hw[0]}x{hw[1]}{layout})")
    if result.max_abs_diff is not None:
        shapes = ", ".join("x".join(map(str, s)) for s in result.checked_shapes)
        print(f"checked against PyTorch on {shapes}: max abs diff {result.max_abs_diff:.2e} "
              f"(allowed: atol {args.atol:g} x max(1, max |logit|))")
    if result.agreement is not None:
        a = result.agreement
        print(f"against fp32 PyTorch on {a['images']} real images ({a['images_source']}): top-1 agreement "
              f"{a['top1_agreement']:.2%}, logit cosine mean {a['cosine_mean']:.4f} (min {a['cosine_min']:.4f}) "
              f"-> {result.agreement_path}")
        report_skipped(a)
    elif args.format == "coreml":
        print("Core ML packages run only on macOS/iOS: measure latency in Xcode (see docs/deployment.md)")
    return 0
