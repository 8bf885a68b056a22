"""``regla plot RUN_DIR``: training curves (loss, top-1, learning rate) from ``metrics.jsonl`` to a PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) of `regla train`")
    parser.add_argument("-o", "--out", help="PNG path (default RUN_DIR/curves.png of the first run)")


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key``, skipping epochs where it was not measured."""
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Three panels (train/val loss, val top-1 and EMA top-1, learning rate), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regla.utils.io import atomic_write_bytes

    from .logs import read_jsonl

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for run in run_dirs:
        rows = read_jsonl(run / "metrics.jsonl")
        if not rows:
            raise FileNotFoundError(f"{run}: no metrics.jsonl rows (is it a `regla train` run folder?)")
        name = run.name
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            x, y = series(rows, key)
            axes[0].plot(x, y, style, label=f"{name} {key.split('_')[0]}")
        for key, style in (("top1", "-"), ("top1_ema", ":")):
            x, y = series(rows, key)
            if x:
                axes[1].plot(x, y, style, label=f"{name} {'EMA ' if 'ema' in key else ''}top-1")
        axes[2].plot(*series(rows, "lr"), label=name)
    for ax, title in zip(axes, ("loss", "validation top-1 (%)", "learning rate (end of epoch)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(out, buf.getvalue())


def run(args: argparse.Namespace) -> int:
    runs = [Path(p) for p in args.run_dirs]
    out = Path(args.out) if args.out else runs[0] / "curves.png"
    try:
        path = plot_runs(runs, out)
    except (FileNotFoundError, ImportError) as e:
        print(f"regla plot: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
