"""The one table writer of ``regla bench``: GitHub Markdown and CSV text from a header and rows.

Every bench (classification :mod:`.report`, dense :mod:`.dense`, SAM :mod:`.sam`, merged runs :mod:`.tables`)
builds its own header and rows and writes them here, so all its tables share one form.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]], *, right_from: int | None = None,
                   notes: Sequence[str] = ()) -> str:
    """``| a | b |`` lines: the header, the rule (columns from ``right_from`` on right-aligned), the rows, then a
    blank line and ``notes`` (each a finished line, e.g. ``- [1] why``) when there are any."""
    rule = ["---:" if right_from is not None and i >= right_from else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines + ([""] + list(notes) if notes else []))


def csv_text(fields: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    """CSV with a header line (``\\n`` line ends), one line per row mapping."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
