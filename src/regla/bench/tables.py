"""``regla bench --tables RUN_DIR ...``: earlier runs' ``results.json`` laid out as one Markdown table per backend.

A benchmark at 224, 512 and 1024 px in six backends is long, so it is usually split into runs (one per resolution
set). This module merges those runs without timing anything: per backend, each model's median latency (± IQR as % of
the median) and the reference model's latency ratio at every resolution, the backend's preparation time (compile,
lowering, quantization), the 512 -> 1024 px growth, int8 speed-ups and compile / ONNX Runtime ratios.

Ratios inside one resolution are medians of per-round ratios (both sides ran in the same rounds of the same run).
Figures that combine two runs (the growth when 512 and 1024 px were timed in different runs) are ratios of the
runs' medians and are marked with a dagger (†): the runs may have seen different machine load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..data.errors import DataError
from ..data.rules import Rule, check_entry, finite_number, nonempty_str, positive_int, show
from ..errors import UsageError
from .backends import BACKENDS, INT8, NAMES
from .report import paired_ratio
from .writers import markdown_table


def _mapping_of(check: Any) -> Any:
    """A JSON object whose values all pass ``check``."""
    return lambda v: isinstance(v, Mapping) and all(check(x) for x in v.values())


def _optional_number(v: Any) -> bool:
    return v is None or finite_number(v)


#: The shape ``regla bench`` writes to ``results.json`` (what ``--tables`` reads), as rules; the tests are
#: generated from these tables.
RESULTS_RULES: dict[str, tuple[Rule, ...]] = {
    "file": (
        Rule("config", lambda v: isinstance(v, Mapping), "an object with 'resolutions' and 'backends'", []),
        Rule("results", lambda v: isinstance(v, list), "a list of per-model results", {}),
    ),
    "config": (
        Rule("resolutions", lambda v: isinstance(v, list) and all(positive_int(x) for x in v),
             "a list of resolutions in pixels (positive integers)", ["a"]),
        Rule("backends", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
             "a list of backend names", "ort"),
    ),
    "result": (
        Rule("name", nonempty_str, "the model's registered name", None),
        Rule("label", nonempty_str, "the model's display name", 3),
        Rule("family", lambda v: isinstance(v, str), "the model's family name", None),
        Rule("params", _optional_number, "the parameter count (a number, or null)", "many"),
        Rule("macs", _mapping_of(_optional_number), "{resolution: MACs}", [], required=False),
        Rule("latency_ms", _mapping_of(lambda v: isinstance(v, Mapping)),
             "{backend: {resolution: latency statistics}}", None, required=False),
        Rule("prepare_s", _mapping_of(_mapping_of(finite_number)), "{backend: {resolution: seconds}}", {"ort": 1},
             required=False),
        Rule("backend_errors", _mapping_of(lambda v: isinstance(v, str)), "{backend: why it failed}", ["x"],
             required=False),
    ),
    "latency": (
        Rule("median_ms", lambda v: finite_number(v) and v > 0, "the median latency in ms (a number > 0)", 0),
        Rule("iqr_ms", lambda v: finite_number(v) and v >= 0, "the interquartile range in ms (a number >= 0)", None),
        Rule("round_medians_ms", lambda v: isinstance(v, list) and all(finite_number(x) and x > 0 for x in v),
             "a list of per-round medians in ms (numbers > 0)", ["1"], required=False),
    ),
}


def validate_results(doc: Any, source: str) -> None:
    """:data:`RESULTS_RULES` on a parsed ``results.json``; a DataError naming the file, the model and the key."""
    check_entry(doc, RESULTS_RULES["file"], "the file", source)
    check_entry(doc["config"], RESULTS_RULES["config"], "config", source)
    for i, r in enumerate(doc["results"]):
        name = r.get("name") if isinstance(r, Mapping) else None
        where = f"result {name!r}" if nonempty_str(name) else f"result #{i}"
        check_entry(r, RESULTS_RULES["result"], where, source)
        for backend, per_res in r.get("latency_ms", {}).items():
            for res, stat in per_res.items():
                if not str(res).isdigit():
                    raise DataError(f"{source}: {where}: latency_ms[{backend!r}] has the resolution {show(res)}; "
                                    "expected resolutions in pixels ('224', '512' ...)")
                check_entry(stat, RESULTS_RULES["latency"], f"{where}: latency_ms[{backend!r}][{res!r}]", source)

CROSS_RUN = "†"


def load_runs(paths: list[str]) -> list[dict]:
    """The ``results.json`` of each run folder (or file), in the order given; a clear error for a missing one."""
    docs = []
    for p in paths:
        path = Path(p)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise UsageError(f"--tables {p}: no results.json there (give the --output folder of a `regla bench` run)")
        try:
            doc = json.loads(path.read_text())
        except ValueError as e:
            raise UsageError(f"--tables {p}: {path} is not a `regla bench` results.json ({e})") from None
        validate_results(doc, str(path))
        doc["_source"] = str(path)
        docs.append(doc)
    if not docs:
        raise UsageError("--tables: give at least one run folder")
    return docs


def merge_runs(docs: list[dict]) -> dict:
    """One document with every (model, backend, resolution) measurement; ``run`` records which run gave it.

    A measurement present in several runs is taken from the last run given (later runs override earlier ones).
    """
    models: dict[str, dict] = {}
    for i, doc in enumerate(docs):
        for r in doc["results"]:
            m = models.setdefault(r["name"], {"name": r["name"], "label": r["label"], "family": r["family"],
                                              "params": r["params"], "macs": {}, "latency": {}, "prepare_s": {},
                                              "errors": {}})
            m["params"] = m["params"] or r["params"]
            m["macs"].update(r.get("macs", {}))
            for backend, per_res in r.get("latency_ms", {}).items():
                for res, st in per_res.items():
                    m["latency"].setdefault(backend, {})[res] = {**st, "run": i}
            for backend, per_res in r.get("prepare_s", {}).items():
                m["prepare_s"].setdefault(backend, {}).update(per_res)
            for backend, why in r.get("backend_errors", {}).items():
                m["errors"][backend] = why
    resolutions = sorted({int(x) for d in docs for x in d["config"]["resolutions"]})
    backends = [b for b in BACKENDS if any(b in d["config"]["backends"] for d in docs)]
    return {"models": list(models.values()), "resolutions": resolutions, "backends": backends,
            "runs": [{"source": d["_source"], "date_utc": d.get("date_utc"), "command": d.get("command"),
                      "machine": d.get("machine", {})} for d in docs]}


def _stat(m: dict, backend: str, res: int) -> dict | None:
    return m["latency"].get(backend, {}).get(str(res))


def ratio(a: dict, b: dict) -> tuple[float, bool]:
    """``t(a) / t(b)``: paired by rounds when both come from one run; else the medians' ratio, flagged cross-run."""
    if a["run"] == b["run"]:
        return paired_ratio(a, b), False
    return a["median_ms"] / b["median_ms"], True


def _fmt_ratio(x: tuple[float, bool] | None, suffix: str = "") -> str:
    return "-" if x is None else f"{x[0]:.2f}{suffix}{CROSS_RUN if x[1] else ''}"


def _latency_cell(m: dict, backend: str, res: int) -> str:
    st = _stat(m, backend, res)
    if st:
        return f"{st['median_ms']:.1f} ±{100 * st['iqr_ms'] / st['median_ms']:.0f}%"
    return "failed" if backend in m["errors"] else "-"


def backend_table(merged: dict, backend: str, reference: str) -> str:
    """Markdown: per model, latency and ``t(reference)/t(model)`` at every resolution (+ preparation seconds)."""
    res_list = merged["resolutions"]
    ref = next((m for m in merged["models"] if m["name"] == reference), None)
    prep = any(backend in m["prepare_s"] for m in merged["models"])
    header = ["Model"]
    for res in res_list:
        header += [f"{res} px ms", f"t({ref['label'] if ref else reference})/t @{res}"]
    header += [f"prepare s @{res}" for res in res_list] if prep else []
    rows = []
    for m in merged["models"]:
        row = [m["label"]]
        for res in res_list:
            a = _stat(ref, backend, res) if ref else None
            b = _stat(m, backend, res)
            row += [_latency_cell(m, backend, res), _fmt_ratio(ratio(a, b) if a and b else None)]
        if prep:
            row += [f"{m['prepare_s'][backend][str(r)]:.0f}" if str(r) in m["prepare_s"].get(backend, {}) else "-"
                    for r in res_list]
        rows.append(row)
    failed = [f"- {m['label']}: {m['errors'][backend]}" for m in merged["models"] if backend in m["errors"]]
    return markdown_table(header, rows, right_from=1, notes=failed)


def growth_table(merged: dict, lo: int = 512, hi: int = 1024) -> str | None:
    """Markdown: ``t(hi) / t(lo)`` per model and backend (linear in pixels would be ``(hi/lo)**2``)."""
    if lo not in merged["resolutions"] or hi not in merged["resolutions"]:
        return None
    backends = merged["backends"]
    rows = []
    for m in merged["models"]:
        cells = [m["label"]]
        for b in backends:
            a, c = _stat(m, b, hi), _stat(m, b, lo)
            cells.append(_fmt_ratio(ratio(a, c) if a and c else None, "x"))
        rows.append(cells)
    return markdown_table(["Model", *(NAMES[b] for b in backends)], rows, right_from=1)


def pair_table(merged: dict, pairs: list[tuple[str, str, str]]) -> str | None:
    """Markdown: ``t(a)/t(b)`` per model and resolution for each (title, backend a, backend b) pair."""
    cols = [(title, a, b, res) for title, a, b in pairs for res in merged["resolutions"]
            if a in merged["backends"] and b in merged["backends"]]
    if not cols:
        return None
    rows = []
    for m in merged["models"]:
        cells = [m["label"]]
        for _, a, b, res in cols:
            sa, sb = _stat(m, a, res), _stat(m, b, res)
            cells.append(_fmt_ratio(ratio(sa, sb) if sa and sb else None, "x"))
        rows.append(cells)
    return markdown_table(["Model", *(f"{t} @{r}" for t, _, _, r in cols)], rows, right_from=1)


def _load(machine: dict, key: str) -> str:
    return f"{machine[key][0]:.2f}" if machine.get(key) else "-"


def tables_markdown(merged: dict, reference: str = "regla_m") -> str:
    """All tables of the merged runs, with the runs' commands, dates, machines and load averages."""
    out = ["# regla bench: tables from earlier runs", ""]
    for i, run in enumerate(merged["runs"]):
        m = run["machine"]
        out.append(f"- run {i + 1}: `{run['command']}` ({run['date_utc']}; {m.get('cpu', '?')}, threads "
                   f"{m.get('threads', '?')}, load average {_load(m, 'loadavg_start')} at start, "
                   f"{_load(m, 'loadavg_end')} at end; torch {m.get('torch', '?')}, "
                   f"onnxruntime {m.get('onnxruntime', '?')}, executorch {m.get('executorch', '?')}) "
                   f"from {run['source']}")
    out += ["", f"Latency: median ms ± interquartile range as % of the median. t(ref)/t: the reference's latency "
            f"over the model's (below 1: the reference is faster), median of per-round ratios. {CROSS_RUN}: the two "
            "figures come from different runs (ratio of medians).", ""]
    for backend in merged["backends"]:
        out += [f"## {NAMES[backend]} (`{backend}`)", "", backend_table(merged, backend, reference), ""]
    growth = growth_table(merged)
    if growth:
        out += ["## Growth from 512 to 1024 px (t(1024)/t(512); 4x is linear in pixels)", "", growth, ""]
    speed = pair_table(merged, [(f"{NAMES[q]} over fp32", q.removesuffix("-int8"), q) for q in INT8])
    if speed:
        out += ["## int8 speed-up over fp32 in the same runtime (t(fp32)/t(int8))", "", speed, ""]
    comp = pair_table(merged, [("compile / ORT fp32", "compile", "ort")])
    if comp:
        out += ["## torch.compile latency / ONNX Runtime fp32 latency", "", comp, ""]
    return "\n".join(out)


def as_doc(merged: dict) -> dict:
    """The merged runs in the shape :mod:`regla.bench.plots` draws (latency vs resolution per backend)."""
    from .runner import fit_growth_exponent

    results = []
    for m in merged["models"]:
        growth = {}
        for b, per in m["latency"].items():
            rs = sorted(int(x) for x in per)
            exp = fit_growth_exponent(rs, [per[str(x)]["median_ms"] for x in rs])
            if exp is not None:
                growth[b] = exp
        results.append({"label": m["label"], "family": m["family"], "latency_ms": m["latency"],
                        "growth_exponent": growth})
    first = merged["runs"][0]
    dates = ", ".join(str(r["date_utc"]) for r in merged["runs"])
    return {"config": {"backends": merged["backends"], "resolutions": merged["resolutions"]},
            "results": results, "machine": first["machine"], "date_utc": f"runs of {dates}"}


def write_tables(paths: list[str], out_dir: Path, reference: str = "regla_m",
                 plots: bool = True) -> tuple[str, list[Path]]:
    """Read the runs, write ``tables.md`` (and ``latency_vs_resolution.png``) into ``out_dir``, atomically; returns
    the Markdown and the paths written."""
    from ..outputs import atomic_write_bytes, atomic_write_text

    merged = merge_runs(load_runs(paths))
    markdown = tables_markdown(merged, reference)
    written = [atomic_write_text(Path(out_dir) / "tables.md", markdown)]
    if plots and len(merged["resolutions"]) > 1:
        from .plots import latency_vs_resolution_png

        written.append(atomic_write_bytes(Path(out_dir) / "latency_vs_resolution.png",
                                          latency_vs_resolution_png(as_doc(merged))))
    return markdown, written
