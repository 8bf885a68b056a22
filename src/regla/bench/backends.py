"""The runtimes ``regla bench`` times side by side, each built from :mod:`regla.deploy`'s sessions.

(Imports nothing heavy at module level: the report and the command line read the names below.)

A backend turns one prepared model at one input shape into a no-argument runner (one batch-1 inference). Building
may fail for a model (an operator a runtime cannot take, a quantizer that cannot annotate it): the caller records
the error for that model and backend and goes on with the others.

* ``ort``: ONNX Runtime CPU, fp32 (the exported ONNX file, dynamic axes, one session per resolution);
* ``ort-int8``: the same file quantized statically (QDQ, per-channel int8 weights), calibrated once per model;
* ``eager``: PyTorch eager, the faster of contiguous and channels-last;
* ``compile``: ``torch.compile`` (inductor, weights frozen) at each resolution, in eager's layout; compile time
  reported apart from latency;
* ``executorch`` / ``executorch-int8``: an XNNPACK-delegated ExecuTorch program lowered at each resolution
  (fp32, or int8 with the XNNPACK quantizer), run by ExecuTorch's runtime with ``--threads`` XNNPACK threads.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("ort", "ort-int8", "eager", "compile", "executorch", "executorch-int8")
DEFAULT_BACKENDS = ("ort", "eager")
LABELS = {"ort": "ORT", "ort-int8": "ORT-int8", "eager": "Eager", "compile": "Compile", "executorch": "ET",
          "executorch-int8": "ET-int8"}
NAMES = {"ort": "ONNX Runtime fp32", "ort-int8": "ONNX Runtime int8 (QDQ)", "eager": "PyTorch eager",
         "compile": "torch.compile (inductor)", "executorch": "ExecuTorch XNNPACK fp32",
         "executorch-int8": "ExecuTorch XNNPACK int8"}
INT8 = ("ort-int8", "executorch-int8")


@dataclass
class Built:
    """A runner and what building it cost: seconds (compile, lowering, quantization) and a note for the JSON."""

    run: Callable[[], object]
    prepare_s: float = 0.0
    warm: list[float] | None = None  # warm-up times already taken (eager's layout trial), else None
    channels_last: bool | None = None


class Calibration:
    """Calibration image sets per (normalisation, size), read once per run (``--calib`` folder or the digits)."""

    def __init__(self, folder: str | None, limit: int):
        self.folder, self.limit = folder, limit
        self._cache: dict = {}

    def get(self, model, hw: tuple[int, int]):
        from ..deploy.calib import calibration_set, model_norm

        norm = model_norm(model)
        key = (norm, hw)
        if key not in self._cache:
            self._cache[key] = calibration_set(self.folder, hw, norm, self.limit)
        return self._cache[key]


def quantize_ort(model, onnx_path: Path, out: Path, calib: Calibration, res: int) -> float:
    """Quantize ``onnx_path`` into ``out`` (calibrated at ``res`` px); return the seconds it took."""
    from ..deploy.quantize import quantize_onnx

    t0 = time.perf_counter()
    quantize_onnx(onnx_path, out, calib.get(model, (res, res)))
    return time.perf_counter() - t0


def build(backend: str, model, paths: dict[str, Path], shape: tuple[int, ...], threads: int, warmup: int,
          calib: Calibration, channels_last: bool = False) -> Built:
    """A runner for ``backend`` on ``model`` (fused, eval) at ``shape``; raises whatever the runtime raises."""
    import torch

    if backend in ("ort", "ort-int8"):
        from ..deploy.export import ort_session
        from .measure import ort_runner

        return Built(ort_runner(ort_session(paths[backend], threads), shape))
    if backend == "eager":
        from .measure import pick_eager_layout

        run, cl, warm = pick_eager_layout(model, shape, warmup)
        return Built(run, warm=warm, channels_last=cl)
    if backend == "compile":
        from ..deploy.compiled import compile_for, timed_call

        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = copy.deepcopy(model).to(memory_format=fmt)  # eager's runner keeps the original in its layout
        example = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=fmt)
        compiled, seconds = compile_for(model, example)
        return Built(timed_call(compiled, example), prepare_s=seconds, channels_last=channels_last)
    if backend in ("executorch", "executorch-int8"):
        from ..deploy.executorch import lower, set_threads, timed_call

        set_threads(threads)  # the same thread count as the other runtimes (XNNPACK's default: every CPU)
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        int8 = backend == "executorch-int8"
        t0 = time.perf_counter()
        lowered = lower(model, torch.randn(*shape), int8=int8,
                        calib=calib.get(model, tuple(shape[2:])) if int8 else None)
        return Built(timed_call(lowered.buffer, shape), prepare_s=time.perf_counter() - t0)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
