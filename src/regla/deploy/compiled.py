"""``torch.compile`` with the inductor CPU backend, for inference at one fixed input shape.

:func:`compile_for` compiles a fused eval model for one shape (``dynamic=False``: one specialised graph, as a
server running at a fixed size uses it) and returns the compiled callable with the compile time (the first call,
which traces, lowers and builds the C++ kernels) measured separately from the steady-state latency.

Weights are frozen (inductor's ``freezing``, what PyTorch recommends for CPU inference): they become constants,
so inductor folds them, pre-packs the convolution weights for oneDNN and fuses the activation into the
convolution. The setting is patched into inductor's config around the compiling call: passed as
``torch.compile(options={"freezing": True})`` (as regla did until 2026-12-05) torch 2.15 compiles without
freezing, the weights stay graph inputs and no convolution is pre-packed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from ..errors import RunFailure


class CompileError(RunFailure):
    """``torch.compile`` could not compile or run a model (exit code 1)."""


def compile_for(model: nn.Module, example: torch.Tensor) -> tuple[Callable, float]:
    """Compile ``model`` for ``example``'s shape; return ``(compiled, compile_seconds)`` after one checked call."""
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()  # a fresh cache: compile time is this model's alone
    compiled = torch.compile(model, backend="inductor", dynamic=False, fullgraph=False)
    t0 = time.perf_counter()
    try:
        # inductor reads ``freezing`` when the first call compiles, under no grad
        with torch._inductor.config.patch(freezing=True), torch.inference_mode():
            compiled(example)
    except Exception as e:  # noqa: BLE001 - a backend failure names the model's error in one line
        lines = str(e).strip().splitlines()
        raise CompileError(f"torch.compile (inductor) failed: {type(e).__name__}: {lines[0] if lines else ''}") from e
    return compiled, time.perf_counter() - t0


def timed_call(compiled: Callable, example: torch.Tensor) -> Callable[[], object]:
    """A no-argument runner for ``regla bench``: one compiled forward under ``torch.inference_mode``."""

    def run() -> object:
        with torch.inference_mode():
            return compiled(example)

    return run
