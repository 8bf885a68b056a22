"""``torch.compile`` with the inductor CPU backend, for inference at one fixed input shape.

:func:`compile_for` compiles a fused eval model for one shape (``dynamic=False``: one specialised graph, as a
server running at a fixed size uses it) and returns the compiled callable with the compile time (the first call,
which traces, lowers and builds the C++ kernels) measured separately from the steady-state latency.

Weights are frozen (inductor's ``freezing`` option, what PyTorch recommends for CPU inference): they become
constants, so inductor folds them and pre-packs the convolution weights for oneDNN. Without it, regla_t at 224 px
ran slower compiled than eager on this CPU.
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

    torch._dynamo.reset()  # a fresh cache: compile time is this model's alone
    compiled = torch.compile(model, backend="inductor", dynamic=False, fullgraph=False,
                             options={"freezing": True})
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
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
