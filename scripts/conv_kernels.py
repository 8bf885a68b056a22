"""The convolution kernels themselves, runtime against runtime: how fast each one runs a model's convolutions.

Usage: python scripts/conv_kernels.py regla_m repvit_m1_1 [--size 512] [--threads 1] [--rounds 5] [--out DIR]

``scripts/et_blocks.py`` times each convolution of a model alone in ExecuTorch; this asks whether a slow one is
slow because of its shape or because of the runtime's kernel. Every distinct stride-1 depthwise and pointwise
convolution of each (fused) model is rebuilt as a chain of ``n`` links (depthwise: conv + ReLU; pointwise: the
conv, a ReLU, its transpose ``C_out -> C_in``, a ReLU, so that the chain closes) with random weights, and each
chain is run by five runtimes on one thread: ExecuTorch XNNPACK fp32 and int8 (PT2E, as
``regla export --format executorch [--int8]``), ONNX Runtime fp32 and int8 (QDQ, as ``regla export --int8``) and
PyTorch eager in channels-last (oneDNN). A link's kernel time is the slope between a 1-link and a
``--links``-link chain (interleaved rounds, medians), so what every program pays once (input copy, layout
conversion, int8 quantize/dequantize at its edges) drops out. Each convolution of the model is then costed at its
runtime's rate for that shape (MACs / (link MACs / link time)).

Prints and writes (``--out``): kernels.md (per model, kind and stage: MACs, GMAC/s and model ms per runtime) and
kernels.json.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from et_blocks import Captured, collect, interleaved_medians  # this folder: the same units and timing rounds
from torch import nn
from tqdm import tqdm

import regla  # noqa: F401  registers regla_* and repnext_*
from regla.bench.backends import Calibration
from regla.deploy.calib import ImageSet
from regla.deploy.executorch import load_method, set_threads, to_edge
from regla.deploy.export import ort_session
from regla.deploy.quantize import quantize_onnx
from regla.utils import count_macs

BACKENDS = ("et", "et-int8", "ort", "ort-int8", "eager-cl")


@dataclass
class Kernel:
    """One distinct stride-1 depthwise or pointwise convolution of a model and the chain that times it."""

    model: str
    kind: str  # dw3x3, dw5x5, pw
    stage: str
    conv: nn.Conv2d
    inputs: list[torch.Tensor]
    count: int
    ms: dict[str, float] = field(default_factory=dict)  # backend -> per-link kernel ms

    @cached_property
    def macs(self) -> int:
        """MACs of the model's convolution (one occurrence)."""
        return count_macs(self.conv, tuple(self.inputs[0].shape[-2:]), self.conv.in_channels)

    @property
    def link_macs(self) -> int:
        """MACs of one link of the chain: the conv, and for a pointwise one its transpose too."""
        return self.macs * (2 if self.kind == "pw" else 1)


def kernels_of(name: str, size: int, calib: Calibration, limit: int) -> list[Kernel]:
    """The model's distinct stride-1 depthwise and pointwise convolutions (not the 1x1 ones on pooled maps)."""
    out = []
    for unit in collect(name, size, calib, limit):
        conv = unit.module
        if not unit.kind.startswith("conv:") or conv.stride != (1, 1) or unit.inputs[0].shape[-1] == 1:
            continue
        kind = unit.kind[5:]
        if kind.startswith("dw") or kind == "pw":
            out.append(Kernel(name, kind, unit.stage, conv, unit.inputs, unit.count))
    return out


def chain(k: Kernel, links: int) -> nn.Module:
    """``links`` links of ``k``'s convolution (random weights: a kernel's speed does not depend on them)."""
    c, layers = k.conv, []
    gen = torch.Generator().manual_seed(0)
    for _ in range(links):
        conv = copy.deepcopy(c)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / conv.weight[0].numel() ** 0.5)
        layers += [conv, nn.ReLU()]
        if k.kind == "pw":
            back = nn.Conv2d(c.out_channels, c.in_channels, 1)
            with torch.no_grad():
                back.weight.copy_(torch.randn(back.weight.shape, generator=gen) / c.out_channels ** 0.5)
            layers += [back, nn.ReLU()]
    return nn.Sequential(*layers).eval()


def onnx_session(model: nn.Module, x: torch.Tensor, threads: int, int8: bool, inputs: list[torch.Tensor]):
    """An ONNX Runtime session on ``model`` (not spinning between runs: the sessions are timed in turn), int8 QDQ
    calibrated on ``inputs``. ``regla.deploy.export.export_onnx`` takes RGB images only, hence the plain export."""
    with tempfile.TemporaryDirectory(prefix="regla-kernels-") as tmp:
        path = Path(tmp) / "fp32.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), input_names=["input"], dynamo=False)
        if int8:
            images = ImageSet(np.concatenate([t.numpy() for t in inputs]), [])
            path = quantize_onnx(path, Path(tmp) / "int8.onnx", images)
        return ort_session(path, threads, spin=False)  # the session holds the model; the folder may go


def eager_call(model: nn.Module, x: torch.Tensor):
    """One channels-last forward under inference mode."""
    with torch.inference_mode():
        return model(x)


def runners_for(k: Kernel, links: int, threads: int) -> dict[str, object]:
    """A no-argument runner per backend for ``k``'s chain of ``links`` links."""
    model = chain(k, links)
    x = k.inputs[0]
    xc = x.contiguous(memory_format=torch.channels_last)
    out = {}
    for backend, int8 in (("et", False), ("et-int8", True)):
        edge = to_edge(model, xc, int8=int8, calib=Captured(k.inputs))
        out[backend] = functools.partial(load_method(edge.to_executorch().buffer).execute, (xc,))
    for backend, int8 in (("ort", False), ("ort-int8", True)):
        session = onnx_session(model, x, threads, int8, k.inputs)
        out[backend] = functools.partial(session.run, None, {"input": x.numpy()})
    out["eager-cl"] = functools.partial(eager_call, model.to(memory_format=torch.channels_last), xc)
    return out


def time_kernels(kernels: list[Kernel], links: int, threads: int, rounds: int, reps: int) -> None:
    """Per-link ms of every kernel in every backend, into ``Kernel.ms``: (t(links) - t(1)) / (links - 1)."""
    runners = {}
    for i, k in enumerate(tqdm(kernels, desc="lowering", unit="conv")):
        for n in (1, links):
            for backend, fn in runners_for(k, n, threads).items():
                runners[i, n, backend] = fn
    medians = interleaved_medians(runners, rounds, reps)
    for i, k in enumerate(kernels):
        for backend in BACKENDS:
            k.ms[backend] = max(medians[i, links, backend] - medians[i, 1, backend], 1e-6) / (links - 1)


def table(kernels: list[Kernel]) -> str:
    """Markdown: per model, kind and stage: count, GMACs, per backend the rate (GMAC/s) and the model's ms."""
    head = ("| Model | conv | stage | n | GMACs | "
            + " | ".join(f"{b} GMAC/s | {b} ms" for b in BACKENDS) + " |")
    lines = [head, "|" + "---|" * 5 + "---:|" * (2 * len(BACKENDS))]
    models = list(dict.fromkeys(k.model for k in kernels))  # the order asked for
    totals = {(m, kind): {"macs": 0, **{b: 0.0 for b in BACKENDS}}
              for m in models for kind in ("depthwise", "pointwise", "all")}
    for k in kernels:
        rates = {b: k.link_macs / k.ms[b] / 1e6 for b in BACKENDS}
        model_ms = {b: k.count * k.macs / rates[b] / 1e6 for b in BACKENDS}
        cells = " | ".join(f"{rates[b]:.1f} | {model_ms[b]:.1f}" for b in BACKENDS)
        lines.append(f"| {k.model} | {k.kind} | {k.stage} | {k.count} | {k.count * k.macs / 1e9:.3f} | {cells} |")
        for key in ((k.model, "depthwise" if k.kind.startswith("dw") else "pointwise"), (k.model, "all")):
            t = totals[key]
            t["macs"] += k.count * k.macs
            for b in BACKENDS:
                t[b] += model_ms[b]
    for (model, kind), t in totals.items():
        if not t["macs"]:
            continue
        cells = " | ".join(f"{t['macs'] / t[b] / 1e6:.1f} | **{t[b]:.1f}**" for b in BACKENDS)
        lines.append(f"| {model} | **{kind}** | | | {t['macs'] / 1e9:.3f} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--links", type=int, default=4, help="links of the long chain (the short one has 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calib", type=int, default=2, help="calibration images (the digits set, as regla bench)")
    parser.add_argument("--out", type=Path, default=None, help="folder for kernels.md and kernels.json")
    args = parser.parse_args()
    if args.links < 2:
        parser.error(f"--links must be at least 2, got {args.links}")
    torch.set_num_threads(args.threads)
    set_threads(args.threads)  # before any program loads (see et_blocks.lower_all)
    calib = Calibration(None, args.calib)
    kernels = [k for name in args.models for k in kernels_of(name, args.size, calib, args.calib)]
    time_kernels(kernels, args.links, args.threads, args.rounds, args.reps)
    text = table(kernels)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kernels.md").write_text(text + "\n")
        (args.out / "kernels.json").write_text(json.dumps(
            [{"model": k.model, "kind": k.kind, "stage": k.stage, "count": k.count, "macs": k.macs,
              "input": list(k.inputs[0].shape), "link_ms": k.ms} for k in kernels], indent=1) + "\n")


if __name__ == "__main__":
    main()
