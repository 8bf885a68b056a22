"""``regla bench --task det|seg``: the whole Mask R-CNN and Semantic FPN of ``regla det`` / ``regla seg`` (issue 12:
"the whole detector's and segmenter's latency at 512x512 and 1333x800"), one backbone after another, interleaved.

* ``det``: torchvision's Mask R-CNN as :func:`regla.dense.detector.build_detector` builds it with the COCO recipe
  (FPN 256, 81 classes, mmdet's heads), random weights, eval mode, the backbone fused where it has training-time
  branches (``timm.utils.reparameterize_model``), in eager PyTorch. Its transform is set to the timed size
  (``min_size`` / ``max_size`` = the shorter / longer side, so a WxH input is not rescaled; it is padded to a
  multiple of 32 as in COCO evaluation). Detections are forced: score threshold 0 and ``detections_per_img`` fixed
  (100, mmdet's test setting), so the RPN, the box head, NMS and the mask head on a fixed number of boxes (and their
  pasting into the image) are all in the time; the count is checked and recorded.
* ``seg``: the Semantic FPN (FPN 256, head 128, 150 classes; logits at 1/4 scale) with the fused backbone, in eager
  PyTorch (the faster memory layout, as ``regla bench`` picks it) and in ONNX Runtime when it exports (one
  dynamic-shape export per backbone, checked against PyTorch at every size; a failure is recorded and the run goes on).

Every model is built before the first timing; at each size the runners are timed in rounds with a rotating order
(:func:`regla.bench.measure.interleaved`). Results: ``<task>_results.json``, ``.csv``, ``.md`` and
``<task>_latency.png`` in the output folder.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..outputs import atomic_write_bytes, atomic_write_text
from ..utils.complexity import count_params
from .runner import machine_info, progress, why
from .writers import csv_text, markdown_table

TASKS = ("det", "seg")
DEFAULT_DENSE_BACKBONES = ("regla_m", "iformer_m", "repvit_m1_1", "repnext_m3")
DEFAULT_SIZES = ("512x512", "1333x800")
#: Detections per image the mask head runs on (mmdet's and torchvision's ``max_per_img`` at test time).
DETECTIONS = 100
DET_CLASSES = 81  # COCO's 80 + background
SEG_CLASSES = 150  # ADE20K
SIDE_RANGE = (32, 4096)
SEG_BACKENDS = ("eager", "ort")
CSV_FIELDS = ("task", "backbone", "label", "family", "backend", "size", "width", "height", "params_m", "fused",
              "detections", "layout", "median_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms", "iqr_ms", "n_runs",
              "onnx_max_abs_diff", "threads", "error")


@dataclass
class DenseResult:
    """One timed model: backbone, backend and size, with its latency statistics (ms) or why it could not run."""

    task: str
    backbone: str
    label: str
    family: str
    backend: str
    size: str
    params: int | None = None
    fused: bool = False
    detections: int | None = None
    layout: str | None = None
    onnx_max_abs_diff: float | None = None
    latency: dict = field(default_factory=dict)
    error: str | None = None


def parse_size(text: str) -> tuple[int, int]:
    """``"1333x800"`` -> ``(1333, 800)`` (width, height); a UsageError naming the value otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if m is None:
        raise UsageError(f"--sizes {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 512x512 or 1333x800")
    w, h = int(m.group(1)), int(m.group(2))
    lo, hi = SIDE_RANGE
    if not (lo <= w <= hi and lo <= h <= hi):
        raise UsageError(f"--sizes {text!r}: width and height must be {lo}..{hi} px")
    return w, h


def check_inputs(task: str, backbones: Sequence[str] | None, sizes: Sequence[str] | None,
                 backends: Sequence[str] = SEG_BACKENDS) -> tuple[list[str], list[tuple[int, int]], list[str]]:
    """The task's backbones, sizes (W, H) and backends, each checked before any model is built: a registered
    timm name, a WxH size in range, a backend this task times (det: eager; seg: eager and ort)."""
    from ..preflight import require_model

    if task not in TASKS:
        raise UsageError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    names = list(dict.fromkeys(backbones or DEFAULT_DENSE_BACKBONES))
    for name in names:
        require_model(name, "--dense-backbones")
    parsed = list(dict.fromkeys(parse_size(s) for s in (sizes or DEFAULT_SIZES)))
    other = [b for b in backends if b not in SEG_BACKENDS]
    if other:
        raise UsageError(f"--backends {' '.join(other)}: --task {task} times eager (det, seg) and ort (seg) only")
    if task == "det":
        return names, parsed, ["eager"]  # torchvision's Mask R-CNN in PyTorch, as users run it
    return names, parsed, [b for b in SEG_BACKENDS if b in backends]


def _fuse(body: nn.Module) -> bool:
    """Fuse the backbone's training-time branches in place; whether it had any."""
    from timm.utils import reparameterize_model

    fusable = any(hasattr(m, "reparameterize") or hasattr(m, "fuse") for m in body.modules() if m is not body)
    reparameterize_model(body.eval(), inplace=True)
    return fusable


def build_det(backbone: str) -> tuple[nn.Module, bool]:
    """Mask R-CNN with the COCO recipe's settings around ``backbone`` (random weights, fused, eval), detections
    forced: score threshold 0, :data:`DETECTIONS` per image. Returns the model and whether the backbone fused."""
    from ..dense.config import DET_SCHEMA
    from ..dense.detector import build_detector

    cfg = DET_SCHEMA.build(None, base={"backbone": backbone, "detections_per_img": DETECTIONS})
    model, _ = build_detector(cfg, DET_CLASSES, log=False)
    model.roi_heads.score_thresh = 0.0
    fused = _fuse(model.backbone.body)
    return model.eval(), fused


def build_seg(backbone: str) -> tuple[nn.Module, bool]:
    """Semantic FPN with the ADE20K recipe's settings around ``backbone`` (random weights, fused, eval)."""
    from ..dense.config import SEG_SCHEMA
    from ..dense.segmenter import build_segmenter

    cfg = SEG_SCHEMA.build(None, base={"backbone": backbone})
    model, _ = build_segmenter(cfg, SEG_CLASSES, log=False)
    fused = _fuse(model.body)
    return model.eval(), fused


def det_runner(model: nn.Module, w: int, h: int, seed: int = 0):
    """A runner of one whole-detector forward on a fixed random W x H image (the transform set to that size)."""
    model.transform.min_size, model.transform.max_size = (min(w, h),), max(w, h)
    image = [torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))]

    def run() -> Any:
        with torch.inference_mode():
            return model(image)

    return run


def _build_all(task: str, names: Sequence[str], backends: Sequence[str], sizes: Sequence[tuple[int, int]],
               workdir: Path, results: dict) -> dict:
    """Every model (and, for ``ort``, its ONNX file) before the first timing: ``{backbone: (model, fused, onnx)}``.
    A model that fails to build or export records why in its rows; a backbone that cannot be a dense backbone at all
    (no ``features_only``) is the user's input: a UsageError."""
    from .models import bench_model

    models = {}
    bar = progress(len(names), f"build {task}")
    for name in names:
        bar.set_postfix_str(name)
        meta = bench_model(name)
        for w, h in sizes:
            for backend in backends:
                results[(name, backend, f"{w}x{h}")] = DenseResult(task, name, meta.label, meta.family, backend,
                                                                   f"{w}x{h}")
        try:
            model, fused = build_det(name) if task == "det" else build_seg(name)
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 - one broken model must not stop the comparison
            _fail(results, name, None, why(e))
            bar.update(1)
            continue
        for r in results.values():
            if r.backbone == name:
                r.params, r.fused = count_params(model), fused
        onnx = _export(model, workdir / f"{name}_{task}.onnx", sizes[0], results, name) if "ort" in backends else None
        models[name] = (model, fused, onnx)
        bar.update(1)
    bar.close()
    return models


def _fail(results: dict, name: str, backend: str | None, why: str) -> None:
    for r in results.values():
        if r.backbone == name and backend in (None, r.backend):
            r.error = why


def _runners_at(task: str, models: dict, backends: Sequence[str], w: int, h: int, threads: int, warmup: int,
                results: dict) -> tuple[dict, dict]:
    """The runners of one size, warmed up (``warmup`` runs; for eager seg per memory layout, the faster kept), and
    the warm-up medians as estimates."""
    from .measure import pick_eager_layout, time_runs

    runners, estimates = {}, {}
    for name, (model, _, onnx) in models.items():
        for backend in backends:
            key = (name, backend, f"{w}x{h}")
            r = results[key]
            if r.error is not None:
                continue
            try:
                if task == "det":
                    run = det_runner(model, w, h)
                    r.detections = len(run()[0]["boxes"])
                    warm = time_runs(run, max(1, warmup - 1))
                elif backend == "eager":
                    run, channels_last, warm = pick_eager_layout(model, (1, 3, h, w), warmup)
                    r.layout = "channels_last" if channels_last else "contiguous"
                else:
                    run = _ort(model, onnx, w, h, threads, r)
                    warm = time_runs(run, max(1, warmup))
                runners[key], estimates[key] = run, float(np.median(warm))
            except Exception as e:  # noqa: BLE001
                r.error = why(e)
    return runners, estimates


def _export(model: nn.Module, path: Path, size: tuple[int, int], results: dict, name: str) -> Path | None:
    """The segmenter as ONNX with dynamic height and width; on failure every ``ort`` row of ``name`` says why."""
    from ..deploy.export import export_onnx

    try:
        return export_onnx(model, path, (size[1], size[0]), dynamic=True)
    except Exception as e:  # noqa: BLE001 - a model ONNX cannot take: recorded, eager still timed
        _fail(results, name, "ort", f"ONNX export: {why(e)}")
        return None


def _ort(model: nn.Module, path: Path, w: int, h: int, threads: int, r: DenseResult):
    """An ONNX Runtime runner at W x H, checked once against PyTorch (the largest difference recorded)."""
    from ..deploy.export import ONNX_INPUT, ort_session

    sess = ort_session(path, threads)
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    model.to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        ref = model(x).numpy()
    feed = {ONNX_INPUT: x.numpy()}
    out = sess.run(None, feed)[0]
    r.onnx_max_abs_diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
    return lambda: sess.run(None, feed)


def run_dense_bench(task: str, backbones: Sequence[str], sizes: Sequence[tuple[int, int]],
                    backends: Sequence[str], threads: int = 0, warmup: int = 3, min_runs: int = 10,
                    max_runs: int = 100, target_s: float = 1.0, rounds: int = 5, command: str = "") -> dict:
    """Build every model, then at each size warm up and time every runner in interleaved rounds; the result document
    (``results``: one row per backbone, backend and size)."""
    from .measure import interleaved, physical_cores, runs_for, set_torch_threads, summarize

    threads = threads or physical_cores()
    set_torch_threads(threads)
    started = time.perf_counter()
    results: dict[tuple[str, str, str], DenseResult] = {}
    with tempfile.TemporaryDirectory(prefix=f"regla-{task}-bench-") as tmp:
        models = _build_all(task, backbones, backends, sizes, Path(tmp), results)
        for w, h in sizes:
            runners, estimates = _runners_at(task, models, backends, w, h, threads, warmup, results)
            if not runners:
                continue
            runs = {k: runs_for(estimates[k], target_s, min_runs, max_runs, rounds) for k in runners}
            bar = progress(rounds * len(runners), f"time {w}x{h}")
            times = interleaved(runners, runs, rounds, on_step=lambda _k, b=bar: b.update(1), estimates=estimates)
            bar.close()
            for key, ts in times.items():
                results[key].latency = summarize(ts).as_dict()
    return {
        "task": task, "command": command, "sizes": [f"{w}x{h}" for w, h in sizes], "backbones": list(backbones),
        "backends": list(backends), "threads": threads, "rounds": rounds,
        "detections_per_img": DETECTIONS if task == "det" else None,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - started, "machine": machine_info(threads),
        "results": [asdict(r) for r in results.values()],
    }


def _cell(r: dict) -> str:
    lat = r["latency"]
    if not lat:
        return "failed" if r["error"] else "-"
    return f"{lat['median_ms']:.0f} ({lat['p10_ms']:.0f}-{lat['p90_ms']:.0f})"


def dense_markdown(doc: dict) -> str:
    """One row per backbone and backend, one column per size: median latency (p10-p90) in ms; failures below."""
    sizes = doc["sizes"]
    per_row: dict[tuple[str, str], dict[str, dict]] = {}
    for r in doc["results"]:
        per_row.setdefault((r["backbone"], r["backend"]), {})[r["size"]] = r
    header = ["backbone", "backend", "params (M)", "fused", *(f"{s} median (p10-p90) ms" for s in sizes)]
    rows, notes = [], []
    for (_, backend), per in per_row.items():
        first = next(iter(per.values()))
        params = f"{first['params'] / 1e6:.1f}" if first["params"] else "-"
        rows.append([first["label"], backend, params, "yes" if first["fused"] else "no",
                     *(_cell(per[s]) if s in per else "-" for s in sizes)])
        for s, r in per.items():
            if r["error"]:
                notes.append(f"* {r['label']} {backend} {s}: {r['error']}")
            elif r["detections"] is not None and r["detections"] != doc["detections_per_img"]:
                notes.append(f"* {r['label']} {s}: {r['detections']} detections, not {doc['detections_per_img']}")
    return markdown_table(header, rows, notes=notes)


def csv_rows(doc: dict) -> list[dict]:
    """One row per backbone, backend and size (long format)."""
    rows = []
    for r in doc["results"]:
        w, h = r["size"].split("x")
        lat = r["latency"]
        rows.append({
            "task": r["task"], "backbone": r["backbone"], "label": r["label"], "family": r["family"],
            "backend": r["backend"], "size": r["size"], "width": w, "height": h,
            "params_m": f"{r['params'] / 1e6:.3f}" if r["params"] else "", "fused": r["fused"],
            "detections": "" if r["detections"] is None else r["detections"], "layout": r["layout"] or "",
            **{k: f"{lat[k]:.3f}" if lat else "" for k in ("median_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms",
                                                           "iqr_ms")},
            "n_runs": lat.get("n", ""), "onnx_max_abs_diff": "" if r["onnx_max_abs_diff"] is None
            else f"{r['onnx_max_abs_diff']:.3g}", "threads": doc["threads"], "error": r["error"] or ""})
    return rows


def _note(doc: dict) -> str:
    m = doc["machine"]
    what = ("Mask R-CNN (FPN 256, 81 classes), eager PyTorch, score threshold 0 and "
            f"{doc['detections_per_img']} detections per image" if doc["task"] == "det"
            else "Semantic FPN (FPN 256, head 128, 150 classes)")
    return (f"{what}; batch 1, random weights, backbone fused where it has branches to fuse; {m['cpu']}, "
            f"{doc['threads']} thread(s), torch {m['torch']}, ONNX Runtime {m['onnxruntime']}; {doc['date']}; "
            f"`{doc['command']}`")


def result_files(task: str) -> tuple[str, str, str, str]:
    """What :func:`write_dense_outputs` writes for ``task``: its JSON document first, then CSV, Markdown, PNG."""
    return f"{task}_results.json", f"{task}_results.csv", f"{task}_results.md", f"{task}_latency.png"


def write_dense_outputs(doc: dict, folder: Path, plots: bool = True) -> list[Path]:
    """``<task>_results.json``, ``.csv``, ``.md`` and ``<task>_latency.png`` in ``folder`` (each atomically)."""
    js, csv, md, png = result_files(doc["task"])
    paths = [atomic_write_text(folder / js, json.dumps(doc, indent=2) + "\n"),
             atomic_write_text(folder / csv, csv_text(CSV_FIELDS, csv_rows(doc))),
             atomic_write_text(folder / md, dense_markdown(doc) + "\n\n" + _note(doc) + "\n")]
    if plots and any(r["latency"] for r in doc["results"]):
        from .plots import dense_latency_png

        paths.append(atomic_write_bytes(folder / png, dense_latency_png(doc)))
    return paths
