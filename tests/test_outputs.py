"""regla.outputs: atomic writes, the folder rule, the user's umask, and disk/permission failures as one-line errors."""

from __future__ import annotations

import errno
import json
import os
import tempfile

import pytest

from regla.cli import main
from regla.errors import RunFailure, UsageError
from regla.outputs import (
    atomic_output,
    atomic_write_bytes,
    atomic_write_text,
    check_not_clobbering,
    check_writable,
    resolve_output,
)


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_and_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "sub" / "a.json", "first")
        atomic_write_bytes(path, b"second")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"second" and names(path.parent) == ["a.json"]
    assert path.stat().st_mode & 0o777 == 0o640  # 0o666 & ~0o027; mkstemp alone gives 0o600


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, failure):
    path = atomic_write_text(tmp_path / "a.txt", "old")
    real_write = os.write

    def half_then_fail(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise failure()

    monkeypatch.setattr(os, "write", half_then_fail)
    with pytest.raises(failure):
        atomic_write_text(path, "new content that never lands")
    assert path.read_text() == "old" and names(tmp_path) == ["a.txt"]


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_is_a_run_failure_naming_the_path(tmp_path, monkeypatch, where):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, where, full)
    with pytest.raises(RunFailure) as err:
        atomic_write_text(tmp_path / "r.json", "{}")
    assert err.value.exit_code == 1 and "no space left" in str(err.value) and str(tmp_path / "r.json") in str(err.value)
    assert names(tmp_path) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_place_that_cannot_be_written_is_a_usage_error(tmp_path, monkeypatch, code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UsageError) as err:
        atomic_write_text(tmp_path / "r.json", "{}")
    assert err.value.exit_code == 2 and str(tmp_path / "r.json") in str(err.value)


def test_atomic_output_for_writers_that_need_a_path(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            assert tmp.name == "m.onnx" and tmp.parent != tmp_path  # same name, in a temporary sibling folder
            tmp.write_bytes(b"half")
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old" and names(tmp_path) == ["m.onnx"]
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and names(tmp_path) == ["m.onnx"]
    with pytest.raises(RunFailure, match="produced no file"):
        with atomic_output(tmp_path / "nothing.onnx"):
            pass
    assert names(tmp_path) == ["m.onnx"]


def test_atomic_output_replaces_a_folder_only_by_one_of_its_kind(tmp_path):
    def is_package(p):
        return (p / "Manifest.json").is_file()

    pkg = tmp_path / "m.mlpackage"
    for content in ("v1", "v2"):
        with atomic_output(pkg, directory=True, same_kind=is_package) as tmp:
            tmp.mkdir()
            (tmp / "Manifest.json").write_text(content)
    assert (pkg / "Manifest.json").read_text() == "v2" and names(tmp_path) == ["m.mlpackage"]
    with pytest.raises(KeyboardInterrupt):  # a failed rewrite leaves the previous package whole
        with atomic_output(pkg, directory=True, same_kind=is_package) as tmp:
            tmp.mkdir()
            raise KeyboardInterrupt
    assert (pkg / "Manifest.json").read_text() == "v2" and names(tmp_path) == ["m.mlpackage"]
    other = tmp_path / "data.mlpackage"
    other.mkdir()
    (other / "precious.txt").write_text("mine")
    with pytest.raises(UsageError, match="refusing to replace"):
        with atomic_output(other, directory=True, same_kind=is_package) as tmp:
            tmp.mkdir()
    assert (other / "precious.txt").read_text() == "mine"


def test_the_folder_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "old.mlpackage").mkdir()
    assert resolve_output(None, "m.onnx") == tmp_path.joinpath("m.onnx").relative_to(tmp_path)
    assert resolve_output(".", "m.onnx").resolve() == tmp_path / "m.onnx"  # `-o .` never means "replace ."
    assert resolve_output("out", "m.onnx") == tmp_path.joinpath("out", "m.onnx").relative_to(tmp_path)
    assert resolve_output("new/", "m.onnx").as_posix() == "new/m.onnx"
    assert resolve_output("x.onnx", "m.onnx").as_posix() == "x.onnx"
    assert resolve_output("old.mlpackage", "m.mlpackage", directory=True).as_posix() == "old.mlpackage"
    assert resolve_output("out", "m.mlpackage", directory=True).as_posix() == "out/m.mlpackage"


def test_preflight_checks(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert check_writable(tmp_path / "new" / "deeper" / "a.json")  # folders that can be created are fine
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_writable(blocker / "a.json")
    with pytest.raises(UsageError, match="--force"):
        check_not_clobbering(blocker)
    check_not_clobbering(blocker, force=True)
    check_not_clobbering(blocker, same_kind=lambda p: True)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(UsageError, match="not writable"):
        check_writable(tmp_path / "a.json")
    monkeypatch.undo()
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 1024})())
    with pytest.raises(RunFailure, match="MiB free"):
        check_writable(tmp_path / "a.json")


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "top1": 10.0 * e, "lr": 0.1 / e}
            for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_plot_into_an_existing_folder_keeps_its_files(run_dir, tmp_path, capsys):
    out = tmp_path / "figures"
    out.mkdir()
    (out / "sentinel.txt").write_text("keep")
    assert main(["plot", str(run_dir), "-o", str(out)]) == 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert names(out) == ["curves.png", "sentinel.txt"] and (out / "sentinel.txt").read_text() == "keep"
    assert f"wrote {out / 'curves.png'}" in capsys.readouterr().out


def test_plot_on_a_full_disk_is_one_line_and_exit_1(run_dir, capsys, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert main(["plot", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("regla plot: error: ") and "no space left" in err
    assert names(run_dir) == ["metrics.jsonl"]
