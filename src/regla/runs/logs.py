"""Per-epoch metrics: ``metrics.csv``, ``metrics.jsonl`` and TensorBoard events in the run folder."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from regla.data.errors import DataError
from regla.data.rules import Rule, check_entry, finite_number, is_int, show
from regla.outputs import atomic_write_text

_logger = logging.getLogger("regla.runs")

#: The first columns of ``metrics.csv``; a task's own metrics follow in the order they first appear.
LEADING = ("epoch", "train_loss", "lr")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (an unfinished last line, from a killed run, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


#: The fields every ``metrics.jsonl`` row has (what ``regla plot`` reads), as rules; the tests are generated from
#: these. Every value the plot draws (``lr``, ``train_*``, ``val_*``, ``best_<metric>``, ``<metric>`` and
#: ``<metric>_ema``) must be a finite number or null (:func:`read_rows`).
ROW_RULES = (
    Rule("epoch", lambda v: is_int(v) and v >= 0, "the epoch number (an integer >= 0)", "1"),
    Rule("lr", lambda v: v is None or finite_number(v), "the learning rate (a number or null)", "high",
         required=False),
)


def _drawn(key: str, metrics: set[str]) -> bool:
    """Whether ``regla plot`` draws the column ``key`` (``metrics``: the run's ``best_<metric>`` names)."""
    return key == "lr" or key.startswith(("train_", "val_", "best_")) or key.removesuffix("_ema") in metrics


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``, checked: one JSON object per line (an unfinished last line, from a killed run,
    is ignored), :data:`ROW_RULES`, and every drawn value a finite number or null; a DataError naming the line."""
    path = Path(path)
    lines = path.read_text().splitlines()
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                continue
            raise DataError(f"{path}: line {n} is not valid JSON ({e.msg}); expected one JSON object per "
                            "line") from None
        check_entry(row, ROW_RULES, f"line {n}", str(path))
        rows.append((n, row))
    metrics = {k[len("best_"):] for _, r in rows for k in r if k.startswith("best_")}
    for n, row in rows:
        for key, value in row.items():
            if _drawn(key, metrics) and not (value is None or finite_number(value)):
                raise DataError(f"{path}: line {n}: {key!r} is {show(value)}; expected a number or null")
    return [r for _, r in rows]


class MetricsLogger:
    """Appends one row per epoch to CSV and JSONL, and scalars to TensorBoard (if installed)."""

    def __init__(self, run_dir: str | Path, resume_epoch: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        if resume_epoch is not None and (self.jsonl.exists() or self.csv.exists()):
            self._truncate(resume_epoch)
        self.writer = self._tensorboard(resume_epoch) if tensorboard else None

    def _truncate(self, epoch: int) -> None:
        """Forget rows of epochs after the checkpoint we resume from (they will be trained again)."""
        rows = [r for r in read_jsonl(self.jsonl) if r.get("epoch", 0) <= epoch]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_text(self.csv, self._csv_text(rows, columns(rows), header=True))

    def _tensorboard(self, resume_epoch: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in the `train` extra
            _logger.warning("tensorboard not installed: no TensorBoard events (pip install 'regla[train]')")
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=resume_epoch)

    @staticmethod
    def _csv_text(rows: list[dict[str, Any]], fields: list[str], header: bool) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        if header:
            w.writeheader()
        for r in rows:
            w.writerow(r)
        return buf.getvalue()

    def log(self, row: dict[str, Any]) -> None:
        """Append one epoch's row everywhere."""
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        fields = self._csv_fields()
        if fields is None or any(k not in fields for k in row):  # new columns: rewrite the CSV from the JSONL
            rows = read_jsonl(self.jsonl)
            atomic_write_text(self.csv, self._csv_text(rows, columns(rows), header=True))
        else:
            with open(self.csv, "a", newline="") as f:
                f.write(self._csv_text([row], fields, header=False))
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and v is not None:
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()

    def _csv_fields(self) -> list[str] | None:
        """The CSV's header, or None for a missing or empty file."""
        if not self.csv.is_file() or self.csv.stat().st_size == 0:
            return None
        with open(self.csv, newline="") as f:
            return next(csv.reader(f), None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """:data:`LEADING` first, then every other key in the order the rows first show it."""
    out = [c for c in LEADING if any(c in r for r in rows)]
    for r in rows:
        out += [k for k in r if k not in out]
    return out
