"""PNG plots of a bench result document (matplotlib, Agg backend; returned as bytes for atomic writes)."""

from __future__ import annotations

import io
import math

from .backends import BACKENDS, LABELS, NAMES

FAMILY_COLORS = {
    "ReGLA": "#d62728", "iFormer": "#1f77b4", "RepViT": "#2ca02c", "RepNeXt": "#9467bd", "MobileNetV4": "#ff7f0e",
    "EfficientViT": "#8c564b", "FastViT": "#e377c2", "SHViT": "#17becf",
}
MARKERS = "osD^v<>pP*Xh"
LINESTYLES = ("-", "--", "-.", ":")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(axis) -> None:
    """Log-scale axis labelled 1, 2, 5, 10, 20, 50 ... in plain numbers (no overlapping minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _color(family: str, i: int) -> str:
    return FAMILY_COLORS.get(family, f"C{i % 10}")


def _png(fig, metadata: dict[str, str] | None = None) -> bytes:
    """The figure as PNG bytes (closed after); ``metadata``: PNG text chunks (a writer's ``Software`` tag)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata=metadata)
    _plt().close(fig)
    return buf.getvalue()


def _families(doc: dict) -> dict[str, list[dict]]:
    fams: dict[str, list[dict]] = {}
    for r in doc["results"]:
        if r["latency_ms"]:
            fams.setdefault(r["family"], []).append(r)
    return fams


def _subtitle(doc: dict) -> str:
    m = doc["machine"]
    return f"{m['cpu']}, threads: {m['threads']}, batch 1, {doc['date_utc']}"


def latency_vs_resolution_png(doc: dict) -> bytes:
    """Log-log latency vs input side, one panel per backend, legend with each model's fitted growth exponent."""
    plt = _plt()
    from matplotlib.ticker import NullFormatter

    backends = [b for b in BACKENDS if b in doc["config"]["backends"]]
    cols = min(3, len(backends))
    rows = math.ceil(len(backends) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 8.5 * rows), squeeze=False)
    for ax in axes.flat[len(backends):]:
        ax.set_visible(False)
    resolutions = sorted(int(r) for r in doc["config"]["resolutions"])
    for ax, backend in zip(axes.flat, backends, strict=False):
        for fi, (family, members) in enumerate(_families(doc).items()):
            for mi, r in enumerate(members):
                per = r["latency_ms"].get(backend, {})
                xs = [x for x in resolutions if str(x) in per]
                if not xs:
                    continue
                ys = [per[str(x)]["median_ms"] for x in xs]
                exp = r["growth_exponent"].get(backend)
                label = r["label"] + (f" (k={exp:.2f})" if exp is not None else "")
                ax.plot(xs, ys, marker=MARKERS[mi % len(MARKERS)], linestyle=LINESTYLES[mi % len(LINESTYLES)],
                        color=_color(family, fi), label=label, linewidth=1.4, markersize=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(resolutions, [str(x) for x in resolutions])
        ax.xaxis.set_minor_formatter(NullFormatter())
        _plain_log_axis(ax.yaxis)
        lo, hi = ax.get_ylim()
        x0, x1 = resolutions[0], resolutions[-1]
        if x1 > x0:  # guide: latency proportional to pixel count, through the geometric middle of the plot
            mid = (lo * hi) ** 0.5
            ax.plot([x0, x1], [mid / (x1 / x0), mid * (x1 / x0)], color="k", linestyle=(0, (4, 3)), linewidth=1.8,
                    zorder=5, label="∝ pixels (k = 1)")
            ax.set_ylim(lo, hi)
        ax.set_xlabel("input side (px), square input; log scale")
        ax.set_ylabel("median latency (ms), log scale")
        name = NAMES[backend] + " (CPU)"
        ax.set_title(f"{name}: latency vs resolution\nk = fitted exponent of latency vs pixel count (1 = linear)",
                     fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.suptitle(_subtitle(doc), fontsize=9, y=0.995)
    return _png(fig)


def accuracy_vs_latency_png(doc: dict) -> bytes:
    """Published Top-1 vs latency measured here (ONNX Runtime), one panel per resolution, as in the paper's Fig. 1."""
    plt = _plt()
    resolutions = sorted(int(r) for r in doc["config"]["resolutions"])
    backend = next(b for b in BACKENDS if b in doc["config"]["backends"])
    fig, axes = plt.subplots(1, len(resolutions), figsize=(6.5 * len(resolutions), 5.8), squeeze=False)
    for ax, res in zip(axes[0], resolutions, strict=True):
        for fi, (family, members) in enumerate(_families(doc).items()):
            pts = [(r["latency_ms"][backend][str(res)]["median_ms"], r["published_top1"]["top1"], r["label"])
                   for r in members if r["published_top1"] and str(res) in r["latency_ms"].get(backend, {})]
            if not pts:
                continue
            pts.sort()
            color = _color(family, fi)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS[fi % len(MARKERS)], color=color,
                    label=family, linewidth=2.2 if family == "ReGLA" else 1.2, markersize=6)
            for x, y, label in pts:
                ax.annotate(label.split("-", 1)[-1], (x, y), textcoords="offset points", xytext=(4, -9), fontsize=6,
                            color=color)
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        ax.set_xlabel(f"latency at {res}x{res} px (ms), measured here, "
                      f"{NAMES[backend]} CPU; log scale")
        ax.set_ylabel("ImageNet-1K Top-1 (%), PUBLISHED figure")
        ax.set_title(f"Published Top-1 vs measured latency, {res} px", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(_subtitle(doc), fontsize=9, y=0.995)
    fig.text(0.01, -0.02, "Top-1 accuracies are published ImageNet-1K figures (no distillation), copied from: "
             "ReGLA Table 2 (ReGLA, MobileNetV4, EfficientViT, SHViT), iFormer Table 3, RepViT Table 2, "
             "RepNeXt Table 3 (RepNeXt, FastViT); see results.json for each model's source.", fontsize=7, ha="left")
    return _png(fig)


def backends_png(doc: dict) -> bytes:
    """Median latency of every model in every backend, one panel per resolution (grouped bars, log scale)."""
    plt = _plt()
    backends = [b for b in BACKENDS if b in doc["config"]["backends"]]
    resolutions = sorted(int(r) for r in doc["config"]["resolutions"])
    models = [r for r in doc["results"] if r["latency_ms"]]
    fig, axes = plt.subplots(len(resolutions), 1, figsize=(max(7.0, 1.4 * len(models) * max(1, len(backends)) / 3),
                                                            4.5 * len(resolutions)), squeeze=False)
    width = 0.8 / max(1, len(backends))
    for ax, res in zip(axes[:, 0], resolutions, strict=True):
        for bi, backend in enumerate(backends):
            xs, ys = [], []
            for mi, r in enumerate(models):
                st = r["latency_ms"].get(backend, {}).get(str(res))
                if st:
                    xs.append(mi + (bi - (len(backends) - 1) / 2) * width)
                    ys.append(st["median_ms"])
            ax.bar(xs, ys, width=width, label=LABELS[backend], color=f"C{bi}")
        ax.set_xticks(range(len(models)), [r["label"] for r in models], fontsize=8, rotation=20)
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.set_ylabel("median latency (ms), log scale")
        ax.set_title(f"Latency per backend at {res}x{res} px (missing bar: the backend could not run the model, "
                     "see results.md)", fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=len(backends))
    fig.suptitle(_subtitle(doc), fontsize=9, y=0.995)
    return _png(fig)


def sam_latency_png(doc: dict) -> bytes:
    """``regla bench --task sam``: median latency (bar) and p10-p90 (whisker) of every SAM encoder and the decoder."""
    plt = _plt()
    rows = doc["results"]
    fig, ax = plt.subplots(figsize=(8.0, 0.45 * len(rows) + 1.6))
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows, strict=True):
        lat = r["latency"]
        color = "#d62728" if r["label"].startswith("regla_") else ("#7f7f7f" if r["backend"] == "eager" else "C0")
        ax.barh(y, lat["median_ms"], color=color, alpha=0.55 if r.get("backend") == "eager" else 0.9)
        ax.plot([lat["p10_ms"], lat["p90_ms"]], [y, y], color="k", linewidth=1.2)
        ax.annotate(f"{lat['median_ms']:.0f} ms", (max(lat["median_ms"], lat["p90_ms"]), y),
                    textcoords="offset points", xytext=(4, -3), fontsize=7)
    ax.set_yticks(ys, [f"{r['label']} ({r.get('backend', 'ort')})" for r in rows], fontsize=8)
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.set_xlabel("median latency (ms), batch 1, log scale; whisker: p10-p90")
    ax.set_title(f"SAM image encoders and mask decoder at {doc['img_size']}x{doc['img_size']}, "
                 f"{doc['threads']} thread(s)", fontsize=10)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    m = doc["machine"]
    fig.suptitle(f"{m['cpu']}, {doc['date']}", fontsize=8, y=0.995)
    return _png(fig)


def dense_latency_png(doc: dict) -> bytes:
    """``regla bench --task det|seg``: median latency of the whole model per backbone, one bar per size and backend
    (grouped, log scale, p10-p90 as error bars); a missing bar is a model that could not run (see the .md)."""
    plt = _plt()
    rows = doc["results"]
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    labels = {r["backbone"]: r["label"] for r in rows}
    series = list(dict.fromkeys((r["size"], r["backend"]) for r in rows))
    by_key = {(r["backbone"], r["size"], r["backend"]): r for r in rows}
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(backbones) * max(1, len(series)) / 1.5), 4.8))
    for si, (size, backend) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for bi, name in enumerate(backbones):
            lat = by_key.get((name, size, backend), {}).get("latency")
            if lat:
                xs.append(bi + (si - (len(series) - 1) / 2) * width)
                ys.append(lat["median_ms"])
                lo.append(lat["median_ms"] - lat["p10_ms"])
                hi.append(lat["p90_ms"] - lat["median_ms"])
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, color=f"C{si}",
               label=f"{size} {LABELS.get(backend, backend)}")
    ax.set_xticks(range(len(backbones)), [labels[n] for n in backbones], fontsize=8)
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_ylabel("median latency (ms), log scale; bars p10-p90")
    what = (f"Mask R-CNN, {doc['detections_per_img']} detections forced" if doc["task"] == "det"
            else "Semantic FPN")
    ax.set_title(f"Whole {what}, batch 1, by backbone, input size and backend", fontsize=9)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(f"{m['cpu']}, threads: {doc['threads']}, {doc['date']}", fontsize=8, y=0.995)
    return _png(fig)
