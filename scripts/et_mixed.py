"""ExecuTorch XNNPACK int8 with the depthwise convolutions left in fp32: does it close ReGLA-M's int8 gap?

Usage: python scripts/et_mixed.py regla_m repvit_m1_1 [--size 512] [--threads 1] [--rounds 9]

`scripts/et_blocks.py` shows XNNPACK's int8 depthwise convolutions no faster than its fp32 ones on this CPU, and
ReGLA-M's ELRF blocks spend more of their time in depthwise convolutions than RepViT-M1.1. This lowers each model
whole three ways: int8 everywhere (as ``regla export --format executorch --int8``), int8 with every depthwise
convolution left unquantized (fp32 inside the same XNNPACK graph, with quantize/dequantize around it), and int8 with
only the 5x5 depthwise convolutions left in fp32; prints partitions, agreement with eager and the medians of
interleaved timing rounds (two runs per round, as ``scripts/et_blocks.py`` times).
"""
from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import torch
from et_blocks import interleaved_medians  # this folder: the same interleaved rounds as the per-block profile

import regla  # noqa: F401  registers regla_* and repnext_*
from regla.bench.backends import Calibration
from regla.checkpoints import create_fused_model
from regla.deploy.executorch import delegation_summary, load_method, set_threads, to_edge

KEEP_FP32: dict[str, Callable[[tuple[int, int]], bool]] = {
    "int8": lambda k: False,
    "int8, depthwise fp32": lambda k: True,
    "int8, dw5x5 fp32": lambda k: k == (5, 5),
}


def quantizer(keep_fp32: Callable[[tuple[int, int]], bool]):
    """The XNNPACK quantizer (symmetric, per channel) that leaves depthwise convs with a kernel in ``keep_fp32``
    unannotated, so PT2E inserts no observers there and XNNPACK runs them in fp32."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class Mixed(XNNPACKQuantizer):
        def annotate(self, gm):
            for node in gm.graph.nodes:
                if node.op != "call_function" or node.target != torch.ops.aten.conv2d.default or len(node.args) < 7:
                    continue
                w = node.args[1].meta["val"]
                if node.args[6] > 1 and w.shape[1] == 1 and keep_fp32(tuple(w.shape[2:])):
                    node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
            return super().annotate(gm)

    q = Mixed()
    q.set_global(get_symmetric_quantization_config(is_per_channel=True))
    return q


def build(name: str, keep_fp32: Callable, size: int, calib: Calibration) -> Callable[[], object]:
    """``name`` fused, quantized with ``keep_fp32``, lowered whole; prints partitions and agreement with eager."""
    model = create_fused_model(name).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    edge = to_edge(model, x, int8=True, calib=calib.get(model, (size, size)), quantizer=quantizer(keep_fp32))
    parts, _ = delegation_summary(edge.exported_program().graph)
    method = load_method(edge.to_executorch().buffer)
    with torch.no_grad():
        ref = model(x)
    y = method.execute((x,))[0]
    cos = torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0).item()
    print(f"  {name}: {parts} partition(s), cosine to eager {cos:.4f}", flush=True)
    return functools.partial(method.execute, (x,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calib", type=int, default=4, help="calibration images (the digits set, as regla bench)")
    args = parser.parse_args()
    set_threads(args.threads)  # before any program loads
    torch.set_num_threads(args.threads)
    calib = Calibration(None, args.calib)
    runs = {}
    for label, keep in KEEP_FP32.items():
        print(label)
        for name in args.models:
            if label == "int8, dw5x5 fp32" and not name.startswith("regla"):
                continue  # the peers have no 5x5 depthwise convolutions
            runs[name, label] = build(name, keep, args.size, calib)
    medians = interleaved_medians(runs, args.rounds, reps=2)
    print("| Model | int8 program | ET ms |\n|---|---|---:|")
    for (name, label), ms in medians.items():
        print(f"| {name} | {label} | {ms:.1f} |")


if __name__ == "__main__":
    main()
