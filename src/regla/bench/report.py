"""Turn a bench result document into a terminal table, CSV, JSON, Markdown and PNG plots."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from ..outputs import atomic_write_bytes, atomic_write_text
from .models import PAPERS

CSV_FIELDS = (
    "model", "label", "family", "params_m", "resolution", "gmacs", "backend", "layout", "median_ms", "p10_ms",
    "p25_ms", "p75_ms", "p90_ms", "iqr_ms", "n_runs", "peak_delta_mb", "peak_rss_mb", "growth_exponent",
    "growth_512_1024", "published_top1", "published_source", "threads",
)
BACKEND_NAMES = {"ort": "ONNX Runtime", "eager": "PyTorch eager"}


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
                    "backend": backend, "layout": r["eager_layout"].get(res, "") if backend == "eager" else "",
                    "median_ms": f"{st['median_ms']:.3f}", "p10_ms": f"{st['p10_ms']:.3f}",
                    "p25_ms": f"{st['p25_ms']:.3f}", "p75_ms": f"{st['p75_ms']:.3f}", "p90_ms": f"{st['p90_ms']:.3f}",
                    "iqr_ms": f"{st['iqr_ms']:.3f}", "n_runs": st["n"],
                    "peak_delta_mb": mem.get("peak_delta_mb", ""), "peak_rss_mb": mem.get("peak_rss_mb", ""),
                    "growth_exponent": _fmt(r["growth_exponent"].get(backend), ".3f", ""),
                    "growth_512_1024": _fmt(r["growth_512_1024"].get(backend), ".3f", ""),
                    "published_top1": pub.get("top1", ""), "published_source": pub.get("source", ""),
                    "threads": doc["machine"]["threads"],
                })
    return rows


def to_csv(doc: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(doc))
    return buf.getvalue()


def _cell(r: dict, backend: str, res: int) -> str:
    st = r["latency_ms"].get(backend, {}).get(str(res))
    if not st:
        return "-"
    spread = 100 * st["iqr_ms"] / st["median_ms"] if st["median_ms"] else 0.0
    tag = " cl" if backend == "eager" and r["eager_layout"].get(str(res)) == "channels_last" else ""
    return f"{st['median_ms']:.1f} ±{spread:.0f}%{tag}"


def table_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (latency cells: median and IQR as % of the median)."""
    resolutions = resolutions_of(doc)
    backends = [b for b in ("ort", "eager") if b in doc["config"]["backends"]]
    top = max(resolutions)
    header = ["Model", "Params (M)"] + [f"GMACs@{r}" for r in resolutions]
    header += [f"{'ORT' if b == 'ort' else 'Eager'}@{r} ms" for b in backends for r in resolutions]
    header += [f"Mem@{top} MB", "Exp. ORT", "Top-1 (pub.)"]
    if any(r["growth_512_1024"] for r in doc["results"]):
        header.insert(-1, "ORT 1024/512")
    rows = []
    for r in doc["results"]:
        if r["params"] is None:
            rows.append([r["label"]] + ["-"] * (len(header) - 1))
            continue
        pub = r["published_top1"]
        row = [r["label"], f"{r['params'] / 1e6:.2f}"]
        row += [_fmt(r["macs"][str(x)] / 1e9, ".2f") if str(x) in r["macs"] else "-" for x in resolutions]
        row += [_cell(r, b, x) for b in backends for x in resolutions]
        row += [_fmt(r["memory"].get(str(top), {}).get("peak_delta_mb"), ".1f"),
                _fmt(r["growth_exponent"].get("ort"), ".2f")]
        if "ORT 1024/512" in header:
            row.append(_fmt(r["growth_512_1024"].get("ort"), ".2f"))
        row.append(_fmt(pub["top1"], "g") if pub else "-")
        rows.append(row)
    return header, rows


def text_table(doc: dict) -> str:
    """Fixed-width table for the terminal."""
    header, rows = table_rows(doc)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(doc: dict) -> str:
    """The summary table in GitHub Markdown."""
    header, rows = table_rows(doc)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


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
            out.append((r["label"], ref["median_ms"] / st["median_ms"]))
    return out


def errors(doc: dict) -> list[str]:
    return [f"{r['name']}: {r['error']}" for r in doc["results"] if r.get("error")]


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
        f"- Software: torch {m['torch']}, onnxruntime {m['onnxruntime']}, timm {m['timm']}, Python {m['python']}",
        f"- Duration: {doc['duration_s']:.0f} s",
        "",
        "Latency: batch 1, fp32, fused models, median of the timed runs; `±` is the interquartile range as a "
        "percentage of the median; `cl` marks PyTorch runs that were faster in channels-last. GMACs counted with "
        "FlopCounterMode. Mem: extra resident memory of one ONNX Runtime run (weights excluded). Exp.: fitted "
        "exponent of latency vs pixel count (1.0 = linear in pixels). Top-1: published figures, not measured here.",
        "",
        markdown_table(doc),
        "",
    ]
    if reference:
        for res in resolutions_of(doc):
            ratios = latency_ratios(doc, reference, res)
            if ratios:
                lines += [f"ONNX Runtime latency of `{reference}` at {res} px as a ratio to each model "
                          "(below 1: faster):", "",
                          ", ".join(f"{label} {ratio:.2f}" for label, ratio in ratios), ""]
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
        "csv": atomic_write_text(out / "results.csv", to_csv(doc)),
    }
    names: list[str] = []
    if plots:
        from .plots import accuracy_vs_latency_png, latency_vs_resolution_png

        paths["latency_png"] = atomic_write_bytes(out / "latency_vs_resolution.png", latency_vs_resolution_png(doc))
        paths["accuracy_png"] = atomic_write_bytes(out / "accuracy_vs_latency.png", accuracy_vs_latency_png(doc))
        names = ["latency_vs_resolution.png", "accuracy_vs_latency.png"]
    paths["md"] = atomic_write_text(out / "results.md", summary_markdown(doc, reference, names))
    return paths
