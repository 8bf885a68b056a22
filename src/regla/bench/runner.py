"""``regla bench`` end to end: build fused models, export ONNX (and int8), count, time every backend of
:mod:`regla.bench.backends` interleaved, probe memory, collect results."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .backends import BACKENDS, DEFAULT_BACKENDS, Calibration, build, quantize_ort
from .measure import (
    interleaved,
    physical_cores,
    runs_for,
    set_torch_threads,
    summarize,
    time_runs,
)
from .models import BenchModel, bench_model

MAX_RESOLUTION = 1024
DEFAULT_CALIB_IMAGES = 16


@dataclass
class BenchConfig:
    """Everything a bench run depends on (all of it is written to the JSON output)."""

    models: list[str]
    resolutions: list[int] = field(default_factory=lambda: [224, 512])
    threads: int = 0  # 0: physical cores
    warmup: int = 3
    min_runs: int = 10
    max_runs: int = 100
    target_s: float = 1.0
    rounds: int = 5
    memory: bool = True
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    calib: str | None = None  # calibration image folder for the int8 backends (None: the digits demo set)
    calib_images: int = DEFAULT_CALIB_IMAGES

    def validate(self) -> None:
        """Raise :class:`~regla.errors.UsageError` (a ``ValueError``) on settings that cannot give a measurement."""
        if not self.models:
            raise UsageError("no models to benchmark")
        bad = [r for r in self.resolutions if not 32 <= r <= MAX_RESOLUTION]
        if bad or not self.resolutions:
            raise UsageError(f"resolutions must lie in 32..{MAX_RESOLUTION}, got {self.resolutions}")
        if self.threads < 0 or self.warmup < 1 or self.rounds < 1 or not 1 <= self.min_runs <= self.max_runs:
            raise UsageError(f"need threads >= 0, warmup >= 1, rounds >= 1 and 1 <= min_runs <= max_runs, got "
                             f"threads {self.threads}, warmup {self.warmup}, rounds {self.rounds}, "
                             f"min_runs {self.min_runs}, max_runs {self.max_runs}")
        if not set(self.backends) <= set(BACKENDS) or not self.backends:
            raise UsageError(f"backends must be a non-empty subset of {BACKENDS}")


@dataclass
class ModelResult:
    """Measurements of one model; per-resolution dicts are keyed by resolution."""

    name: str
    label: str
    family: str
    params: int | None = None
    macs: dict[int, int] = field(default_factory=dict)
    latency: dict[str, dict[int, dict]] = field(default_factory=dict)  # backend -> res -> Stats.as_dict()
    eager_channels_last: dict[int, bool] = field(default_factory=dict)
    memory: dict[int, dict] = field(default_factory=dict)
    onnx_max_abs_diff: float | None = None
    prepare_s: dict[str, dict[int, float]] = field(default_factory=dict)  # backend -> res -> compile/lower seconds
    backend_errors: dict[str, str] = field(default_factory=dict)  # backend -> why it could not run this model
    growth_exponent: dict[str, float] = field(default_factory=dict)  # backend -> slope of log t vs log pixels
    growth_512_1024: dict[str, float] = field(default_factory=dict)  # backend -> t(1024) / t(512)
    error: str | None = None

    def median(self, backend: str, res: int) -> float | None:
        return self.latency.get(backend, {}).get(res, {}).get("median_ms")


def machine_info(threads: int) -> dict:
    """CPU model, core counts, threads used, load, library versions: what a reader needs to compare numbers."""
    import onnxruntime
    import timm
    import torch

    model_name = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model_name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model_name,
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "timm": timm.__version__,
        "executorch": _version("executorch"),
        "numpy": np.__version__,
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ},
    }


def _version(dist: str) -> str | None:
    """Installed version of ``dist``, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def fit_growth_exponent(resolutions: Sequence[int], latencies_ms: Sequence[float]) -> float | None:
    """Least-squares slope of log(latency) against log(pixel count): 1.0 means latency linear in pixels."""
    pts = [(r * r, t) for r, t in zip(resolutions, latencies_ms, strict=True) if t and t > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([p for p, _ in pts]), np.log([t for _, t in pts])
    return float(np.polyfit(x, y, 1)[0])


def progress(total: int, desc: str):
    """A tqdm bar on stderr for one phase of a bench (left behind when done)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr, leave=False)


def prepare_models(names: Sequence[str], workdir: Path, threads: int, check_res: int,
                   backends: Sequence[str] = ("ort",), calib: Calibration | None = None) -> tuple[dict, list]:
    """Create, fuse and ONNX-export each model; check ONNX against PyTorch once; quantize it for ``ort-int8``.

    Failures are recorded, not raised: a model that cannot be built or exported gets ``error``; a model whose int8
    quantization fails gets ``backend_errors["ort-int8"]`` and is timed in the other backends.
    Returns ``{name: (module, {backend: onnx_path})}`` and the list of :class:`ModelResult`.
    """
    from ..checkpoints import create_fused_model
    from ..deploy.export import export_onnx, verify_onnx
    from ..utils import count_params

    prepared, results = {}, []
    bar = progress(len(names), "build + export")
    for name in names:
        meta: BenchModel = bench_model(name)
        res = ModelResult(name=name, label=meta.label, family=meta.family)
        results.append(res)
        bar.set_postfix_str(name)
        try:
            model = create_fused_model(name)
            res.params = count_params(model)
            path = export_onnx(model, workdir / f"{name}.onnx", check_res)
            # recorded, not enforced here (``regla export`` enforces it): inf tolerance never raises
            res.onnx_max_abs_diff = verify_onnx(model, path, [(1, 3, check_res, check_res)], atol=float("inf"),
                                                threads=threads)
            prepared[name] = (model, {"ort": path})
        except Exception as e:  # noqa: BLE001 - one broken model must not stop the comparison
            res.error = f"{type(e).__name__}: {e}"
            bar.update(1)
            continue
        if "ort-int8" in backends:
            try:
                out = workdir / f"{name}_int8.onnx"
                seconds = quantize_ort(model, path, out, calib, check_res)
                prepared[name][1]["ort-int8"] = out
                res.prepare_s.setdefault("ort-int8", {})[check_res] = seconds
            except Exception as e:  # noqa: BLE001
                res.backend_errors["ort-int8"] = why(e)
        bar.update(1)
    bar.close()
    return prepared, results


def why(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def measure_resolution(res: int, prepared: dict, results: dict[str, ModelResult], cfg: BenchConfig,
                       calib: Calibration | None = None) -> None:
    """MACs, runners of every backend (compile, lowering), warm-up and interleaved timing at one resolution.

    A backend that cannot build or run a model records why in ``backend_errors`` and the others go on.
    """
    from ..utils import count_macs

    shape = (1, 3, res, res)
    runners, estimates = {}, {}
    calib = calib or Calibration(cfg.calib, cfg.calib_images)
    bar = progress(len(prepared) * len(cfg.backends), f"{res}px build + warm-up")
    for name, (model, paths) in prepared.items():
        r = results[name]
        try:
            r.macs[res] = count_macs(model, res)
        except Exception as e:  # noqa: BLE001
            r.error = f"at {res}px: {why(e)}"
            bar.update(len(cfg.backends))
            continue
        for backend in sorted(cfg.backends, key=BACKENDS.index):  # eager first: compile reuses its layout
            bar.set_postfix_str(f"{name} {backend}")
            if backend in r.backend_errors:
                bar.update(1)
                continue
            try:
                built = build(backend, model, paths, shape, cfg.threads, cfg.warmup, calib,
                              channels_last=r.eager_channels_last.get(res, False))
                warm = built.warm
                if warm is None:
                    built.run()
                    warm = time_runs(built.run, cfg.warmup)
                key = f"{name}|{backend}"
                runners[key], estimates[key] = built.run, _median(warm)
                if backend == "eager":
                    r.eager_channels_last[res] = bool(built.channels_last)
                if built.prepare_s:
                    r.prepare_s.setdefault(backend, {})[res] = built.prepare_s
            except Exception as e:  # noqa: BLE001 - reported per model and backend; the run goes on
                r.backend_errors[backend] = f"at {res}px: {why(e)}"
            bar.update(1)
    bar.close()
    runs = {k: runs_for(estimates[k], cfg.target_s, cfg.min_runs, cfg.max_runs, cfg.rounds) for k in runners}
    bar = progress(len(runners) * cfg.rounds, f"{res}px timing ({cfg.rounds} rounds)")
    times = interleaved(runners, runs, cfg.rounds, on_step=lambda key: bar.update(1), estimates=estimates)
    bar.close()
    for key, ts in times.items():
        name, backend = key.split("|")
        st = summarize(ts).as_dict()
        share = runs[key] // cfg.rounds
        st["round_medians_ms"] = [round(1e3 * _median(ts[i:i + share]), 4) for i in range(0, len(ts), share)]
        results[name].latency.setdefault(backend, {})[res] = st
    del runners  # frees the sessions, compiled graphs and programs of this resolution


def _median(ts: Sequence[float]) -> float:
    return float(np.median(ts))


def probe_memory(prepared: dict, results: dict[str, ModelResult], cfg: BenchConfig) -> None:
    """Peak ONNX Runtime memory per model and resolution, each model in a fresh process (see ``memprobe``)."""
    script = Path(__file__).with_name("memprobe.py")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    bar = progress(len(prepared), "memory")
    for name, (_, paths) in prepared.items():
        bar.set_postfix_str(name)
        cmd = [sys.executable, str(script), str(paths["ort"]), str(cfg.threads), *map(str, cfg.resolutions)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=True)
            data = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].memory = {int(k): v for k, v in data.items()}
        except (subprocess.SubprocessError, ValueError, IndexError) as e:
            results[name].memory = {}
            results[name].error = (results[name].error or "") + f" memory probe failed: {e}"
        bar.update(1)
    bar.close()


def add_growth(results: Sequence[ModelResult], resolutions: Sequence[int]) -> None:
    """Fill each result's fitted growth exponent and, when both were measured, the 512 -> 1024 px ratio."""
    for r in results:
        for backend, per_res in r.latency.items():
            rs = [x for x in sorted(resolutions) if x in per_res]
            exp = fit_growth_exponent(rs, [per_res[x]["median_ms"] for x in rs])
            if exp is not None:
                r.growth_exponent[backend] = exp
            if 512 in per_res and 1024 in per_res:
                r.growth_512_1024[backend] = per_res[1024]["median_ms"] / per_res[512]["median_ms"]


def run_bench(cfg: BenchConfig, workdir: str | os.PathLike | None = None, command: str = "") -> dict:
    """Run the whole benchmark and return the JSON-ready result document (nothing is written here)."""
    import torch

    cfg.validate()
    threads = cfg.threads or physical_cores()
    cfg.threads = threads
    set_torch_threads(threads)
    started = dt.datetime.now(dt.timezone.utc)
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regla-bench-", dir=workdir) as tmp:
        calib = Calibration(cfg.calib, cfg.calib_images)
        with torch.inference_mode(False):
            prepared, results = prepare_models(cfg.models, Path(tmp), threads, min(cfg.resolutions), cfg.backends,
                                               calib)
        by_name = {r.name: r for r in results}
        for res in sorted(cfg.resolutions):
            measure_resolution(res, prepared, by_name, cfg, calib)
        if cfg.memory:
            probe_memory(prepared, by_name, cfg)
    add_growth(results, cfg.resolutions)
    machine = machine_info(threads)
    machine["loadavg_start"] = load_start
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "date_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "command": command,
        "config": {k: v for k, v in vars(cfg).items()},
        "machine": machine,
        "results": [result_to_json(r) for r in results],
    }


def result_to_json(r: ModelResult) -> dict:
    """A :class:`ModelResult` as plain JSON types (resolution keys become strings), with its published figure."""
    meta = bench_model(r.name)
    pub = meta.published
    return {
        "name": r.name,
        "label": r.label,
        "family": r.family,
        "params": r.params,
        "macs": {str(k): v for k, v in r.macs.items()},
        "latency_ms": {b: {str(k): v for k, v in d.items()} for b, d in r.latency.items()},
        "eager_layout": {str(k): ("channels_last" if v else "contiguous") for k, v in r.eager_channels_last.items()},
        "memory": {str(k): v for k, v in r.memory.items()},
        "onnx_max_abs_diff": r.onnx_max_abs_diff,
        "prepare_s": {b: {str(k): round(v, 2) for k, v in d.items()} for b, d in r.prepare_s.items()},
        "backend_errors": dict(r.backend_errors),
        "growth_exponent": r.growth_exponent,
        "growth_512_1024": r.growth_512_1024,
        "published_top1": None if pub is None else {"top1": pub.top1, "source": pub.source, "note": pub.note},
        "error": r.error,
    }
