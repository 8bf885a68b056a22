"""Latency measurement: ONNX Runtime (CPU) and eager PyTorch, batch 1, interleaved round by round.

Method, per resolution:

1. every runner (one per model and backend) is warmed up; for eager PyTorch both memory layouts (contiguous and
   channels-last) are tried and the faster one is kept and reported;
2. the warm-up median sets how many timed runs each runner gets: enough to fill ``target_s`` seconds, clamped to
   ``[min_runs, max_runs]``;
3. the timed runs are split into ``rounds`` rounds; in each round every runner does its share, the order of runners
   rotating from round to round, so slow drift of a shared machine (other jobs, thermal state) hits all models alike;
4. each run is timed on its own with ``time.perf_counter``; the median and the spread (p10, p25, p75, p90) are kept.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

Runner = Callable[[], object]


@dataclass
class Stats:
    """Summary of a list of per-run latencies, in milliseconds."""

    median_ms: float
    p10_ms: float
    p25_ms: float
    p75_ms: float
    p90_ms: float
    n: int

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "iqr_ms": self.iqr_ms}


def summarize(times_s: Sequence[float]) -> Stats:
    """Median and percentiles of ``times_s`` (seconds) in milliseconds."""
    if not times_s:
        raise ValueError("no timings to summarize")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p10, p25, p50, p75, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
    return Stats(float(p50), float(p10), float(p25), float(p75), float(p90), int(ms.size))


def time_runs(fn: Runner, n: int) -> list[float]:
    """Call ``fn`` ``n`` times, timing each call on its own (seconds)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def physical_cores() -> int:
    """Physical cores available to this process (SMT siblings counted once); falls back to the CPU count."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{base}/physical_package_id") as f:
                pkg = f.read().strip()
            with open(f"{base}/core_id") as f:
                core = f.read().strip()
        except OSError:
            return len(cpus)
        cores.add((pkg, core))
    return max(1, len(cores))


def set_torch_threads(threads: int) -> None:
    """Fix PyTorch's intra-op thread count (and inter-op to 1, where still allowed)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started
        pass


def ort_runner(session, shape: tuple[int, ...], seed: int = 0) -> Runner:
    """A runner doing one ONNX Runtime inference on a fixed random input of ``shape``."""
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def eager_runner(model: nn.Module, shape: tuple[int, ...], channels_last: bool, seed: int = 0) -> Runner:
    """A runner doing one eager forward under ``torch.inference_mode`` in the given memory layout.

    The model is converted to that layout in place: use one layout per model at a time.
    """
    from ..deploy.layout import example_input, to_layout

    to_layout(model, channels_last)
    x = example_input(shape, channels_last, seed)

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def pick_eager_layout(model: nn.Module, shape: tuple[int, ...], warmup: int) -> tuple[Runner, bool, list[float]]:
    """Time ``warmup - 1`` runs in each layout (after one untimed run) and keep the faster one
    (:func:`regla.deploy.layout.layout_trials`, as ``regla eval`` and ``regla export`` choose their layout).

    Returns the runner in the chosen layout, whether it is channels-last, and the chosen layout's warm-up times.
    """
    from ..deploy.layout import faster, layout_trials

    trials = layout_trials(model, shape, max(1, warmup - 1))
    best = faster(trials)
    return eager_runner(model, shape, best), best, trials[best]


def runs_for(estimate_s: float, target_s: float, min_runs: int, max_runs: int, rounds: int) -> int:
    """Timed runs for a runner whose single run takes ``estimate_s``: fill ``target_s``, clamp, round up to rounds."""
    n = min(max_runs, max(min_runs, math.ceil(target_s / max(estimate_s, 1e-6))))
    return rounds * math.ceil(n / rounds)


def interleaved(runners: dict[str, Runner], runs: dict[str, int], rounds: int,
                on_step: Callable[[str], None] | None = None, lead_in_below_s: float = 0.05,
                estimates: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Time every runner ``runs[key]`` times, split over ``rounds`` rounds with a rotating runner order.

    A runner whose estimate is under ``lead_in_below_s`` does one untimed run before its share of each round, so
    that thread-pool wake-up after another backend ran is not charged to it (cheap for fast runners, and slow ones
    are not affected measurably).
    """
    keys = list(runners)
    times: dict[str, list[float]] = {k: [] for k in keys}
    estimates = estimates or {}
    for r in range(rounds):
        shift = r % max(1, len(keys))
        for key in keys[shift:] + keys[:shift]:
            share = runs[key] // rounds
            if estimates.get(key, 0.0) < lead_in_below_s:
                runners[key]()
            times[key].extend(time_runs(runners[key], share))
            if on_step is not None:
                on_step(key)
    return times
