"""Where each model's ExecuTorch XNNPACK time goes: every block and every convolution lowered and timed alone.

Usage: python scripts/et_blocks.py regla_m repvit_m1_1 [--size 512] [--threads 1] [--rounds 7] [--out DIR]

The executorch 1.5.1 wheel has no XNNPACK build with per-operator profiling, so this profiles from outside: each
model (fused, eval) runs on the calibration images with hooks that keep the input of every block (stem,
downsampling, stage blocks) and every convolution; each distinct (module shape, input shape) is then lowered on
its own to XNNPACK in fp32 and in int8 (PT2E, the XNNPACK quantizer, calibrated on the kept inputs, as
``regla export --format executorch --int8`` does for the whole model) and timed, the programs of all models
interleaved round by round. A block's time counts its convolutions and everything between them (adds,
attention, SE); a convolution's time is the XNNPACK kernel alone, so block time minus its convolutions is what
the rest costs. Each distinct unit is timed once and counted as often as it occurs.

Units are exported and run on channels-last inputs, so that XNNPACK (NHWC inside) converts no layout at a unit's
edges; an int8 unit still quantizes its input and dequantizes its output, which the whole model does once. The
whole model is timed in the same rounds (also channels-last) so that the sums can be read against it.

Prints and writes (``--out``): whole.md, blocks.md and convs.md (the tables, grouped by kind and stage) and blocks.json.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import regla  # noqa: F401  registers regla_* and repnext_*
from regla.bench.backends import Calibration
from regla.checkpoints import create_fused_model
from regla.deploy.executorch import load_method, set_threads, to_edge


@dataclass
class Unit:
    """One distinct piece of a model: how often it occurs, its kind and stage, the inputs it saw."""

    model: str
    kind: str
    stage: str
    module: nn.Module
    inputs: list[torch.Tensor]
    count: int = 1
    ms: dict[str, float] = field(default_factory=dict)


class Captured:
    """An ``ImageSet`` stand-in for :func:`regla.deploy.quantize.quantize_pt2e`: the inputs a unit saw."""

    def __init__(self, inputs: list[torch.Tensor]):
        self.inputs = inputs

    def batches(self, size: int = 1):
        for x in self.inputs:
            yield x.numpy()


def conv_kind(m: nn.Conv2d) -> str:
    """``dw5x5``, ``pw``, ``conv3x3/s2``: depthwise, pointwise or dense, kernel and stride."""
    k = "x".join(map(str, m.kernel_size))
    stride = f"/s{m.stride[0]}" if m.stride[0] > 1 else ""
    if m.groups == m.in_channels and m.groups > 1:
        return f"dw{k}{stride}"
    if m.kernel_size == (1, 1):
        return f"pw{stride}"
    return f"conv{k}{stride}"


def blocks_of(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(kind, stage, module) for the stem, each stage's downsampling and each block: the models of the targets
    (ReGLA, timm's RepViT, iFormer, RepNeXt) all hold ``stem`` and ``stages[i]`` with ``downsample``/``blocks``."""
    out = [("stem", "stem", model.stem)]
    for i, stage in enumerate(model.stages):
        down = getattr(stage, "downsample", None)
        if down is not None and not isinstance(down, nn.Identity):
            out.append(("downsample", f"s{i + 1}", down))
        for block in stage.blocks:
            kind = type(block).__name__
            if kind == "Residual" and hasattr(block, "fn"):
                kind = type(block.fn).__name__
            elif kind == "Residual" and hasattr(block, "m"):
                kind = type(block.m).__name__
            out.append((kind, f"s{i + 1}", block))
    return out


def signature(module: nn.Module, x: torch.Tensor) -> tuple:
    """Two units with the same class, parameter shapes and input shape cost the same."""
    return (type(module).__name__, tuple(tuple(p.shape) for p in module.parameters()), tuple(x.shape))


def collect(name: str, size: int, calib: Calibration, limit: int) -> list[Unit]:
    """Distinct blocks and convolutions of ``name`` with the inputs each saw on the calibration images."""
    model = create_fused_model(name).eval()
    pieces = [(kind, stage, m, "block") for kind, stage, m in blocks_of(model)]
    for _kind, stage, block in blocks_of(model):
        pieces += [(conv_kind(c), stage, c, "conv") for c in block.modules() if isinstance(c, nn.Conv2d)]
    seen: dict[int, list[torch.Tensor]] = defaultdict(list)
    hooks = [m.register_forward_pre_hook(lambda mod, args, i=i: seen[i].append(args[0].detach().clone()))
             for i, (_, _, m, _) in enumerate(pieces)]
    with torch.no_grad():
        for batch in list(calib.get(model, (size, size)).batches(1))[:limit]:
            model(torch.from_numpy(batch))
    for h in hooks:
        h.remove()
    # pieces[0] is the stem: its inputs are the model's
    units: dict[tuple, Unit] = {("model",): Unit(name, "model:whole", "all", model, seen[0])}
    for i, (kind, stage, m, level) in enumerate(pieces):
        key = (level, stage, kind, signature(m, seen[i][0]))
        if key in units:
            units[key].count += 1
        else:
            units[key] = Unit(name, f"{level}:{kind}", stage, m, seen[i])
    return list(units.values())


def lower_all(units: list[Unit], threads: int) -> dict[tuple[int, str], object]:
    """A timed runner per (unit, precision)."""
    set_threads(threads)  # before any program loads: resetting XNNPACK's threadpool under loaded programs hangs
    runners = {}
    for u_i, unit in enumerate(tqdm(units, desc="lowering", unit="unit")):
        for prec in ("fp32", "int8"):
            x = unit.inputs[0].contiguous(memory_format=torch.channels_last)
            edge = to_edge(unit.module, x, int8=prec == "int8", calib=Captured(unit.inputs))
            method = load_method(edge.to_executorch().buffer)
            runners[u_i, prec] = functools.partial(method.execute, (x,))
    return runners


def interleaved_medians(runners: dict, rounds: int, reps: int) -> dict:
    """Median ms per runner over ``rounds`` interleaved rounds (one warm-up call each first); a round's sample is
    the mean of ``reps`` back-to-back calls."""
    samples: dict = defaultdict(list)
    for fn in runners.values():  # warm-up
        fn()
    for _ in tqdm(range(rounds), desc="timing", unit="round"):
        for key, fn in runners.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[key].append((time.perf_counter() - t0) / reps * 1e3)
    return {key: statistics.median(s) for key, s in samples.items()}


def time_all(units: list[Unit], runners: dict, rounds: int, reps: int) -> None:
    """Median ms per unit and precision, into ``Unit.ms``."""
    for (u_i, prec), ms in interleaved_medians(runners, rounds, reps).items():
        units[u_i].ms[prec] = ms


def table(units: list[Unit], level: str) -> str:
    """Markdown: per model, kind and stage: count, fp32 ms, int8 ms (summed over occurrences), fp32/int8."""
    rows = defaultdict(lambda: [0, 0.0, 0.0])
    totals = defaultdict(lambda: [0.0, 0.0])
    for u in units:
        if not u.kind.startswith(level + ":"):
            continue
        r = rows[u.model, u.kind.split(":", 1)[1], u.stage]
        r[0] += u.count
        r[1] += u.count * u.ms["fp32"]
        r[2] += u.count * u.ms["int8"]
        if level != "model":  # a whole model is its own total
            totals[u.model][0] += u.count * u.ms["fp32"]
            totals[u.model][1] += u.count * u.ms["int8"]
    lines = [f"| Model | {level} | stage | n | ET fp32 ms | ET int8 ms | fp32/int8 |",
             "|---|---|---|---:|---:|---:|---:|"]
    for (model, kind, stage), (n, f, q) in rows.items():
        lines.append(f"| {model} | {kind} | {stage} | {n} | {f:.1f} | {q:.1f} | {f / q:.2f}x |")
    for model, (f, q) in totals.items():
        lines.append(f"| {model} | **sum** | | | {f:.1f} | {q:.1f} | {f / q:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calib", type=int, default=4, help="calibration images (the digits set, as regla bench)")
    parser.add_argument("--out", type=Path, default=None, help="folder for whole.md, blocks.md, convs.md, blocks.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calib = Calibration(None, args.calib)
    units = [u for name in args.models for u in collect(name, args.size, calib, args.calib)]
    runners = lower_all(units, args.threads)
    time_all(units, runners, args.rounds, args.reps)
    blocks, convs = table(units, "block"), table(units, "conv")
    whole = table(units, "model")
    print(whole, "\n", blocks, "\n", convs, sep="\n")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "blocks.md").write_text(blocks + "\n")
        (args.out / "convs.md").write_text(convs + "\n")
        (args.out / "whole.md").write_text(whole + "\n")
        (args.out / "blocks.json").write_text(json.dumps(
            [{"model": u.model, "kind": u.kind, "stage": u.stage, "count": u.count, "input": list(u.inputs[0].shape),
              **{f"{k}_ms": v for k, v in u.ms.items()}} for u in units], indent=1) + "\n")


if __name__ == "__main__":
    main()
