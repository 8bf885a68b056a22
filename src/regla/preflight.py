"""Checks every subcommand runs on its input before any work starts; each failure is a one-line UsageError.

Argument types for ``argparse`` (:func:`int_range`, :func:`float_range`), paths (:func:`existing_file`,
:func:`existing_dir`), model names (:func:`require_model`) and devices (:func:`check_device`). Importing this
module imports no torch; the model and device checks import timm / torch when called.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path

from .errors import UnknownModelError, UsageError, unknown_model_message

__all__ = ["check_device", "existing_dir", "existing_file", "float_range", "int_range", "require_model"]


def _range_text(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"<= {hi:g}"


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An ``argparse`` type: an integer in ``[lo, hi]`` (either bound optional)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be an integer {_range_text(lo, hi)}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable[[str], float]:
    """An ``argparse`` type: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``; bounds optional)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        if value != value or value in (float("inf"), float("-inf")) or too_low or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be a number {_range_text(lo, hi, lo_open)}")
        return value

    parse.__name__ = "number"
    return parse


def existing_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a ``Path`` if it is an existing file; else a UsageError naming ``flag``."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{flag} {p}: is a folder, expected a file")
    if not p.is_file():
        raise UsageError(f"{flag} {p}: file does not exist")
    return p


def existing_dir(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a ``Path`` if it is an existing folder; else a UsageError naming ``flag``."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {p}: is a file, expected a folder")
    if not p.is_dir():
        raise UsageError(f"{flag} {p}: folder does not exist")
    return p


def require_model(name: str, flag: str = "model", expected: tuple[str, ...] = ()) -> str:
    """``name`` if timm knows it (ours are registered by ``import regla``); else :class:`UnknownModelError`."""
    import timm  # importing timm inside regla registers our models (regla/__init__.py)

    if not isinstance(name, str) or not timm.is_model(name):
        raise UnknownModelError(unknown_model_message(str(name), timm.list_models(), expected))
    return name


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name: str, flag: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and only if this machine has it; else a UsageError."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise UsageError(f"{flag} {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if name in ("auto", "cpu"):
        return name
    import torch

    if name == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"{flag} mps: no Apple GPU (MPS) is available here; use --device cpu or auto")
        return name
    if not torch.cuda.is_available():
        raise UsageError(f"{flag} {name}: no CUDA GPU is visible to PyTorch here "
                         "(torch.cuda.is_available() is False); use --device cpu or auto")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise UsageError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return name
