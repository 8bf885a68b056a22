"""``regla plot --paper fig1|fig4``: ReGLA's Fig. 1 and Fig. 4 drawn from a results file, or from the paper's numbers.

* **Fig. 1** ("Comparison of Top-1 accuracy (%) against parameter size (M) across various lightweight vision
  models"): ImageNet-1K top-1 against parameters, one line per family. Default: the 29 rows of ReGLA Table 2
  (models trained without distillation), each tagged with its source.
* **Fig. 4** ("Performance comparison across various model sizes on multiple benchmarks"): left, KNN (k=20) top-1 on
  ImageNet-1K and CIFAR-100; right, ADE20K mIoU; both against parameters, for ReGLA T to X after the 30-epoch
  ImageNet-21K distillation (§4.1.2). The paper plots these values and prints none of them, so the default is a
  template (parameters from ReGLA Table 1, every score ``null``) to fill: ``--print-data`` writes it.

The results file (YAML or JSON, ``--results``) maps a model name to its numbers::

    ReGLA-T: {params: 3.8, knn_in1k: 70.1, knn_cifar100: 80.2, miou: 40.3, family: ReGLA, source: "my run"}

``params`` (millions) is required; the scores are percentages or ``null`` (not drawn); ``family`` defaults to the
name before its first ``-``. The file is checked before anything is drawn (one line naming the model, the key and
what was expected; exit 2). The PNG is written atomically (:mod:`regla.outputs`); ``-o`` names it (a folder gets
``paper_fig1.png`` / ``paper_fig4.png``), and an existing file there is replaced only if this command drew it.

This module is also the ``regla plot`` entry (:data:`regla.cli.COMMANDS`): without ``--paper`` it hands the
arguments to :mod:`regla.runs.cli_plot` (run folders' training curves), which sits in a lower layer and cannot
import the figure code here.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..runs import cli_plot

FIGURES = ("fig1", "fig4")
WRITER = "regla plot --paper"
SCORES = ("top1", "knn_in1k", "knn_cifar100", "miou")
KEYS = ("params", *SCORES, "family", "source")
NEEDS = {"fig1": ("top1",), "fig4": ("knn_in1k", "knn_cifar100", "miou")}  # at least one value of these to draw

_T2 = "ReGLA Table 2"
#: ReGLA Table 2 (ImageNet-1K, no distillation): name -> (family, params M, top-1 %). MNV4-Conv-M is at 256 px,
#: MNV4-Conv-L and MNV4-hybrid-L at 384 px, every other row at 224 px (the table's "Reso." column).
TABLE2: dict[str, tuple[str, float, float]] = {
    "MobileNetV2": ("MobileNetV2", 3.4, 72.0),
    "MNV3-Large": ("MobileNetV3", 4.0, 73.3),
    "MNV4-Conv-S": ("MobileNetV4", 3.8, 73.8),
    "iFormer-T": ("iFormer", 2.9, 74.1),
    "ReGLA-T": ("ReGLA", 3.8, 76.4),
    "GhostNetV3": ("GhostNetV3", 6.1, 77.1),
    "RepViT-M1.0": ("RepViT", 6.8, 78.2),
    "SwiftFormer-S": ("SwiftFormer", 6.1, 78.5),
    "SHViT-S1": ("SHViT", 6.3, 72.8),
    "iFormer-S": ("iFormer", 6.5, 78.8),
    "ReGLA-S": ("ReGLA", 6.4, 78.9),
    "EfficientViT-B1": ("EfficientViT", 9.1, 79.4),
    "RepViT-M1.1": ("RepViT", 8.2, 79.4),
    "MNV4-Conv-M": ("MobileNetV4", 9.7, 79.9),
    "MobileOne-S3": ("MobileOne", 10.07, 80.0),
    "GhostNetV3-1.6x": ("GhostNetV3", 12.3, 80.4),
    "iFormer-M": ("iFormer", 8.9, 80.4),
    "ReGLA-M": ("ReGLA", 9.6, 80.85),
    "SHViT-S4": ("SHViT", 16.5, 79.4),
    "RepViT-M1.5": ("RepViT", 14.6, 81.2),
    "iFormer-L": ("iFormer", 14.7, 81.9),
    "EfficientViT-B2": ("EfficientViT", 24.3, 82.1),
    "ReGLA-L": ("ReGLA", 19.9, 82.9),
    "EfficientFormer-L3": ("EfficientFormer", 31.3, 82.4),
    "MNV4-Conv-L": ("MobileNetV4", 31.0, 82.9),
    "LowFormer-B1.5": ("LowFormer", 33.9, 81.2),
    "EfficientViT-B3": ("EfficientViT", 49.0, 83.4),
    "MNV4-hybrid-L": ("MobileNetV4", 48.6, 83.4),
    "ReGLA-X": ("ReGLA", 39.8, 83.7),
}
#: ReGLA Table 1: parameters (M) of T to X, the x axis of Fig. 4.
TABLE1_PARAMS = {"ReGLA-T": 3.8, "ReGLA-S": 6.4, "ReGLA-M": 9.6, "ReGLA-L": 19.9, "ReGLA-X": 39.8}


def published(figure: str) -> dict[str, dict[str, Any]]:
    """The default data of ``figure``: Table 2's rows (Fig. 1); Table 1's sizes with empty scores (Fig. 4)."""
    if figure == "fig1":
        return {name: {"params": p, "top1": top1, "family": fam, "source": _T2}
                for name, (fam, p, top1) in TABLE2.items()}
    return {name: {"params": p, "knn_in1k": None, "knn_cifar100": None, "miou": None, "family": "ReGLA",
                   "source": "ReGLA Table 1 (params); Fig. 4 prints no values: fill them in"}
            for name, p in TABLE1_PARAMS.items()}


# ---- the results file -------------------------------------------------------------------------------------------

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entry(name: Any, entry: Any, where: str) -> dict[str, Any]:
    """One model's numbers, checked: known keys, ``params`` > 0, scores in [0, 100] or null, text labels."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"{where}: model name {name!r}: expected a non-empty text")
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: model {name!r}: expected a mapping of {', '.join(KEYS)}, got "
                         f"{type(entry).__name__}")
    unknown = sorted(str(k) for k in entry if k not in KEYS)
    if unknown:
        raise UsageError(f"{where}: model {name!r}: unknown key {unknown[0]!r} (expected some of {', '.join(KEYS)})")
    params = entry.get("params")
    if not _number(params) or params <= 0:
        raise UsageError(f"{where}: model {name!r}: params = {params!r}: expected the parameter count in millions "
                         "(a number > 0)")
    out: dict[str, Any] = {"params": float(params)}
    for key in SCORES:
        value = entry.get(key)
        if value is not None and (not _number(value) or not 0 <= value <= 100):
            raise UsageError(f"{where}: model {name!r}: {key} = {value!r}: expected a percentage between 0 and 100 "
                             "(or null)")
        out[key] = None if value is None else float(value)
    for key, default in (("family", name.split("-", 1)[0]), ("source", "")):
        value = entry.get(key, default)
        if not isinstance(value, str):
            raise UsageError(f"{where}: model {name!r}: {key} = {value!r}: expected a text")
        out[key] = value
    return out


def check_data(data: Any, figure: str, where: str) -> dict[str, dict[str, Any]]:
    """``data`` (a parsed results file) as ``{model: numbers}``; a UsageError if it cannot draw ``figure``."""
    if not isinstance(data, dict) or not data:
        got = "an empty mapping" if isinstance(data, dict) else type(data).__name__
        raise UsageError(f"{where}: expected a mapping of model name -> {{params, {', '.join(SCORES)}}}, got {got}")
    models = {name: _entry(name, entry, where) for name, entry in data.items()}
    if not any(m[k] is not None for m in models.values() for k in NEEDS[figure]):
        raise UsageError(f"{where}: no value to draw for {figure}: give {' or '.join(NEEDS[figure])} for at least "
                         f"one model (`regla plot --paper {figure} --print-data` writes a template)")
    return models


def read_results(path: Path, figure: str) -> dict[str, dict[str, Any]]:
    """Read and check a YAML or JSON results file (JSON is YAML)."""
    import yaml

    from ..config import yaml_load

    where = f"--results {path}"
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{where}: cannot read it ({e})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{where}: not valid YAML or JSON{at}: {getattr(e, 'problem', None) or e}") from e
    return check_data(data, figure, where)


# ---- drawing ----------------------------------------------------------------------------------------------------

def _families(models: dict[str, dict[str, Any]], key: str) -> dict[str, list[tuple[float, float, str]]]:
    """family -> [(params, value of ``key``, model)], sorted by params; models without the value left out."""
    fams: dict[str, list[tuple[float, float, str]]] = {}
    for name, m in models.items():
        if m[key] is not None:
            fams.setdefault(m["family"], []).append((m["params"], m[key], name))
    return {f: sorted(pts) for f, pts in sorted(fams.items(), key=lambda kv: (kv[0] != "ReGLA", kv[0]))}


def _draw_series(ax: Any, fams: dict[str, list[tuple[float, float, str]]], style: str = "-",
                 suffix: str = "", marker_shift: int = 0) -> None:
    """One line per family (its colour), each point labelled with the model's size (the name after ``-``)."""
    from .plots import MARKERS, _color

    for fi, (family, pts) in enumerate(fams.items()):
        color = _color(family, fi)
        marker = MARKERS[(fi + marker_shift) % len(MARKERS)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=marker, color=color,
                label=family + suffix, linewidth=2.4 if family == "ReGLA" else 1.2, markersize=6)
        for x, y, name in pts:
            ax.annotate(name.split("-", 1)[-1] if "-" in name else name, (x, y), textcoords="offset points",
                        xytext=(4, -9), fontsize=6, color=color)


def _sources(models: dict[str, dict[str, Any]], origin: str) -> str:
    found = sorted({m["source"] for m in models.values() if m["source"]})
    return f"Data: {origin}" + (f"; sources: {'; '.join(found)}" if found else "")


def fig1_png(models: dict[str, dict[str, Any]], origin: str) -> bytes:
    """Fig. 1: ImageNet-1K top-1 against parameters, one line per family (ReGLA drawn thicker)."""
    from .plots import _plt

    fig, ax = _plt().subplots(figsize=(8.0, 5.6))
    _draw_series(ax, _families(models, "top1"))
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("ImageNet-1K Top-1 (%)")
    ax.set_title("ReGLA Fig. 1: Top-1 accuracy against parameter size", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.text(0.01, -0.02, _sources(models, origin), fontsize=7, ha="left")
    return _png(fig)


def fig4_png(models: dict[str, dict[str, Any]], origin: str) -> bytes:
    """Fig. 4: KNN (k=20) top-1 on ImageNet-1K and CIFAR-100 (left), ADE20K mIoU (right), against parameters."""
    from .plots import _plt

    fig, (left, right) = _plt().subplots(1, 2, figsize=(12.0, 4.8))
    _draw_series(left, _families(models, "knn_in1k"), "-", " ImageNet-1K")
    _draw_series(left, _families(models, "knn_cifar100"), "--", " CIFAR-100", marker_shift=1)
    _draw_series(right, _families(models, "miou"), "-", " ADE20K")
    for ax, ylabel, title in ((left, "KNN (k=20) Top-1 (%)", "KNN top-1 on ImageNet-1K and CIFAR-100"),
                              (right, "mIoU (%)", "ADE20K mIoU (Semantic FPN)")):
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"ReGLA Fig. 4: {title}", fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no values in the results file", ha="center", va="center", transform=ax.transAxes)
    fig.text(0.01, -0.02, _sources(models, origin), fontsize=7, ha="left")
    return _png(fig)


def _png(fig: Any) -> bytes:
    from ..outputs import PNG_WRITER_KEY
    from .plots import _png as png_bytes

    return png_bytes(fig, metadata={PNG_WRITER_KEY: WRITER})  # known as ours by content (regla.outputs)


def draw(figure: str, models: dict[str, dict[str, Any]], origin: str, out: Path) -> Path:
    """Draw ``figure`` from ``models`` and write it to ``out`` atomically."""
    from ..outputs import atomic_write_bytes

    png = fig1_png(models, origin) if figure == "fig1" else fig4_png(models, origin)
    return atomic_write_bytes(out, png)


# ---- the command ------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``regla plot``'s options: the run-curve ones (:mod:`regla.runs.cli_plot`) and ``--paper``'s."""
    cli_plot.add_arguments(parser)
    parser.add_argument("--paper", choices=FIGURES, default=None,
                        help="draw ReGLA's Fig. 1 (top-1 vs params) or Fig. 4 (KNN top-1 and ADE20K mIoU vs params) "
                             "instead of run curves")
    parser.add_argument("--results", metavar="FILE", default=None,
                        help="YAML/JSON: model -> {params, top1, knn_in1k, knn_cifar100, miou, family, source} "
                             "(default for fig1: ReGLA Table 2; fig4 needs one)")
    parser.add_argument("--print-data", action="store_true",
                        help="print the figure's data as YAML (a template to fill for fig4) and exit")


def output_png(out: str | None, figure: str, results: Path | None) -> Path:
    """The PNG to write: ``-o`` by the folder rule, default ``paper_<figure>.png``; never a file we did not draw."""
    from ..outputs import check_new_output, png_written_by, resolve_output

    path = resolve_output(out, f"paper_{figure}.png")
    if path.suffix.lower() != ".png":
        raise UsageError(f"--out {path}: regla plot writes a PNG; give a path ending in .png (or a folder)")
    return check_new_output(path, lambda p: png_written_by(p, WRITER), inputs=(results,), flag="--out",
                            what=f"a PNG drawn by {WRITER}")


def run(args: argparse.Namespace) -> int:
    """``regla plot``: run curves (no ``--paper``), or the paper figure named by ``--paper``."""
    if args.paper is None:
        if args.results or args.print_data:
            raise UsageError("--results and --print-data go with --paper fig1|fig4")
        return cli_plot.run(args)
    if args.run_dirs:
        raise UsageError(f"--paper {args.paper} draws from --results FILE (or the paper's numbers), not from "
                         f"run folders: drop {args.run_dirs[0]}")
    from ..preflight import existing_file

    results = existing_file(args.results, "--results") if args.results else None
    if results is not None:
        models = read_results(results, args.paper)
    else:
        models = {k: _entry(k, v, "published data") for k, v in published(args.paper).items()}
    if args.print_data:
        import yaml

        sys.stdout.write(yaml.safe_dump(models, sort_keys=False, allow_unicode=True))
        return 0
    if results is None:
        check_data(models, args.paper, f"--paper {args.paper} without --results")
    out = output_png(args.out, args.paper, results)
    origin = str(results) if results is not None else "the paper's published figures"
    print(f"wrote {draw(args.paper, models, origin, out)}")
    return 0
