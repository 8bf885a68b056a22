"""Rules as data: each data format's fields are a table of :class:`Rule` (key, check, what is expected, a value
that breaks it), and :func:`check_entry` applies a table to one entry of a file.

The tables sit beside their readers (``regla.data.coco.COCO_RULES``, ``regla.bench.tables.RESULT_RULES``,
``regla.runs.logs.ROW_RULES``); ``tests/test_bad_data.py`` generates its matrix from them, so a new rule gets a
test. A failure is one :class:`~regla.data.errors.DataError` line (exit 2): the file, the entry (image id,
annotation id, row) and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DataError

__all__ = ["Rule", "check_entry", "entry_name", "finite_number", "is_int", "json_type", "nonempty_str", "numbers",
           "positive_int", "show"]

#: Longest shown value in a message.
SHOWN = 60


@dataclass(frozen=True)
class Rule:
    """One field of an entry: ``key`` must be present (unless not ``required``) and pass ``check``.

    ``expected`` completes "expected ..." in the message; ``bad`` is a value that fails ``check`` (the generated
    tests write it in place of a good one).
    """

    key: str
    check: Callable[[Any], bool]
    expected: str
    bad: Any
    required: bool = True


def is_int(value: Any) -> bool:
    """An integer (a JSON ``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any) -> bool:
    return is_int(value) and value > 0


def finite_number(value: Any) -> bool:
    """An int or float, not bool, not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def numbers(value: Any, n: int | None = None) -> bool:
    """A list of finite numbers (of length ``n`` when given)."""
    return isinstance(value, list) and (n is None or len(value) == n) and all(finite_number(v) for v in value)


def show(value: Any) -> str:
    """``repr(value)``, shortened to :data:`SHOWN` characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN - 4] + " ..."


JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null"}


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type (object, array, string, number, boolean, null)."""
    return JSON_TYPES.get(type(value), type(value).__name__)


def entry_name(kind: str, entry: Any, index: int, section: str) -> str:
    """``annotation id 7``, or ``annotation #3 in 'annotations'`` for an entry without a usable id."""
    ident = entry.get("id") if isinstance(entry, Mapping) else None
    return f"{kind} id {ident}" if is_int(ident) else f"{kind} #{index} in '{section}'"


def check_entry(entry: Any, rules: Sequence[Rule], where: str, source: str) -> None:
    """Every rule of ``rules`` on ``entry`` (a JSON object); a DataError naming ``source``, ``where`` and the key."""
    if not isinstance(entry, Mapping):
        raise DataError(f"{source}: {where} is a JSON {json_type(entry)} ({show(entry)}); expected an object "
                        f"with {', '.join(repr(r.key) for r in rules if r.required)}")
    for rule in rules:
        if rule.key not in entry:
            if rule.required:
                raise DataError(f"{source}: {where}: no {rule.key!r}; expected {rule.expected}")
            continue
        if not rule.check(entry[rule.key]):
            raise DataError(f"{source}: {where}: {rule.key!r} is {show(entry[rule.key])}; expected {rule.expected}")
