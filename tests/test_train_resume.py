"""Kill-and-resume: a run SIGKILLed after an epoch and resumed ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from regla.runs.checkpoint_sets import load_checkpoint
from regla.train.trainer import train
from train_helpers import make_folder, tiny_recipe

# every source of randomness on: RandAugment, random erasing, mixup/cutmix, flips, crops, drop path, EMA, a worker
AUGMENTED = dict(epochs=3, batch_size=8, aa="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0,
                 hflip=0.5, scale=[0.5, 1.0], drop_path=0.1, model_ema=True, model_ema_decay=0.9, workers=1,
                 warmup_epochs=1, lr=1e-3)


def start_killable_run(cfg: dict, tmp_path) -> subprocess.Popen:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg.flat()))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "regla.cli", "train", "-c", str(recipe), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_after_first_checkpoint(proc: subprocess.Popen, ckpt, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not ckpt.exists():
        if proc.poll() is not None:
            raise AssertionError("training exited before its first checkpoint:\n" + proc.stdout.read()[-3000:])
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("no checkpoint within the timeout")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    data = make_folder(tmp_path / "data", classes=3, train_per_class=8, val_per_class=2)
    full = train(tiny_recipe(data, tmp_path / "full", **AUGMENTED), show_bar=False)

    cfg = tiny_recipe(data, tmp_path / "killed", **AUGMENTED)
    proc = start_killable_run(cfg, tmp_path)
    kill_after_first_checkpoint(proc, tmp_path / "killed" / "last.pth")
    assert proc.returncode == -signal.SIGKILL
    done_before_kill = load_checkpoint(tmp_path / "killed" / "last.pth")["epoch"]
    assert 1 <= done_before_kill < 3, "the run was not interrupted"

    resumed = train(cfg, resume=tmp_path / "killed", show_bar=False)
    a = load_checkpoint(full.run_dir / "last.pth")
    b = load_checkpoint(resumed.run_dir / "last.pth")
    assert a["epoch"] == b["epoch"] == 3
    for key in ("model", "model_ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    rows_a = [json.loads(x) for x in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]  # no duplicated or lost epochs in the log
    for ra, rb in zip(rows_a, rows_b, strict=True):  # the same curve
        assert ra["train_loss"] == rb["train_loss"] and ra["lr"] == rb["lr"] and ra["top1_ema"] == rb["top1_ema"]


def test_resume_restores_optimizer_scheduler_and_rng(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=1)
    cfg = tiny_recipe(data, tmp_path / "run", epochs=1, batch_size=4, model_ema=True)
    train(cfg, show_bar=False)
    ck = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ck["optimizer"]["state"], "optimizer moments are saved"
    assert ck["scheduler"] is not None and len(ck["rng"]) == 1
    assert {"python", "numpy", "torch"} <= set(ck["rng"][0])
    again = train(cfg.replace(epochs=2), resume=tmp_path / "run", show_bar=False)
    assert again.last["epoch"] == 2


def test_rows_of_a_run_that_died_before_its_first_checkpoint_are_dropped(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=1)
    out = tmp_path / "run"
    out.mkdir()
    # what a `regla train` killed before its first checkpoint leaves: its lock record (the process is gone) and logs
    (out / ".regla-run.lock").write_text(json.dumps({"command": "regla train", "pid": 1}) + "\n")
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 99.0}) + "\n")
    (out / "metrics.csv").write_text("epoch,train_loss\n1,99.0\n")
    train(tiny_recipe(data, out, epochs=1, batch_size=4), show_bar=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["train_loss"] != 99.0
    assert "99.0" not in (out / "metrics.csv").read_text()
    (out / "last.pth").unlink()  # best.pth alone still marks a run that must not be overwritten
    from regla.runs.harness import RunError

    with pytest.raises(RunError, match="best.pth"):
        train(tiny_recipe(data, out, epochs=1, batch_size=4), show_bar=False)
