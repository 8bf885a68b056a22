"""The one run harness with a task that is not classification: what every trainer (distill, det, seg) relies on.

A tiny regression task with two named loss parts, extra state, a head that is not exported, and a score that is
not top-1: the parts are logged as ``train_<name>``, ``best.*`` follows ``score_key``, ``.safetensors`` holds only
``export_state``, a stop inside an epoch resumes to the same weights as an uninterrupted run, a resume with another
``arch`` is refused, and ``warmup_updates`` / ``multistep`` give the schedule mmdet's recipe asks for.
"""

from __future__ import annotations

import csv
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from regla.checkpoints import CheckpointError
from regla.config import Schema
from regla.errors import Stopped
from regla.runs import engine
from regla.runs.checkpoint_sets import load_checkpoint
from regla.runs.config import RUN_FIELDS, RUN_RULES, run_fields
from regla.runs.harness import RunError, build_optimizer_and_schedule, run
from regla.runs.task import Built


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 1)  # training-only (like a distillation head): not exported
        self.register_buffer("stat", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.stat += 1 if self.training else 0
        return self.head(self.body(x)).squeeze(1)


class Regression:
    """y = x . w; loss = mse + 0.1 * l1, evaluated as -mse (higher is better) on a fixed set."""

    command = "regla toy"
    score_key = "neg_mse"

    def __init__(self, width: int = 8) -> None:
        self.width = width
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(96, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def build(self, cfg, device, rank, world_size) -> Built:
        ds = torch.utils.data.TensorDataset(self.x, self.y)
        loader = torch.utils.data.DataLoader(ds, batch_size=cfg.run.batch_size, shuffle=True)
        return Built(model=Net(), train_loader=loader, extra={"toy": [1, 2]}, arch={"model": "toy", "w": self.width})

    def step(self, model, batch, device):
        x, y = batch
        out = model(x)
        mse = nn.functional.mse_loss(out, y)
        l1 = nn.functional.l1_loss(out, y)
        return mse + 0.1 * l1, {"mse": mse, "l1": l1}

    def evaluate(self, model, epoch):
        model.eval()
        with torch.no_grad():
            return {"neg_mse": -nn.functional.mse_loss(model(self.x), self.y).item()}

    def export_state(self, model):
        return {k: v for k, v in model.state_dict().items() if k.startswith("body.")}

    def weights_info(self, model, cfg):
        return None


SCHEMA = Schema({"model": RUN_FIELDS["output"].__class__(str, "toy")},
                run_fields(epochs=4, batch_size=16, lr=0.05, warmup_epochs=0, model_ema=False, workers=0,
                           sched="cosine", min_lr=0.0), rules=RUN_RULES)


def recipe(out, **kw):
    return SCHEMA.build(None, [f"{k}={v}" for k, v in {"output": str(out), **kw}.items()])


def test_parts_score_extra_and_export(tmp_path):
    result = run(Regression(), recipe(tmp_path / "run"), show_bar=False)
    rows = list(csv.DictReader(open(result.run_dir / "metrics.csv")))
    assert len(rows) == 4 and {"train_loss", "train_mse", "train_l1", "neg_mse", "best_neg_mse"} <= set(rows[0])
    assert float(rows[-1]["train_mse"]) < float(rows[0]["train_mse"])  # it learns
    scores = [float(r["neg_mse"]) for r in rows]
    assert result.best["score"] == pytest.approx(max(scores)) and result.best["epoch"] == scores.index(max(scores)) + 1
    ck = load_checkpoint(result.run_dir / "last.pth")
    assert ck["toy"] == [1, 2] and ck["arch"] == {"model": "toy", "w": 8} and "head.weight" in ck["model"]
    exported = load_file(result.run_dir / "last.safetensors")
    assert set(exported) == {k for k in ck["model"] if k.startswith("body.")}


class NanFirst(Regression):
    """The first evaluation scores NaN (as mmseg's mIoU of a set without a labelled pixel)."""

    def evaluate(self, model, epoch):
        return {"neg_mse": float("nan")} if epoch == 0 else super().evaluate(model, epoch)


def test_a_nan_score_is_never_the_best(tmp_path):
    result = run(NanFirst(), recipe(tmp_path / "run", epochs=2), show_bar=False)
    assert result.best["epoch"] == 2 and result.best["score"] == result.best["score"]  # not NaN


def test_stop_inside_an_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch):
    full = run(Regression(), recipe(tmp_path / "full"), show_bar=False)
    real, calls = engine.forward_loss, [0]

    def stop_at_ninth(ctx, batch):
        calls[0] += 1
        if calls[0] == 9:  # epoch 2 (6 batches an epoch), third batch
            os.kill(os.getpid(), signal.SIGTERM)
        return real(ctx, batch)

    monkeypatch.setattr(engine, "forward_loss", stop_at_ninth)
    with pytest.raises(Stopped, match="regla toy --resume"):
        run(Regression(), recipe(tmp_path / "cut"), show_bar=False)
    monkeypatch.setattr(engine, "forward_loss", real)
    resumed = run(Regression(), recipe(tmp_path / "cut"), resume=tmp_path / "cut", show_bar=False)
    a, b = load_checkpoint(full.run_dir / "last.pth"), load_checkpoint(resumed.run_dir / "last.pth")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ra = list(csv.DictReader(open(full.run_dir / "metrics.csv")))
    rb = list(csv.DictReader(open(resumed.run_dir / "metrics.csv")))
    assert [r["train_mse"] for r in ra] == [r["train_mse"] for r in rb]  # the meters resumed exactly too


def test_resume_refuses_another_arch_and_new_run_refuses_a_used_folder(tmp_path):
    run(Regression(), recipe(tmp_path / "run", epochs=1), show_bar=False)
    with pytest.raises(CheckpointError, match="w: 8 there, 16 here"):
        run(Regression(width=16), recipe(tmp_path / "run", epochs=2), resume=tmp_path / "run", show_bar=False)
    with pytest.raises(RunError, match="regla toy --resume"):
        run(Regression(), recipe(tmp_path / "run", epochs=1), show_bar=False)


def test_warmup_updates_and_multistep_follow_mmdet():
    """mmdet's Mask R-CNN 1x: linear warm-up over 500 iterations, x0.1 at epochs 8 and 11, 12 epochs."""
    cfg = recipe("unused", epochs=12, sched="multistep", decay_milestones="[8,11]", decay_rate=0.1,
                 warmup_updates=500, warmup_lr=0.0, lr=2e-4)
    model = nn.Linear(2, 2)
    _, sched, n = build_optimizer_and_schedule(cfg.run, model, 2e-4, updates_per_epoch=1000)
    lr = lambda t: sched._get_lr(t)[0]  # noqa: E731
    assert n == 12 and lr(250) == pytest.approx(1e-4) and lr(500) == pytest.approx(2e-4)
    assert lr(7999) == pytest.approx(2e-4)  # 8 whole epochs at the base LR, as mmdet's `step: [8, 11]`
    assert lr(7999) == pytest.approx(2e-4) and lr(8000) == pytest.approx(2e-5) and lr(11000) == pytest.approx(2e-6)


def test_multistep_on_epochs_decays_after_the_milestone_epoch():
    cfg = recipe("unused", epochs=12, sched="multistep", decay_milestones="[8,11]", sched_on_updates=False, lr=1.0)
    _, sched, _ = build_optimizer_and_schedule(cfg.run, nn.Linear(2, 2), 1.0, updates_per_epoch=10)
    assert [round(sched._get_lr(e)[0], 6) for e in (7, 8, 10, 11)] == [1.0, 0.1, 0.1, 0.01]
