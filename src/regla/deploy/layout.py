"""Memory layout for CPU inference: contiguous (NCHW) or channels-last (NHWC), whichever runs a model faster.

PyTorch's CPU convolutions take different paths in the two layouts (oneDNN for depthwise and strided convs, a GEMM
for 1x1 convs on one thread), and which layout wins depends on the model and the input size: ReGLA-M is faster in
channels-last at 512 px on this project's CPU, RepViT-M1.1 in contiguous (docs/benchmarks.md). So the layout is
timed, not guessed: :func:`layout_trials` runs a few batch-1 forwards in each, and ``regla bench`` (eager and
compile), ``regla eval --layout auto`` and ``regla export --format torchscript`` keep the faster one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

LAYOUTS = ("auto", "contiguous", "channels-last")


def to_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` converted in place to channels-last or contiguous weights."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def example_input(shape: Sequence[int], channels_last: bool, seed: int = 0) -> torch.Tensor:
    """A fixed random input of ``shape`` in the given layout."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def layout_trials(model: nn.Module, shape: Sequence[int], runs: int = 2) -> dict[bool, list[float]]:
    """Seconds of ``runs`` forwards (after one untimed) per layout, ``{channels_last: times}``; leaves ``model`` in
    the last layout tried (channels-last)."""
    trials = {}
    for cl in (False, True):
        to_layout(model, cl)
        x = example_input(shape, cl)
        with torch.inference_mode():
            model(x)
            times = []
            for _ in range(max(1, runs)):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        trials[cl] = times
    return trials


def faster(trials: dict[bool, list[float]]) -> bool:
    """True when channels-last had the lower median in :func:`layout_trials`."""
    return float(np.median(trials[True])) < float(np.median(trials[False]))


def apply_layout(model: nn.Module, layout: str, shape: Sequence[int], runs: int = 2) -> bool:
    """Put ``model`` (eval, on CPU for ``auto``) in ``layout`` (``auto`` times both); return whether it is
    channels-last."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    cl = faster(layout_trials(model, shape, runs)) if layout == "auto" else layout == "channels-last"
    to_layout(model, cl)
    return cl
