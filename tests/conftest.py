"""Fixtures shared by the test files (pytest finds them here; no test file imports another).

* ``tripwire``: replace long-work functions by ones that fail the test when called. Each target is a module object
  and a name, patched where the function is defined: a target that is only re-exported there (callers would not
  see the patch) or that has moved away fails at once, naming it, instead of leaving a tripwire nobody trips.
* ``patch``: the same check, for a function replaced by a fake rather than a tripwire.
* ``refused``: ``regla.cli.main(argv)`` exits 2 with one line on stderr, ``regla CMD: error: ...``, no traceback,
  holding every text asked for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import pytest

Target = tuple[ModuleType, str]


def patch_where_defined(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str, value: Any, *,
                        imported: bool = False) -> None:
    """``monkeypatch.setattr(module, name, value)`` after checking that ``module`` is where ``name`` is defined, so
    callers that import it on use see the patch. ``imported=True``: ``module`` imports ``name`` at its top from
    elsewhere and its own code calls it from there (checked the other way round). A third-party name such as
    ``timm.create_model`` is patched where our code looks it up, unchecked."""
    current = getattr(module, name)  # an AttributeError names a function that moved away
    owner = getattr(current, "__module__", None)
    if module.__name__.startswith("regla") and str(owner).startswith("regla"):  # not ours, or already patched
        if imported:
            assert owner != module.__name__, f"{module.__name__}.{name} is defined there now: drop imported=True"
        else:
            assert owner == module.__name__, f"{module.__name__}.{name} is defined in {owner}: patch it there"
    monkeypatch.setattr(module, name, value)


@pytest.fixture
def patch(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``patch(module, "name", value, imported=False)``: :func:`patch_where_defined` with this test's
    ``monkeypatch``."""
    return lambda module, name, value, **kw: patch_where_defined(monkeypatch, module, name, value, **kw)


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``tripwire((module, "name"), ...)``: each function fails the test if it is ever called."""

    def arm(*targets: Target, message: str = "the work started before the input was checked") -> None:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise AssertionError(message)

        for module, name in targets:
            patch_where_defined(monkeypatch, module, name, fail)

    return arm


@pytest.fixture
def refused(capsys: pytest.CaptureFixture) -> Callable[..., str]:
    """``refused(argv, says)``: ``main(argv)`` exits 2 with one ``regla CMD: error:`` line on stderr that contains
    ``says`` (a text, or every text of a list: paths are fine); returns the line."""
    from regla.cli import main

    def check(argv: Sequence[Any], says: str | Sequence[str]) -> str:
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, err
        assert len(lines) == 1 and "Traceback" not in err, err
        assert re.match(r"regla [a-z]+( [a-z]+)?: error: ", lines[0]), err
        for text in [says] if isinstance(says, str) else says:
            assert str(text) in lines[0], f"{text!r} not in: {lines[0]}"
        return lines[0]

    return check
