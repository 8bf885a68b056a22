"""Turn a bench result document into a terminal table, CSV, JSON, Markdown and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..outputs import atomic_write_bytes, atomic_write_text
from .backends import BACKENDS, INT8, LABELS, NAMES
from .models import PAPERS
from .writers import csv_text, markdown_table

CSV_FIELDS = (
    "model", "label", "family", "params_m", "resolution", "gmacs", "backend", "layout", "median_ms", "p10_ms",
    "p25_ms", "p75_ms", "p90_ms", "iqr_ms", "n_runs", "peak_delta_mb", "peak_rss_mb", "growth_exponent",
    "growth_512_1024", "prepare_s", "published_top1", "published_source", "threads",
)
BACKEND_NAMES = NAMES


def backends_of(doc: dict) -> list[str]:
    """The run's backends in the canonical order (fp32 before int8, eager before compile)."""
    return [b for b in BACKENDS if b in doc["config"]["backends"]]


def _fmt(x: float | None, spec: str = ".1f", missing: str = "-") -> str:
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def resolutions_of(doc: dict) -> list[int]:
    return sorted(int(r) for r in doc["config"]["resolutions"])


def csv_rows(doc: dict) -> list[dict]:
    """One row per model, resolution and backend (long format)."""
    rows = []
    for r in doc["results"]:
        pub = r["published_top1"] or {}
        for backend, per_res in r["latency_ms"].items():
            for res, st in sorted(per_res.items(), key=lambda kv: int(kv[0])):
                mem = r["memory"].get(res, {})
                rows.append({
                    "model": r["name"], "label": r["label"], "family": r["family"],
                    "params_m": _fmt(r["params"] / 1e6 if r["params"] else None, ".3f", ""),
                    "resolution": res, "gmacs": _fmt(r["macs"].get(res, 0) / 1e9 if res in r["macs"] else None,
                                                     ".3f", ""),
                    "backend": backend,
                    "layout": r["eager_layout"].get(res, "") if backend in ("eager", "compile") else "",
                    "median_ms": f"{st['median_ms']:.3f}", "p10_ms": f"{st['p10_ms']:.3f}",
                    "p25_ms": f"{st['p25_ms']:.3f}", "p75_ms": f"{st['p75_ms']:.3f}", "p90_ms": f"{st['p90_ms']:.3f}",
                    "iqr_ms": f"{st['iqr_ms']:.3f}", "n_runs": st["n"],
                    "peak_delta_mb": mem.get("peak_delta_mb", ""), "peak_rss_mb": mem.get("peak_rss_mb", ""),
                    "growth_exponent": _fmt(r["growth_exponent"].get(backend), ".3f", ""),
                    "growth_512_1024": _fmt(r["growth_512_1024"].get(backend), ".3f", ""),
                    "prepare_s": _fmt(r.get("prepare_s", {}).get(backend, {}).get(res), ".2f", ""),
                    "published_top1": pub.get("top1", ""), "published_source": pub.get("source", ""),
                    "threads": doc["machine"]["threads"],
                })
    return rows


def _cell(r: dict, backend: str, res: int, notes: dict[str, int]) -> str:
    st = r["latency_ms"].get(backend, {}).get(str(res))
    if not st:
        why = r.get("backend_errors", {}).get(backend)
        if not why:
            return "-"
        key = f"{r['label']}, {backend}: {why}"
        return f"failed [{notes.setdefault(key, len(notes) + 1)}]"
    spread = 100 * st["iqr_ms"] / st["median_ms"] if st["median_ms"] else 0.0
    tag = " cl" if backend in ("eager", "compile") and r["eager_layout"].get(str(res)) == "channels_last" else ""
    return f"{st['median_ms']:.1f} ±{spread:.0f}%{tag}"


def table_rows(doc: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and notes of the summary table (latency cells: median and IQR as % of the median).

    A backend that could not run a model shows ``failed [n]``; note ``n`` names the model, the backend and why.
    """
    resolutions = resolutions_of(doc)
    backends = backends_of(doc)
    top = max(resolutions)
    header = ["Model", "Params (M)"] + [f"GMACs@{r}" for r in resolutions]
    header += [f"{LABELS[b]}@{r} ms" for b in backends for r in resolutions]
    if "compile" in backends:
        header += [f"Compile s@{r}" for r in resolutions]
    mem = any(r["memory"] for r in doc["results"])
    growth = len(resolutions) > 1 and "ort" in backends
    header += ([f"Mem@{top} MB"] if mem else []) + (["Exp. ORT"] if growth else []) + ["Top-1 (pub.)"]
    if any(r["growth_512_1024"] for r in doc["results"]):
        header.insert(-1, "ORT 1024/512")
    rows, notes = [], {}
    for r in doc["results"]:
        if r["params"] is None:
            why = notes.setdefault(f"{r['label']}: {r['error']}", len(notes) + 1)
            rows.append([r["label"], f"failed [{why}]"] + ["-"] * (len(header) - 2))
            continue
        pub = r["published_top1"]
        row = [r["label"], f"{r['params'] / 1e6:.2f}"]
        row += [_fmt(r["macs"][str(x)] / 1e9, ".2f") if str(x) in r["macs"] else "-" for x in resolutions]
        row += [_cell(r, b, x, notes) for b in backends for x in resolutions]
        if "compile" in backends:
            row += [_fmt(r.get("prepare_s", {}).get("compile", {}).get(str(x)), ".1f") for x in resolutions]
        row += [_fmt(r["memory"].get(str(top), {}).get("peak_delta_mb"), ".1f")] if mem else []
        row += [_fmt(r["growth_exponent"].get("ort"), ".2f")] if growth else []
        if "ORT 1024/512" in header:
            row.append(_fmt(r["growth_512_1024"].get("ort"), ".2f"))
        row.append(_fmt(pub["top1"], "g") if pub else "-")
        rows.append(row)
    return header, rows, [f"[{n}] {text}" for text, n in notes.items()]


def text_table(doc: dict) -> str:
    """Fixed-width table for the terminal."""
    header, rows, notes = table_rows(doc)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows), *notes])


def summary_table(doc: dict) -> str:
    """The summary table in GitHub Markdown."""
    header, rows, notes = table_rows(doc)
    return markdown_table(header, rows, right_from=1, notes=[f"- {n}" for n in notes])


def paired_ratio(ref: dict, other: dict) -> float:
    """Median over rounds of ``t(ref) / t(other)`` taken round by round (pairs what ran close together in time);
    the ratio of the overall medians when the rounds do not pair up."""
    a, b = ref.get("round_medians_ms") or [], other.get("round_medians_ms") or []
    if a and len(a) == len(b) and all(x > 0 for x in b):
        return float(np.median([x / y for x, y in zip(a, b, strict=True)]))
    return ref["median_ms"] / other["median_ms"]


def latency_ratios(doc: dict, reference: str, res: int, backend: str = "ort") -> list[tuple[str, float]]:
    """``t(reference) / t(other)`` at ``res`` for every other measured model (below 1: reference is faster)."""
    by = {r["name"]: r for r in doc["results"]}
    ref = by.get(reference, {}).get("latency_ms", {}).get(backend, {}).get(str(res))
    if not ref:
        return []
    out = []
    for r in doc["results"]:
        st = r["latency_ms"].get(backend, {}).get(str(res))
        if r["name"] != reference and st:
            out.append((r["label"], paired_ratio(ref, st)))
    return out


def int8_speedups(doc: dict) -> list[str]:
    """One line per model and resolution: each int8 backend's speed-up over its own fp32 runtime (paired rounds)."""
    lines = []
    for r in doc["results"]:
        for res in resolutions_of(doc):
            parts = []
            for q in INT8:
                fp = q.removesuffix("-int8")
                a, b = (r["latency_ms"].get(k, {}).get(str(res)) for k in (fp, q))
                if a and b:
                    parts.append(f"{LABELS[q]} {paired_ratio(a, b):.2f}x")
            if parts:
                lines.append(f"int8 speed-up over fp32, {r['label']} at {res} px: " + ", ".join(parts))
    return lines


def compile_vs_ort(doc: dict) -> list[str]:
    """One line per model and resolution: torch.compile latency as a multiple of ONNX Runtime fp32's."""
    lines = []
    for r in doc["results"]:
        for res in resolutions_of(doc):
            a, b = (r["latency_ms"].get(k, {}).get(str(res)) for k in ("compile", "ort"))
            if a and b:
                lines.append(f"compile / ORT fp32, {r['label']} at {res} px: {paired_ratio(a, b):.2f}")
    return lines


def errors(doc: dict) -> list[str]:
    """Every model-level error and every backend that could not run a model, one line each."""
    out = [f"{r['name']}: {r['error']}" for r in doc["results"] if r.get("error")]
    out += [f"{r['name']}, backend {b}: {why}"
            for r in doc["results"] for b, why in r.get("backend_errors", {}).items()]
    return out


def summary_markdown(doc: dict, reference: str | None, plots: Sequence[str]) -> str:
    """A self-contained Markdown report of one run: machine, command, table, ratios, sources, plots."""
    m = doc["machine"]
    lines = [
        f"# regla bench, {doc['date_utc']}",
        "",
        f"- Command: `{doc['command']}`",
        f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['physical_cores']} physical cores; "
        f"**threads: {m['threads']}** (ONNX Runtime intra-op and PyTorch); load average at start "
        f"{_fmt(m['loadavg_start'][0], '.2f') if m.get('loadavg_start') else '-'}, at end "
        f"{_fmt(m['loadavg_end'][0], '.2f') if m.get('loadavg_end') else '-'}",
        f"- Software: torch {m['torch']}, onnxruntime {m['onnxruntime']}, executorch {m.get('executorch')}, "
        f"timm {m['timm']}, Python {m['python']}",
        f"- Backends: {', '.join(f'{LABELS[b]} = {NAMES[b]}' for b in backends_of(doc))}",
        f"- Duration: {doc['duration_s']:.0f} s",
        "",
        "Latency: batch 1, fused models, median of the timed runs; `±` is the interquartile range as a "
        "percentage of the median; `cl` marks PyTorch runs that were faster in channels-last (compile uses eager's "
        "layout). Compile s: torch.compile's first call (trace, lower, build), not in the latency. int8 backends are "
        "calibrated on real images (`--calib`, default the digits demo set). GMACs counted with "
        "FlopCounterMode. Mem: extra resident memory of one ONNX Runtime run (weights excluded). Exp.: fitted "
        "exponent of latency vs pixel count (1.0 = linear in pixels). Top-1: published figures, not measured here.",
        "",
        summary_table(doc),
        "",
    ]
    if reference:
        for backend in backends_of(doc):
            for res in resolutions_of(doc):
                ratios = latency_ratios(doc, reference, res, backend)
                if ratios:
                    lines += [f"{NAMES[backend]} latency of `{reference}` at {res} px as a ratio to each model "
                              "(median of per-round ratios; below 1: faster):", "",
                              ", ".join(f"{label} {ratio:.2f}" for label, ratio in ratios), ""]
    extra = int8_speedups(doc) + compile_vs_ort(doc)
    if extra:
        lines += [f"- {x}" for x in extra] + [""]
    lines += ["Published Top-1 sources (ImageNet-1K, no distillation):", ""]
    for r in doc["results"]:
        pub = r["published_top1"]
        if pub:
            note = f" ({pub['note']})" if pub["note"] else ""
            lines.append(f"- {r['label']}: {pub['top1']:g} % — {pub['source']}{note}")
    lines += ["", "Papers: " + "; ".join(f"{k}: {v}" for k, v in PAPERS.items()) + ".", ""]
    errs = errors(doc)
    if errs:
        lines += ["Problems:", ""] + [f"- {e}" for e in errs] + [""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_outputs(doc: dict, out_dir: str | Path, reference: str | None = "regla_m",
                  plots: bool = True) -> dict[str, Path]:
    """Write results.json, results.csv, results.md and the PNG plots into ``out_dir`` (each atomically).

    Each file replaces only an earlier file of its name; other files in ``out_dir`` are left alone. The folder is
    created if needed; a write failure is a :mod:`regla.errors` type naming the file (see :mod:`regla.outputs`).
    """
    out = Path(out_dir)
    paths = {
        "json": atomic_write_text(out / "results.json", json.dumps(doc, indent=2) + "\n"),
        "csv": atomic_write_text(out / "results.csv", csv_text(CSV_FIELDS, csv_rows(doc))),
    }
    names: list[str] = []
    if plots:
        from .plots import accuracy_vs_latency_png, backends_png, latency_vs_resolution_png

        paths["latency_png"] = atomic_write_bytes(out / "latency_vs_resolution.png", latency_vs_resolution_png(doc))
        paths["accuracy_png"] = atomic_write_bytes(out / "accuracy_vs_latency.png", accuracy_vs_latency_png(doc))
        names = ["latency_vs_resolution.png", "accuracy_vs_latency.png"]
        if len(doc["config"]["backends"]) > 1:
            paths["backends_png"] = atomic_write_bytes(out / "latency_by_backend.png", backends_png(doc))
            names.append("latency_by_backend.png")
    paths["md"] = atomic_write_text(out / "results.md", summary_markdown(doc, reference, names))
    return paths
