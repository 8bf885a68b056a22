"""``regla plot RUN_DIR``: the curves of any run (losses and their parts, the task's score, learning rate) to a PNG.

Works for every trainer on the harness (``regla train``, ``distill``, ``det``, ``seg``): the loss panel draws every
``train_*`` loss part and ``val_loss``; the score panel draws the metric the run keeps ``best_<metric>`` of (top-1,
KNN top-1, box AP, mIoU ...) and its EMA twin.

The inputs are checked before drawing (each RUN_DIR holds a ``metrics.jsonl`` whose rows are JSON objects with an
``epoch`` and numbers where the plot draws them, :func:`regla.runs.logs.read_rows`; the output place is writable); the
PNG is written atomically, and ``-o DIR`` writes ``DIR/curves.png`` (the folder rule of :mod:`regla.outputs`).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..outputs import check_new_output, png_written_by, resolve_output
from ..preflight import existing_dir

DEFAULT_NAME = "curves.png"
WRITER = "regla plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``regla plot`` options on ``parser``."""
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folder(s) of any regla trainer")
    parser.add_argument("-o", "--out", help=f"PNG path (default RUN_DIR/{DEFAULT_NAME} of the first run); "
                                            f"a folder receives {DEFAULT_NAME}")


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key``, skipping epochs where it was not measured."""
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def loss_keys(rows: list[dict[str, Any]]) -> list[str]:
    """``train_loss``, the task's loss parts (``train_<part>``) and ``val_loss``, as logged."""
    keys = [k for k in rows[0] if k.startswith("train_") and k not in ("train_img_s",)]
    return keys + [k for k in ("val_loss",) if any(r.get(k) is not None for r in rows)]


def score_key(rows: list[dict[str, Any]]) -> str:
    """The metric the run kept ``best_<metric>`` of (``top1`` for runs written before the harness had others)."""
    for r in rows:
        for k in r:
            if k.startswith("best_"):
                return k[len("best_"):]
    return "top1"


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Three panels (losses, the task's score and its EMA twin, learning rate), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regla.runs.logs import read_rows

    from ..outputs import PNG_WRITER_KEY, atomic_write_bytes

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    score_names = set()
    try:
        for run in run_dirs:
            rows = read_rows(run / "metrics.jsonl")
            if not rows:
                raise UsageError(f"{run}: no metrics.jsonl rows (is it a regla run folder?)")
            name = run.name
            for key in loss_keys(rows):
                x, y = series(rows, key)
                axes[0].plot(x, y, "--" if key == "val_loss" else "-", label=f"{name} {key}")
            score = score_key(rows)
            score_names.add(score)
            for key, style in ((score, "-"), (f"{score}_ema", ":")):
                x, y = series(rows, key)
                if x:
                    axes[1].plot(x, y, style, label=f"{name} {key}")
            axes[2].plot(*series(rows, "lr"), label=name)
        titles = ("loss", " / ".join(sorted(score_names)), "learning rate (end of epoch)")
        for ax, title in zip(axes, titles, strict=True):
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, metadata={PNG_WRITER_KEY: WRITER})  # known as ours by content
    finally:
        plt.close(fig)
    return atomic_write_bytes(out, buf.getvalue())


def check_run_dirs(paths: list[str]) -> list[Path]:
    """Each RUN_DIR exists and holds a ``metrics.jsonl`` whose rows pass :func:`regla.runs.logs.read_rows`."""
    from regla.runs.logs import read_rows

    runs = [existing_dir(p, "RUN_DIR") for p in paths]
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise UsageError(f"RUN_DIR {run}: no metrics.jsonl (is it a regla run folder?)")
        read_rows(run / "metrics.jsonl")
    return runs


def output_png(out: str | None, first_run: Path) -> Path:
    """The PNG to write, by the folder rule; it must end in ``.png`` and its folder must be writable."""
    path = resolve_output(out, DEFAULT_NAME) if out else first_run / DEFAULT_NAME
    if path.suffix.lower() != ".png":
        raise UsageError(f"--out {path}: regla plot writes a PNG; give a path ending in .png (or a folder)")
    return check_new_output(path, lambda p: png_written_by(p, WRITER), flag="--out", what=f"a PNG drawn by {WRITER}")


def run(args: argparse.Namespace) -> int:
    """Draw the curves of ``args.run_dirs``; print where the PNG went."""
    if not args.run_dirs:
        raise UsageError("give one or more RUN_DIR (run folders), or --paper fig1|fig4 for ReGLA's figures")
    runs = check_run_dirs(args.run_dirs)
    path = plot_runs(runs, output_png(args.out, runs[0]))
    print(f"wrote {path}")
    return 0
