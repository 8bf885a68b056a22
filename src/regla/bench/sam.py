"""``regla bench --task sam``: SAM image encoders (and the mask decoder) in ONNX Runtime on CPU, interleaved.

Each encoder of :mod:`regla.sam` is built with random weights, fused, exported to ONNX at the given side
(1024 by default, SAM's) and timed at batch 1 with a fixed intra-op thread count (1 by default, the issue's probe);
the prompt encoder + mask decoder (``SamOnnxModel``, one box) is timed beside them. The runs are split into rounds
with a rotating order (:func:`regla.bench.measure.interleaved`), so drift of a shared machine hits every model alike.
Results: a printed Markdown table, ``sam_results.json``, ``sam_results.md`` and ``sam_latency.png`` in the output
folder.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..outputs import atomic_write_bytes, atomic_write_text
from ..utils.complexity import count_params
from .measure import interleaved, summarize, time_runs
from .runner import machine_info
from .writers import markdown_table

#: The issue's comparison: ReGLA-T/M-SAM in both 1/16 variants, RepViT-SAM, MobileSAM's TinyViT, SAM ViT-B.
DEFAULT_SAM_ENCODERS = ("regla_t_sam:stride1", "regla_t_sam:fuse", "regla_m_sam:stride1", "regla_m_sam:fuse",
                        "repvit_sam", "mobile_sam", "sam_vit_b")
DECODER = "mask_decoder"


@dataclass
class SamBenchResult:
    """One timed ONNX model: its label, parameters and latency statistics (ms)."""

    label: str
    params: int
    export_s: float
    backend: str = "ort"
    latency: dict = field(default_factory=dict)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"regla_m_sam:stride1"`` -> ``("regla_m_sam", "stride1")``; a name alone takes the default mode."""
    from ..sam.build import encoder_names
    from ..sam.encoders import DEFAULT_LAST_STAGE, LAST_STAGE_MODES

    name, _, mode = spec.partition(":")
    if name not in encoder_names():
        raise UsageError(f"--sam-encoders {spec!r}: unknown encoder; expected one of {', '.join(encoder_names())}")
    if (mode and not name.startswith("regla_")) or (mode or DEFAULT_LAST_STAGE) not in LAST_STAGE_MODES:
        raise UsageError(f"--sam-encoders {spec!r}: ':{mode}' applies to regla_*_sam only, as one of "
                         f"{', '.join(LAST_STAGE_MODES)}")
    return name, mode or DEFAULT_LAST_STAGE


def _export_encoder(name: str, mode: str, img_size: int, folder: Path) -> tuple[Path, int, float, torch.nn.Module]:
    """The encoder's ONNX file (fused), its parameter count, the export time and the fused module."""
    from timm.utils import reparameterize_model

    from ..sam.build import build_image_encoder
    from ..sam.export import export_encoder_onnx

    encoder = build_image_encoder(name, img_size, mode).eval()
    params = count_params(encoder)
    t0 = time.perf_counter()
    path = folder / f"{name}_{mode}.onnx"
    export_encoder_onnx(encoder, path, verify=False)
    return path, params, time.perf_counter() - t0, reparameterize_model(encoder)


def _decoder_runner(img_size: int, folder: Path, threads: int):
    """Export ``SamOnnxModel`` (SAM's settings) and return (params, export s, a runner with one box prompt)."""
    from ..deploy.export import ort_session
    from ..sam.build import build_sam
    from ..sam.export import decoder_example, export_decoder_onnx

    sam = build_sam("regla_t_sam", img_size)  # the decoder does not depend on the encoder
    params = sum(p.numel() for m in (sam.prompt_encoder, sam.mask_decoder) for p in m.parameters())
    t0 = time.perf_counter()
    path = folder / "mask_decoder.onnx"
    export_decoder_onnx(sam, path, verify=False)
    export_s = time.perf_counter() - t0
    sess = ort_session(path, threads)
    feeds = {k: v.numpy() for k, v in decoder_example(sam, num_points=2, has_mask=False, orig_size=(768, 1024)).items()}
    feeds["point_labels"] = np.array([[2.0, 3.0]], np.float32)  # one box
    return params, export_s, lambda: sess.run(None, feeds)


def run_sam_bench(specs: Sequence[str], img_size: int = 1024, threads: int = 1, rounds: int = 3,
                  runs_per_round: int = 1, decoder: bool = True, eager: bool = False, command: str = "") -> dict:
    """Export and time every encoder in ``specs`` (and the decoder); returns the result document.

    ``eager``: also time each fused encoder in eager PyTorch (``torch.inference_mode``, the faster memory layout),
    in the same interleaved rounds, as rows labelled ``<encoder> [eager]``.
    """
    from ..deploy.export import ort_session
    from .measure import ort_runner, pick_eager_layout, set_torch_threads

    parsed = [parse_spec(s) for s in specs]
    if img_size % 16 or img_size < 64:
        raise UsageError(f"--resolutions {img_size}: SAM encoders need a multiple of 16, at least 64")
    started = time.perf_counter()
    results: dict[str, SamBenchResult] = {}
    runners, estimates = {}, {}
    with tempfile.TemporaryDirectory(prefix="regla-sam-bench-") as tmp:
        for name, mode in parsed:
            label = f"{name}:{mode}" if name.startswith("regla_") else name
            path, params, export_s, fused = _export_encoder(name, mode, img_size, Path(tmp))
            results[label] = SamBenchResult(label, params, export_s)
            runners[label] = ort_runner(ort_session(path, threads), (1, 3, img_size, img_size))
            estimates[label] = float(np.median(time_runs(runners[label], 1)))  # warm-up, also the estimate
            print(f"regla bench: {label}: exported in {export_s:.0f} s, first run {estimates[label]:.2f} s",
                  flush=True)
            if eager:
                set_torch_threads(threads)
                key = f"{label} [eager]"
                runners[key], _, warm = pick_eager_layout(fused, (1, 3, img_size, img_size), warmup=2)
                results[key] = SamBenchResult(key, params, 0.0, backend="eager")
                estimates[key] = float(np.median(warm))
        if decoder:
            params, export_s, run = _decoder_runner(img_size, Path(tmp), threads)
            results[DECODER] = SamBenchResult(DECODER, params, export_s)
            runners[DECODER] = run
            estimates[DECODER] = float(np.median(time_runs(run, 3)))
        runs = {k: rounds * runs_per_round * (20 if k == DECODER else 1) for k in runners}
        times = interleaved(runners, runs, rounds, estimates=estimates)
    for label, ts in times.items():
        results[label].latency = summarize(ts).as_dict()
    return {
        "task": "sam", "command": command, "img_size": img_size, "threads": threads, "rounds": rounds,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - started, "machine": machine_info(threads),
        "results": [asdict(r) for r in results.values()],
    }


def sam_markdown(doc: dict, reference: str = "repvit_sam") -> str:
    """The results as a Markdown table, with each encoder's speed-up over ``reference``."""
    refs = {r.get("backend", "ort"): r["latency"]["median_ms"] for r in doc["results"]
            if r["label"].split(" [")[0] == reference}
    header = ["model", "backend", "params (M)", "median (ms)", "p10-p90 (ms)", "runs", f"speed-up vs {reference}"]
    rows = []
    for r in doc["results"]:
        lat, backend = r["latency"], r.get("backend", "ort")
        ref = refs.get(backend)
        speedup = f"{ref / lat['median_ms']:.2f}x" if ref and r["label"] != DECODER else ""
        rows.append([r["label"], backend, f"{r['params'] / 1e6:.2f}", f"{lat['median_ms']:.0f}",
                     f"{lat['p10_ms']:.0f}-{lat['p90_ms']:.0f}", lat["n"], speedup])
    return markdown_table(header, rows)


#: What :func:`write_sam_outputs` writes: its JSON document first, then Markdown and PNG
RESULT_FILES = ("sam_results.json", "sam_results.md", "sam_latency.png")


def write_sam_outputs(doc: dict, folder: Path, plots: bool = True) -> list[Path]:
    """``sam_results.json``, ``sam_results.md`` and ``sam_latency.png`` in ``folder`` (each atomically)."""
    js, md, png = RESULT_FILES
    m = doc["machine"]
    note = (f"\n\n{doc['img_size']}x{doc['img_size']}, batch 1, ONNX Runtime {m['onnxruntime']} CPU, "
            f"{doc['threads']} thread(s), {m['cpu']}; {doc['date']}; `{doc['command']}`\n")
    paths = [atomic_write_text(folder / js, json.dumps(doc, indent=2)),
             atomic_write_text(folder / md, sam_markdown(doc) + note)]
    if plots:
        from .plots import sam_latency_png

        paths.append(atomic_write_bytes(folder / png, sam_latency_png(doc)))
    return paths
