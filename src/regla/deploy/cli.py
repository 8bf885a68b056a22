"""``regla export MODEL --format onnx|coreml|torchscript``: fused export, checked against PyTorch."""

from __future__ import annotations

import argparse
import sys

FORMAT_CHOICES = ("onnx", "coreml", "torchscript")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``regla export`` options on ``parser``."""
    parser.add_argument("model", help="registered model name, e.g. regla_m, repnext_m3, repvit_m1_1")
    parser.add_argument("--format", "-f", choices=FORMAT_CHOICES, default="onnx", help="output format (default onnx)")
    parser.add_argument("--output", "-o", default=None,
                        help="output path (default <model>.onnx, <model>.pt, <model>_<H>x<W>.mlpackage)")
    parser.add_argument("--checkpoint", "-c", default=None,
                        help="weights to load: .safetensors or .pth state dict, training-time or fused form")
    parser.add_argument("--img-size", type=int, nargs="+", default=[224], metavar="N",
                        help="example input size: N or H W (the fixed input size for Core ML; ONNX stays dynamic)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="max abs difference allowed between exported model and PyTorch (default 1e-4)")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime / TorchScript check")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--exporter", choices=("legacy", "dynamo", "auto"), default="legacy",
                        help="torch.onnx exporter: legacy (TorchScript-based, default), dynamo, or auto (fallback)")
    parser.add_argument("--coreml-precision", choices=("fp16", "fp32"), default="fp16",
                        help="Core ML compute precision (default fp16, what the Neural Engine runs)")


def run(args: argparse.Namespace) -> int:
    """Export ``args.model``; print where it went and how closely it matches PyTorch. Non-zero on failure."""
    from .checkpoint import CheckpointError
    from .export import ExportError, export_model, to_hw

    try:
        hw = to_hw(args.img_size)
        result = export_model(args.model, args.format, args.output, checkpoint=args.checkpoint, img_size=hw,
                              verify=not args.no_verify, atol=args.atol, opset=args.opset, exporter=args.exporter,
                              coreml_precision=args.coreml_precision)
    except (ExportError, CheckpointError, ValueError) as e:
        print(f"regla export: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {result.path} ({result.format}, fused, example input {hw[0]}x{hw[1]})")
    if result.max_abs_diff is not None:
        shapes = ", ".join("x".join(map(str, s)) for s in result.checked_shapes)
        print(f"checked against PyTorch on {shapes}: max abs diff {result.max_abs_diff:.2e} (atol {args.atol:g})")
    elif args.format == "coreml":
        print("Core ML packages run only on macOS/iOS: measure latency in Xcode (see docs/deployment.md)")
    return 0
