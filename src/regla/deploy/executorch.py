"""ExecuTorch: lower a fused model to a ``.pte`` program with the XNNPACK delegate, and run it with ExecuTorch's
own runtime (``executorch.runtime``, the one linked into Android and iOS apps; it runs on this Linux CPU too).

Lowering is ExecuTorch's documented path: ``torch.export.export`` -> ``to_edge_transform_and_lower(...,
partitioner=[XnnpackPartitioner()])`` -> ``to_executorch()``. int8 programs are quantized first with the XNNPACK
quantizer (:func:`regla.deploy.quantize.quantize_pt2e`). Shapes are static: a program runs at the size it was
lowered at (as a mobile app feeds it), so export one program per input size.

Operators XNNPACK does not take stay in ExecuTorch's portable kernels (slow, but correct);
:func:`delegation_summary` counts the partitions and names what was left out.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import RunFailure
from .calib import ImageSet


class ExecuTorchError(RunFailure):
    """A model could not be exported, lowered or run by ExecuTorch (exit code 1)."""


@dataclass
class Lowered:
    """A lowered program: its bytes, how many XNNPACK partitions it runs, and the operators left outside them."""

    buffer: bytes
    partitions: int
    outside: dict[str, int]  # operator name -> count, run by ExecuTorch's portable kernels

    @property
    def portable_ops(self) -> int:
        return sum(self.outside.values())


def import_executorch():
    """Import ExecuTorch's lowering API, or say how to install it."""
    try:
        import executorch.exir as exir
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    except ImportError as e:
        raise ExecuTorchError("ExecuTorch export needs the executorch package: pip install 'regla[deploy]'") from e
    return exir, XnnpackPartitioner


def to_edge(model: nn.Module, example: torch.Tensor, *, int8: bool = False, calib: ImageSet | None = None,
            quantizer=None):
    """``model`` (fused, eval) exported at ``example``'s shape and lowered to XNNPACK: the edge program manager.

    int8 quantizes first with the XNNPACK quantizer (or ``quantizer``), calibrated on ``calib``.
    """
    exir, partitioner = import_executorch()
    if int8 and calib is None:
        raise ValueError("an int8 program needs calibration images")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            if int8:
                from .quantize import quantize_pt2e

                model = quantize_pt2e(model, example, calib, quantizer)
            program = torch.export.export(model, (example,), strict=False)
            return exir.to_edge_transform_and_lower(program, partitioner=[partitioner()])
        except Exception as e:  # noqa: BLE001 - any exporter/lowering failure names the stage and the error
            lines = str(e).strip().splitlines()
            raise ExecuTorchError(f"ExecuTorch {'int8 ' if int8 else ''}lowering failed: {type(e).__name__}: "
                                  f"{lines[0] if lines else ''}") from e


def lower(model: nn.Module, example: torch.Tensor, *, int8: bool = False, calib: ImageSet | None = None) -> Lowered:
    """Lower ``model`` (fused, eval) at ``example``'s shape to an XNNPACK-delegated program (int8 with ``calib``)."""
    edge = to_edge(model, example, int8=int8, calib=calib)
    partitions, outside = delegation_summary(edge.exported_program().graph)
    try:
        buffer = edge.to_executorch().buffer
    except Exception as e:  # noqa: BLE001
        raise ExecuTorchError(f"ExecuTorch program serialisation failed: {type(e).__name__}: {e}") from e
    return Lowered(buffer, partitions, outside)


def delegation_summary(graph) -> tuple[int, dict[str, int]]:
    """(XNNPACK delegate calls, operators left to the portable kernels by name) of a lowered edge graph.

    One delegate call is one XNNPACK partition: every operator outside the delegate cuts the graph, and each cut
    costs a hand-over between the delegate and the portable kernels.
    """
    partitions, outside = 0, Counter()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            partitions += 1
        elif name != "getitem" and not name.startswith("_operator"):
            outside[name] += 1
    return partitions, dict(outside.most_common())


def set_threads(threads: int) -> None:
    """Size ExecuTorch's shared XNNPACK threadpool (its default is one thread per CPU, whatever torch's setting)."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


class LoadedMethod:
    """The ``forward`` method of a loaded program, holding the program (and its bytes) alive while it is used.

    ExecuTorch's ``Method`` points into its ``Program``: dropping the program while keeping the method crashes the
    process on the next ``execute``, so both live here together.
    """

    def __init__(self, program: bytes | str | os.PathLike):
        from executorch.runtime import Runtime

        self.source = program if isinstance(program, bytes) else Path(program)
        try:
            self.program = Runtime.get().load_program(self.source)
            self.method = self.program.load_method("forward")
        except Exception as e:  # noqa: BLE001
            raise ExecuTorchError(f"ExecuTorch could not load the program: {type(e).__name__}: {e}") from e

    def execute(self, inputs: tuple) -> list:
        return self.method.execute(inputs)


def load_method(program: bytes | str | os.PathLike) -> LoadedMethod:
    """The ``forward`` method of a program (bytes or a ``.pte`` path) in ExecuTorch's runtime."""
    return LoadedMethod(program)


def runner(program: bytes | str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    """``x (N, 3, H, W) float32 -> logits``: the program run by ExecuTorch's runtime, one image at a time."""
    method = load_method(program)

    def run(x: np.ndarray) -> np.ndarray:
        outs = [method.execute((torch.from_numpy(np.ascontiguousarray(x[i:i + 1])),))[0].numpy()
                for i in range(x.shape[0])]
        return np.concatenate(outs)

    return run


def timed_call(program: bytes | str | os.PathLike, shape: tuple[int, ...], seed: int = 0) -> Callable[[], object]:
    """A no-argument runner for ``regla bench``: one forward on a fixed random input of ``shape``."""
    method = load_method(program)
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)),)
    return lambda: method.execute(x)
