"""Fault matrix of a training run: a failure at every write and rename of a checkpoint set, a full disk, SIGTERM
mid-epoch, a second SIGINT; then a resume. Every case ends with the weights of an uninterrupted run, and nothing
outside the run folder is touched. Also: a moved run folder resumes in place, changed classes are refused, and the
``.safetensors`` carry their metadata."""

from __future__ import annotations

import errno
import os
import shutil
import signal

import pytest
import torch

from regla.checkpoints import read_weights
from regla.errors import EXIT_SIGINT, EXIT_SIGTERM, Stopped
from regla.runs.checkpoint_sets import COMMIT_LOG, load_checkpoint
from regla.train.config import data_settings
from regla.train.trainer import train
from train_helpers import make_folder, save_hook, tiny_recipe

EPOCHS = 2
FAULT_SAVE = 1  # the first epoch's save: it always writes the whole set (last and best, .pth and .safetensors)
FAST = dict(epochs=EPOCHS, batch_size=4, model_ema=True, model_ema_decay=0.5, drop_path=0.1, hflip=0.5)


class Injected(RuntimeError):
    """The failure a hook injects."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Data, an uninterrupted run, and the steps of its last checkpoint-set write."""
    root = tmp_path_factory.mktemp("faults")
    data = make_folder(root / "data", classes=2, train_per_class=6, val_per_class=2)
    steps: list[tuple[int, str]] = []
    saves = [0]

    def record(what: str) -> None:
        if what == "write last.pth":
            saves[0] += 1
        steps.append((saves[0], what))

    with save_hook(record):
        full = train(tiny_recipe(data, root / "full", **FAST), show_bar=False)
    fault_steps = [what for n, what in steps if n == FAULT_SAVE]
    return data, load_checkpoint(full.run_dir / "last.pth"), fault_steps


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] == EPOCHS
    for key in ("model", "model_ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"


def listing(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def fail_at(step: str, error: Exception):
    """A hook that raises ``error`` at ``step`` of the FAULT_SAVE-th checkpoint write."""
    saves = [0]

    def hook(what: str) -> None:
        if what == "write last.pth":
            saves[0] += 1
        if saves[0] == FAULT_SAVE and what == step:
            raise error
    return hook


def run_with_fault(data, out, hook) -> None:
    with save_hook(hook), pytest.raises((Injected, OSError)):
        train(tiny_recipe(data, out, **FAST), show_bar=False)


def one_epoch(data, out):
    """A finished one-epoch run in ``out``."""
    return train(tiny_recipe(data, out, **dict(FAST, epochs=1)), show_bar=False)


def continue_run(data, out):
    """What a user does next: resume the run if it has a checkpoint (or a committed one), else start it again."""
    resumable = (out / "last.pth").exists() or (out / COMMIT_LOG).exists()
    return train(tiny_recipe(data, out, **FAST), resume=out if resumable else None, show_bar=False)


def test_the_save_protocol_has_the_expected_steps(reference):
    _, _, steps = reference
    assert steps[0] == "write last.pth" and "commit" in steps and steps[-1] == "clear log"
    assert steps.index("commit") > max(i for i, s in enumerate(steps) if s.startswith("write"))


@pytest.mark.parametrize("step_index", range(10))
def test_failure_at_every_step_of_a_checkpoint_write_resumes_to_the_same_weights(reference, tmp_path, step_index):
    data, full, steps = reference
    if step_index >= len(steps):
        pytest.fail(f"the first save has {len(steps)} steps: update the matrix")
    step = steps[step_index]
    outside = listing(data)
    out = tmp_path / "run"
    run_with_fault(data, out, fail_at(step, Injected(step)))
    assert (out / COMMIT_LOG).exists() == (steps.index(step) > steps.index("commit"))
    resumed = continue_run(data, out)
    assert_same_weights(full, load_checkpoint(resumed.run_dir / "last.pth"))
    left = [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".pending")) or p.name == COMMIT_LOG]
    assert not left, f"leftovers after resume: {left}"
    best = read_weights(out / "best.safetensors").state
    assert all(torch.equal(best[k], v) for k, v in load_checkpoint(out / "best.pth")["model_ema"].items()), \
        "best.pth and best.safetensors are from different epochs"
    assert listing(data) == outside


def test_full_disk_during_a_write_resumes_to_the_same_weights(reference, tmp_path, monkeypatch):
    data, full, _ = reference
    out = tmp_path / "run"
    run_with_fault(data, out, fail_at("write best.safetensors",
                                       OSError(errno.ENOSPC, "No space left on device")))
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    resumed = continue_run(data, out)
    assert_same_weights(full, load_checkpoint(resumed.run_dir / "last.pth"))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, EXIT_SIGTERM), (signal.SIGINT, EXIT_SIGINT)])
def test_signal_mid_epoch_saves_a_position_that_resumes_exactly(reference, tmp_path, monkeypatch, signum, code):
    data, full, _ = reference
    from regla.runs import engine

    calls = [0]
    real = engine.forward_loss

    def signalling_forward(ctx, batch):
        calls[0] += 1
        if calls[0] == 5:  # epoch 2 (3 batches an epoch), second batch
            os.kill(os.getpid(), signum)
        return real(ctx, batch)

    monkeypatch.setattr(engine, "forward_loss", signalling_forward)
    out = tmp_path / "run"
    with pytest.raises(Stopped) as stop:
        train(tiny_recipe(data, out, **FAST), show_bar=False)
    assert stop.value.exit_code == code and f"regla train --resume {out}" in str(stop.value)
    ck = load_checkpoint(out / "last.pth")
    assert ck["epoch"] == 1 and ck["position"]["step"] == 2
    monkeypatch.setattr(engine, "forward_loss", real)
    resumed = train(tiny_recipe(data, out, **FAST), resume=out, show_bar=False)
    assert_same_weights(full, load_checkpoint(resumed.run_dir / "last.pth"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the run


def test_second_sigint_stops_at_once(reference, tmp_path, monkeypatch):
    data, _, _ = reference
    from regla.runs import engine

    real = engine.forward_loss

    def twice(ctx, batch):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return real(ctx, batch)

    monkeypatch.setattr(engine, "forward_loss", twice)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe(data, tmp_path / "run", **FAST), show_bar=False)


def test_a_moved_run_folder_resumes_in_place(reference, tmp_path):
    data, _, _ = reference
    first = tmp_path / "first"
    one_epoch(data, first)
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    first.mkdir()
    (first / "sentinel.txt").write_text("another run lives here now")
    from regla.cli import main

    assert main(["train", "--resume", str(moved), "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(moved / "last.pth")["epoch"] == 2
    assert [p.name for p in first.iterdir()] == ["sentinel.txt"]


def test_resume_refuses_changed_class_names(reference, tmp_path):
    data, _, _ = reference
    out = tmp_path / "run"
    one_epoch(data, out)
    renamed = tmp_path / "renamed"
    shutil.copytree(data, renamed)
    for split in ("train", "val"):
        (renamed / split / "class_0").rename(renamed / split / "class_9")
    from regla.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="other classes"):
        train(tiny_recipe(renamed, out, **FAST), resume=out, show_bar=False)
    again = train(tiny_recipe(renamed, out, **dict(FAST, allow_class_change=True)), resume=out, show_bar=False)
    assert again.last["epoch"] == 2


def test_safetensors_carry_model_classes_and_input_size(reference, tmp_path):
    data, _, _ = reference
    out = tmp_path / "run"
    cfg = tiny_recipe(data, out, **dict(FAST, epochs=1))
    train(cfg, show_bar=False)
    info = read_weights(out / "best.safetensors").info
    t = data_settings(cfg).task  # the transform keys the run recorded (the model's pretrained_cfg)
    assert info.model == t.model and info.num_classes == 2 and info.class_names == ["class_0", "class_1"]
    assert info.input_size == (3, t.img_size, t.img_size) and info.crop_pct == t.crop_pct
    assert info.mean == tuple(t.mean) and info.fused is False
    assert (out / "best.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
