"""Two-process gloo DDP on CPU (under torchrun) gives one process's gradients on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regla.runs.engine import StepContext, backward, forward_loss
from regla.train.modeling import create_student
from regla.train.task import build_criterion
from train_helpers import criterion_step, ddp_batch, ddp_recipe, free_port

HERE = Path(__file__).resolve().parent


def single_process_grads() -> dict[str, torch.Tensor]:
    cfg = ddp_recipe()
    torch.manual_seed(0)
    model = create_student(cfg, num_classes=5).double()
    cpu = torch.device("cpu")
    ctx = StepContext(model=model, step=criterion_step(build_criterion(cfg, 5, cpu)), device=cpu,
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    x, y = ddp_batch()
    backward(ctx, forward_loss(ctx, (x, y))[0], need_update=False)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_process_gloo_ddp_matches_one_process(tmp_path):
    out = tmp_path / "grads.pt"
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           f"--master_port={free_port()}", str(HERE / "train_ddp_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    ref = single_process_grads()
    assert ddp["n_sync_False"] == 0 and ddp["n_sync_True"] > 0  # SyncBN when (and only when) asked
    assert max_diff(ddp["sync_True"], ref) < 1e-5
    # without SyncBN each rank normalises with its own half-batch statistics, so gradients differ
    assert max_diff(ddp["sync_False"], ref) > 1e-4


def test_regla_train_under_torchrun_with_sync_bn_and_resume(tmp_path):
    """The whole `regla train` under 2-process torchrun on CPU: DDP, SyncBN, EMA, checkpoint with both ranks' RNG
    states, then a resumed epoch."""
    import yaml

    from regla.runs.checkpoint_sets import load_checkpoint
    from train_helpers import make_folder, tiny_recipe

    data = make_folder(tmp_path / "data", classes=3, train_per_class=8, val_per_class=3)
    cfg = tiny_recipe(data, tmp_path / "out", epochs=1, batch_size=4, sync_bn=True, model_ema=True, workers=1,
                      mixup=0.8)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg.flat()))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "regla.cli", "train",
            "--no-progress"]
    for extra in (["-c", str(tmp_path / "r.yaml")], ["--resume", str(tmp_path / "out"), "--set", "epochs=2"]):
        proc = subprocess.run(base[:4] + [f"--master_port={free_port()}"] + base[4:] + extra, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert proc.stdout.count("done:") == 1  # one report, from rank 0
    ck = load_checkpoint(tmp_path / "out" / "last.pth")
    assert ck["epoch"] == 2 and len(ck["rng"]) == 2  # both ranks' RNG streams are saved ...
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # ... and they differ (seed + rank)
    assert "global batch 8" in proc.stdout  # 2 processes x 4


def _rank_pids(parent: int) -> dict[int, int]:
    """RANK -> pid of the worker processes torchrun started (read from /proc; Linux)."""
    from pathlib import Path

    out = {}
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = next((int(e.split(b"=")[1]) for e in env if e.startswith(b"RANK=")), None)
        if rank is not None:
            out[rank] = int(child)
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker pids from /proc")
def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """A preemption signal reaching only rank 1 stops both ranks after the same step (the stop flag is all-reduced);
    rank 0 saves a checkpoint with both ranks' RNG state, and the run resumes under torchrun."""
    import signal
    import time

    import yaml

    from regla.runs.checkpoint_sets import load_checkpoint
    from train_helpers import make_folder, tiny_recipe

    data = make_folder(tmp_path / "data", classes=3, train_per_class=8, val_per_class=2)
    cfg = tiny_recipe(data, tmp_path / "out", epochs=40, batch_size=4, warmup_epochs=0)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg.flat()))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "regla.cli", "train", "--no-progress", "-c", str(tmp_path / "r.yaml")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (tmp_path / "out" / "last.pth").exists():
        assert proc.poll() is None and time.time() - t0 < 240, "no first checkpoint"
        time.sleep(0.05)
    os.kill(_rank_pids(proc.pid)[1], signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "Resume with: regla train --resume" in out, out[-3000:]
    ck = load_checkpoint(tmp_path / "out" / "last.pth")
    assert 1 <= ck["epoch"] < 40 and len(ck["rng"]) == 2
    if ck["position"] is not None:  # stopped inside an epoch: both ranks' state at its start and now
        assert len(ck["position"]["epoch_rng"]) == 2 and ck["position"]["step"] >= 1
    resume = cmd[:4] + [f"--master_port={free_port()}"] + cmd[5:-2] + [
        "--resume", str(tmp_path / "out"), "--set", f"epochs={ck['epoch'] + 1}"]
    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert load_checkpoint(tmp_path / "out" / "last.pth")["epoch"] == ck["epoch"] + 1
