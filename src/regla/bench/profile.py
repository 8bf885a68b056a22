"""Where the time goes: ONNX Runtime's per-node profile of one model, summed by operator type and by block.

``regla bench --profile --models regla_m --resolutions 512`` prints both tables and writes them as JSON.
Node names come from the exporter (``/stages/stages.2/blocks/blocks.3/attn/MatMul``), so ``depth`` path
components of a node's name identify the block it belongs to.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

_INDEXED = re.compile(r"\.\d+$")  # a module-list entry: "stages.2", "blocks.13"


def _block_of(node: str, depth: int) -> str:
    parts = [p for p in node.strip("/").split("/") if p]
    # exporter names repeat the module path: /stages/stages.2/blocks/blocks.3/... -> keep the indexed parts
    indexed = [p for p in parts[:-1] if _INDEXED.search(p)]
    return "/".join(indexed[:depth]) or (parts[0] if len(parts) > 1 else "(top level)")


def _component_of(node: str) -> str:
    """``stages.2/attn`` for ``/stages/stages.2/blocks/blocks.3/attn/qkv/Conv``: stage and sub-module of a block."""
    parts = [p for p in node.strip("/").split("/") if p][:-1]
    idx = [i for i, p in enumerate(parts) if _INDEXED.search(p)]
    if not idx:
        return parts[0] if parts else "(top level)"
    after = parts[idx[-1] + 1] if idx[-1] + 1 < len(parts) else "(block)"
    return f"{parts[idx[0]]}/{after}"


def profile_onnx(path: str | os.PathLike, res: int, threads: int, runs: int = 10, depth: int = 2) -> dict:
    """Profile ``runs`` batch-1 runs of an ONNX model at ``res`` px; return per-op-type and per-block time shares.

    Times are summed node kernel times (``cat == "Node"``, ``*_kernel_time`` events) averaged per run, in ms.
    """
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, res, res), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="regla-profile-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(2):  # warm-up, profiled too but dropped below by run count
            sess.run(None, {name: x})
        for _ in range(runs):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    return summarize_profile(events, runs=runs + 2, depth=depth)


def summarize_profile(events: list[dict], runs: int, depth: int = 2) -> dict:
    """Per-op-type and per-block kernel time (ms per run) from ONNX Runtime profile ``events``."""
    by_op: dict[str, float] = defaultdict(float)
    by_block: dict[str, float] = defaultdict(float)
    by_component: dict[str, float] = defaultdict(float)
    count_op: dict[str, int] = defaultdict(int)
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        op = ev.get("args", {}).get("op_name", "?")
        node = ev["name"][: -len("_kernel_time")]
        ms = ev.get("dur", 0) / 1000.0 / runs
        by_op[op] += ms
        count_op[op] += 1
        by_block[_block_of(node, depth)] += ms
        by_component[_component_of(node)] += ms
    total = sum(by_op.values())
    fmt = lambda d: sorted(({"name": k, "ms": round(v, 3), "share": round(v / total, 4) if total else 0.0}  # noqa: E731
                            for k, v in d.items()), key=lambda e: -e["ms"])
    ops = fmt(by_op)
    for e in ops:
        e["nodes"] = count_op[e["name"]] // runs
    return {"total_kernel_ms": round(total, 3), "by_op_type": ops, "by_component": fmt(by_component),
            "by_block": fmt(by_block)}


def format_profile(label: str, res: int, prof: dict, top: int = 12) -> str:
    """Two short text tables: the heaviest operator types and blocks (``label`` names the profiler: eager's says
    ``torch.profiler``, else ONNX Runtime's)."""
    runtime = "PyTorch eager" if "torch.profiler" in label else "ONNX Runtime"
    lines = [f"{label} at {res} px: {prof['total_kernel_ms']:.1f} ms of {runtime} kernel time per run"]
    lines.append(f"  {'op type':<28}{'nodes':>6}{'ms':>9}{'share':>8}")
    for e in prof["by_op_type"][:top]:
        lines.append(f"  {e['name']:<28}{e['nodes']:>6}{e['ms']:>9.2f}{100 * e['share']:>7.1f}%")
    for key, title in (("by_component", "stage/sub-module"), ("by_block", "block")):
        lines.append(f"  {title:<34}{'ms':>9}{'share':>8}")
        for e in prof[key][:top]:
            lines.append(f"  {e['name']:<34}{e['ms']:>9.2f}{100 * e['share']:>7.1f}%")
    return "\n".join(lines)


def profile_eager(model, res: int, threads: int, runs: int = 5, channels_last: bool = False) -> dict:
    """``torch.profiler`` of ``runs`` eager batch-1 forwards: self CPU time per aten operator, and the wall time of
    each stage/sub-module (forward hooks, named as in :func:`profile_onnx`'s ``by_component``), in ms per run."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).eval()
    x = torch.randn(1, 3, res, res).contiguous(memory_format=fmt)
    by_component: dict[str, float] = defaultdict(float)
    hooks = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if len(parts) == 5 and parts[0] == "stages" and parts[2] == "blocks":  # stages.i.blocks.j.<sub>
            key = f"stages.{parts[1]}/{parts[4]}"

            def stop(m, a, o, key=key) -> None:
                by_component[key] += time.perf_counter() - m._t0

            hooks.append(module.register_forward_pre_hook(lambda m, a: setattr(m, "_t0", time.perf_counter())))
            hooks.append(module.register_forward_hook(stop))
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        by_component.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(x)
    for h in hooks:
        h.remove()
    events = [(e.key, e.self_cpu_time_total / 1e3 / runs, e.count // runs) for e in prof.key_averages()]
    total = sum(ms for _, ms, _ in events)
    ops = sorted(({"name": k, "ms": round(ms, 3), "share": round(ms / total, 4) if total else 0.0, "nodes": n}
                  for k, ms, n in events if ms > 0), key=lambda e: -e["ms"])
    comp_total = sum(by_component.values())
    comps = sorted(({"name": k, "ms": round(1e3 * v / runs, 3), "share": round(v / comp_total, 4) if comp_total else 0}
                    for k, v in by_component.items()), key=lambda e: -e["ms"])
    return {"total_kernel_ms": round(total, 3), "by_op_type": ops, "by_component": comps, "by_block": [],
            "channels_last": channels_last}
