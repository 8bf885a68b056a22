"""``regla bench``: the peers side by side on this machine (params, MACs, CPU latency, memory, published Top-1).

The Python API mirrors the command: :func:`run_bench` returns a JSON-ready document, :func:`write_outputs` writes it.
"""

from .models import DEFAULT_MODELS, BenchModel, Published, UnknownModelError, resolve_models
from .report import write_outputs
from .runner import BenchConfig, run_bench

__all__ = [
    "DEFAULT_MODELS",
    "BenchConfig",
    "BenchModel",
    "Published",
    "UnknownModelError",
    "resolve_models",
    "run_bench",
    "write_outputs",
]
