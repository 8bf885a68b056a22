"""regla's layout as a reader sees it: imports point one way, and ``regla --help`` needs no torch.

The layer table follows docs/architecture.md ("Importing regla, and the layers"): a package may import its own
layer and the layers above it, never one below; no two packages, and no two modules (inside one package too), may
import each other in a cycle; the trainers do not import each other, and nothing imports ``regla.train`` but itself
and the CLI table. The imports are read statically (``ast``), at module level and inside functions alike.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "regla"

#: Top to bottom: a package imports only its own layer and the layers above it.
LAYERS: list[set[str]] = [
    {"errors", "outputs", "preflight", "utils"},  # error types, safe writes, input checks, counting
    {"checkpoints"},  # reading any weights file
    {"config"},  # the typed recipe schema
    {"models"},  # architectures (timm style)
    {"data"},  # datasets and readers
    {"deploy"},  # export and runtimes: train/eval may use them, never the other way
    {"runs"},  # the one run harness
    {"train", "distill", "eval", "dense", "sam"},  # trainers and evaluation, on the harness
    {"bench"},  # the side-by-side runner over deploy's runtimes
    {"cli"},  # the one `regla` entry
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

#: Modules that still import down the table, with the owner and the fix (xfail, strict): none today.
KNOWN_VIOLATIONS: dict[str, tuple[str, bool]] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """``regla.train.cli`` -> ``train``; ``regla.errors`` -> ``errors``; ``regla`` -> ``""`` (the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported_modules(path: Path) -> set[str]:
    """Every ``regla`` module ``path`` imports, anywhere in the file (relative imports resolved)."""
    this = module_name(path)
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = this.split(".")[: len(this.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # ``from pkg import module`` names a module
    return {m for m in found if m == "regla" or m.startswith("regla.")}


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_edges() -> dict[str, set[str]]:
    """Package -> packages it imports (the root ``regla`` and self-imports left out)."""
    edges: dict[str, set[str]] = {}
    for name, path in all_modules().items():
        src = package_of(name)
        for target in imported_modules(path):
            dst = package_of(target)
            if src and dst and dst != src:
                edges.setdefault(src, set()).add(dst)
    return edges


def test_every_package_has_a_layer():
    unknown = sorted({package_of(m) for m in all_modules()} - set(RANK) - {""})
    assert not unknown, f"add {unknown} to LAYERS here and to the table in docs/architecture.md"


def _marks(module: str) -> list:
    if module not in KNOWN_VIOLATIONS:
        return []
    reason, failing = KNOWN_VIOLATIONS[module]
    return [pytest.mark.xfail(failing, strict=True, reason=reason)]


@pytest.mark.parametrize("module", [pytest.param(m, marks=_marks(m)) for m in all_modules() if package_of(m)])
def test_imports_point_up_the_table(module):
    src = package_of(module)
    down = sorted(t for t in imported_modules(all_modules()[module])
                  if package_of(t) and RANK.get(package_of(t), -1) > RANK[src])
    assert not down, f"{module} ({src}, layer {RANK[src]}) imports {down}, lower in the table"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle in the package graph, as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, [*stack, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_cycle_between_packages():
    edges = package_edges()
    for module in KNOWN_VIOLATIONS:  # judged by the test above; this one is about the rest
        src = package_of(module)
        edges[src] = {d for d in edges.get(src, ()) if RANK.get(d, -1) <= RANK[src]}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


#: Module cycles being removed elsewhere, with the owner (xfail, strict: the mark must go when the cycle does).
KNOWN_MODULE_CYCLES: dict[frozenset[str], str] = {}

#: The five trainers: none imports another (``regla.X.cli`` modules and the run harness are what they share).
TRAINERS = ("train", "distill", "dense", "sam")


def module_edges() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (a name imported from a module resolves to that module)."""
    modules = all_modules()
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in imported_modules(path):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def module_cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Every group of modules that import one another, directly or not (strongly connected, two or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for start in sorted(edges):
        if start not in index:
            visit(start)
    return groups


def cycle_path(edges: dict[str, set[str]], group: set[str]) -> str:
    """One cycle through ``group``, as ``a -> b -> a``."""
    inner = {m: edges.get(m, set()) & group for m in group}
    return " -> ".join(find_cycle(inner) or sorted(group))


def _cycle_params() -> list:
    params = []
    for group in module_cycles(module_edges()):
        reason = KNOWN_MODULE_CYCLES.get(frozenset(group))
        marks = [pytest.mark.xfail(True, strict=True, reason=reason)] if reason else []
        params.append(pytest.param(sorted(group), marks=marks, id=min(group)))
    for known, reason in KNOWN_MODULE_CYCLES.items():  # a known cycle that is gone: its entry must go too
        if known not in [frozenset(p.values[0]) for p in params]:
            params.append(pytest.param(sorted(known), marks=[pytest.mark.xfail(True, strict=True, reason=reason)],
                                       id=f"gone:{min(known)}"))
    return params or [pytest.param([], id="none")]


@pytest.mark.parametrize("group", _cycle_params())
def test_no_cycle_between_modules(group):
    """No module imports itself back through others (inside a package too): each group of modules that does is one
    failure naming a cycle through it. A known cycle's xfail fails (strict) once the cycle is gone."""
    edges = module_edges()
    live = [g for g in module_cycles(edges) if g == set(group)]
    assert not live, f"modules import each other in a cycle: {cycle_path(edges, live[0])}"
    assert not group or frozenset(group) not in KNOWN_MODULE_CYCLES, "the cycle is gone: drop it from " \
        "KNOWN_MODULE_CYCLES"


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainers_do_not_import_each_other(trainer):
    found = sorted(f"{m} -> {t}" for m, targets in module_edges().items() if package_of(m) == trainer
                   for t in targets if package_of(t) in TRAINERS and package_of(t) != trainer)
    assert not found, f"the {trainer} trainer imports another trainer: {found}"


def test_nothing_below_the_cli_imports_train():
    """``regla.train`` is a trainer, not a library: eval, distill, dense and sam take what they share from data/,
    eval/, checkpoints and runs/."""
    found = sorted(f"{m} -> {t}" for m, targets in module_edges().items()
                   if package_of(m) in ("eval", "distill", "dense", "sam") for t in targets if package_of(t) == "train")
    assert not found, f"imports of regla.train: {found}"


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    """The checks above would pass vacuously if the walker missed imports: check it on known ones."""
    assert "regla.deploy.export" in imported_modules(PACKAGE / "bench" / "runner.py")  # inside a function
    assert "regla.errors" in imported_modules(PACKAGE / "outputs.py")  # relative, module level
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "regla.eval.loop" in module_edges()["regla.train.task"]  # absolute, module level
    assert "regla.eval.knn" in module_edges()["regla.distill.task"]  # inside a function
    groups = module_cycles({"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"e"}})
    assert groups == [{"a", "b", "c"}]
    assert cycle_path({"a": {"b"}, "b": {"a", "c"}, "c": set()}, {"a", "b"}) == "a -> b -> a"


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_regla_help_imports_no_torch():
    proc = _python("-X", "importtime", "-m", "regla.cli", "--help")
    assert proc.returncode == 0 and "COMMAND" in proc.stdout, proc.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
    assert "regla.cli" in imported or "regla" in imported  # the import log is there to be read
    assert not [m for m in imported if m.split(".")[0] in ("torch", "timm", "numpy")], "regla --help imported them"


@pytest.mark.parametrize("order", ["regla first", "timm first"])
def test_import_regla_registers_the_models_in_either_order(order):
    first, second = ("regla", "timm") if order == "regla first" else ("timm", "regla")
    code = (f"import sys; import {first}; "
            + ("assert 'torch' not in sys.modules, 'import regla alone imported torch'; " if first == "regla" else "")
            + f"import {second}; import timm; "
            "assert timm.is_model('regla_m') and timm.is_model('repnext_m1'); "
            + ("print(type(timm.create_model('regla_t')).__name__)" if first == "regla" else "print('ReGLA')"))
    proc = _python("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ReGLA", proc.stderr[-2000:]
