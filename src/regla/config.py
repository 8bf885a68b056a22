"""One typed schema for recipes and ``--set`` overrides, shared by every trainer (train, distill, det, seg, sam).

A :class:`Schema` maps option names to :class:`Field` specs (type, default, range or choices, nullable, list item
type and length, an extra check) plus cross-field rules. It turns YAML values and ``--set key=value`` strings into
a plain validated ``dict``, and every error is a one-line :class:`ConfigError` (a
:class:`~regla.errors.UsageError`, exit code 2) naming where the value came from, the key, the value and what is
allowed. Unknown keys get a "did you mean".

YAML is read with two fixes over PyYAML's YAML 1.1: ``4e-3`` is a float (YAML 1.2; 1.1 reads it as a string), and
in a flow mapping an unquoted ``{early_block:dw7}`` is the entry ``early_block: dw7`` (1.1 reads the key
``"early_block:dw7"`` with a null value, which silently drops the setting).
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError

__all__ = ["ConfigError", "Field", "Rule", "Schema", "parse_override", "yaml_load"]


class ConfigError(UsageError):
    """A recipe or an override that cannot be used; the message says which key, which value and what is allowed."""


# ----------------------------------------------------------------------------------------------- YAML reading

_FLOAT_1_2 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                            |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                            |[-+]?\.(?:inf|Inf|INF)
                            |\.(?:nan|NaN|NAN))$""", re.X)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats and ``k:v`` entries in flow mappings (see the module docstring)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if node.flow_style:
            node.value = [self._split_entry(k, v) for k, v in node.value]
        return super().construct_mapping(node, deep=deep)

    def _split_entry(self, key: yaml.Node, value: yaml.Node) -> tuple[yaml.Node, yaml.Node]:
        plain_key = isinstance(key, yaml.ScalarNode) and key.style is None and ":" in key.value
        empty_value = isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null") and value.value == ""
        if not (plain_key and empty_value):
            return key, value
        k, v = key.value.split(":", 1)
        k_node = yaml.ScalarNode(self.resolve(yaml.ScalarNode, k, (True, False)), k, key.start_mark, key.end_mark)
        v_node = yaml.ScalarNode(self.resolve(yaml.ScalarNode, v, (True, False)), v, key.start_mark, key.end_mark)
        return k_node, v_node


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text with the two fixes of this module (YAML 1.2 floats, ``{k:v}`` entries)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value`` and parse the value as YAML (``1e-3`` -> float, ``[1, 2]`` -> list, ``null`` -> None).

    The key may be dotted (``model_kwargs.early_block=dw7``) to set one entry of a mapping; dashes in the first
    part become underscores (``sync-bn`` -> ``sync_bn``).
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    head, dot, rest = key.strip().partition(".")
    key = head.replace("-", "_") + dot + rest
    if not head:
        raise ConfigError(f"override {text!r} has no key before '='")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({' '.join(str(e).split())})") from e
    return key, value


# ------------------------------------------------------------------------------------------------- the schema

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping"}

#: A cross-field rule: returns what is wrong with a whole config (one line), or None.
Rule = Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class Field:
    """One option: its type (bool, int, float, str, list, dict), default and what values are allowed.

    ``ge``/``gt``/``le``/``lt`` bound numbers (and the items of a list of numbers); ``choices`` lists the allowed
    values; ``items`` and ``length`` describe a list; ``check(value)`` returns what is wrong, or None.
    """

    type: type
    default: Any = None
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    items: type | None = None
    length: int | None = None
    check: Callable[[Any], str | None] | None = None
    help: str = ""

    def allowed(self) -> str:
        """What the field accepts, in words: ``an integer >= 1``, ``one of 'a', 'b'``, ``null or a number ...``."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.type is list:
            item = _TYPE_NAMES.get(self.items, "values") if self.items else "values"
            item = item.replace("an integer", "integers").replace("a number", "numbers").replace("a string", "strings")
            text = f"a list of {self.length or 'any number of'} {item}{self._bounds()}"
        else:
            text = _TYPE_NAMES[self.type] + self._bounds()
        return f"null or {text}" if self.nullable else text

    def _bounds(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        return (" " + " and ".join(parts)) if parts else ""

    def coerce(self, value: Any) -> Any:
        """``value`` converted to this field's type; raises ``ValueError`` (a bare reason) if it does not fit."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError("null is not allowed")
        if self.type is list:
            value = self._list(value)
        elif self.type is dict:
            value = self._mapping(value)
        else:
            value = _scalar(self.type, value)
            self._in_range(value)
        if self.choices is not None and value not in self.choices:
            raise ValueError("not an allowed value")
        problem = self.check(value) if self.check else None
        if problem:
            raise ValueError(problem)
        return value

    def _in_range(self, x: Any) -> None:
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            return
        if ((self.ge is not None and x < self.ge) or (self.gt is not None and x <= self.gt)
                or (self.le is not None and x > self.le) or (self.lt is not None and x >= self.lt)):
            raise ValueError("out of range")

    def _list(self, value: Any) -> list:
        if not isinstance(value, (list, tuple)):
            raise ValueError("not a list")
        if self.length is not None and len(value) != self.length:
            raise ValueError(f"{len(value)} items")
        items = [_scalar(self.items, v) if self.items else v for v in value]
        for x in items:
            self._in_range(x)
        return items

    @staticmethod
    def _mapping(value: Any) -> dict:
        if not isinstance(value, Mapping):
            raise ValueError("not a mapping")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ValueError(f"keys must be strings, got {bad[0]!r}")
        return copy.deepcopy(dict(value))


def _scalar(kind: type, value: Any) -> Any:
    """``value`` as ``kind``: numbers from numeric strings (``"4e-3"``), integral floats as ints; bools stay bools."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError("not true/false")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("not a string")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("not a number")
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        raise ValueError("not a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError("not a finite number")
    if kind is int:
        if isinstance(number, float) and not number.is_integer():
            raise ValueError("not an integer")
        return int(number)
    return float(number)


class Schema:
    """Fields plus cross-field rules; builds plain validated dicts from defaults, recipes and overrides."""

    def __init__(self, fields: Mapping[str, Field], rules: Sequence[Rule] = (), command: str = "regla train"):
        self.fields = dict(fields)
        self.rules = list(rules)
        self.command = command  # named in messages: `COMMAND --print-config` lists the keys

    def defaults(self) -> dict[str, Any]:
        """A fresh copy of every field's default."""
        return {k: copy.deepcopy(f.default) for k, f in self.fields.items()}

    def field(self, key: str, source: str) -> Field:
        """The field of ``key``; an unknown key is a ConfigError with the closest known keys."""
        if key in self.fields:
            return self.fields[key]
        close = difflib.get_close_matches(key, list(self.fields), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"{source}: unknown option {key!r}{hint} (`{self.command} --print-config` lists the keys)")

    def coerce(self, key: str, value: Any, source: str) -> Any:
        """``value`` checked and converted for ``key``; a ConfigError names source, key, value and what is allowed."""
        spec = self.field(key, source)
        try:
            return spec.coerce(value)
        except ValueError as e:
            raise ConfigError(f"{source}: {key} = {_show(value)}: {e}; expected {spec.allowed()}") from None

    def merge(self, base: Mapping[str, Any], updates: Mapping[str, Any], source: str) -> dict[str, Any]:
        """``base`` updated with ``updates`` (dotted keys set one entry of a mapping option), each value checked."""
        out = copy.deepcopy(dict(base))
        for key, value in updates.items():
            head, _, path = str(key).partition(".")
            if path:
                value = self._nested(out.get(head), head, path, value, source)
            out[head] = self.coerce(head, value, source)
        return out

    def _nested(self, current: Any, head: str, path: str, value: Any, source: str) -> dict[str, Any]:
        spec = self.field(head, source)
        if spec.type is not dict:
            raise ConfigError(f"{source}: {head} is not a mapping ({spec.allowed()}), so {head}.{path} cannot be set")
        root = copy.deepcopy(current) if isinstance(current, Mapping) else {}
        node = root
        parts = path.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        return root

    def build(self, config: str | None, overrides: Sequence[str] | None = None,
              base: Mapping[str, Any] | None = None, flags: Mapping[str, Any] | None = None,
              configs_dir: str = "") -> dict[str, Any]:
        """Defaults < ``base`` (demo / resumed run) < recipe file < ``flags`` (shortcut options) < ``key=value``.

        Returns a plain dict with every key, each value checked; raises :class:`ConfigError`.
        """
        cfg = self.merge(self.defaults(), base or {}, "built-in recipe")
        source = "built-in recipe"
        if config:
            path = find_config(config, configs_dir)
            cfg, source = self.merge(cfg, load_yaml(path), str(path)), str(path)
        if flags:
            cfg, source = self.merge(cfg, flags, "command line"), "command line"
        for text in overrides or []:
            key, value = parse_override(text)
            cfg, source = self.merge(cfg, {key: value}, f"--set {text}"), "the recipe with its overrides"
        self.validate(cfg, source)
        return cfg

    def validate(self, cfg: Mapping[str, Any], source: str = "recipe") -> None:
        """Check every field of a complete config, then the cross-field rules."""
        missing = [k for k in self.fields if k not in cfg]
        if missing:
            raise ConfigError(f"{source}: missing option(s) {', '.join(missing)}")
        for key in self.fields:
            self.coerce(key, cfg[key], source)
        for rule in self.rules:
            problem = rule(cfg)
            if problem:
                raise ConfigError(f"{source}: {problem}")


def _show(value: Any) -> str:
    text = repr(value)
    if isinstance(value, str):
        text += " (a string)"
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------------------------- recipe files


def find_config(name_or_path: str, subdir: str = "") -> Path:
    """Resolve ``name_or_path`` to a YAML file: a path, or a recipe name under ``configs/[subdir/]``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    roots = [Path(os.environ.get("REGLA_CONFIGS", "configs")), Path(__file__).resolve().parents[2] / "configs"]
    for root in roots:
        for folder in ((root / subdir, root) if subdir else (root,)):
            for cand in (folder / name_or_path, folder / f"{name_or_path}.yaml"):
                if cand.is_file():
                    return cand
    where = f"configs/{subdir + '/' if subdir else ''}"
    raise ConfigError(f"recipe {name_or_path!r} not found (not a file, nor a name under {where})")


def load_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one recipe file; it must be a mapping.

    A recipe may start from another with ``base: NAME_OR_PATH`` (resolved like ``-c``; relative paths from the
    recipe's folder) and change only what differs, as the ablation recipes of Tables 5-8 do.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: recipes include each other in a loop ({' -> '.join(map(str, _seen))})")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the recipe ({e.strerror})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of option: value")
    base = data.pop("base", None)
    if base is None:
        return data
    local = path.parent / str(base)
    parent = load_yaml(local if local.is_file() else find_config(str(base)), (*_seen, path))
    return {**parent, **data}


def dump(cfg: Mapping[str, Any]) -> str:
    """A recipe as YAML text (saved in each run folder as ``config.yaml``)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False)
