"""Two-process gloo DDP on CPU (under torchrun) gives one process's gradients on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from regla.train.engine import StepContext, backward, forward_loss
from regla.train.modeling import create_student
from regla.train.trainer import build_criterion
from train_helpers import ddp_batch, ddp_recipe

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_grads() -> dict[str, torch.Tensor]:
    cfg = ddp_recipe()
    torch.manual_seed(0)
    model = create_student(cfg, num_classes=5).double()
    cpu = torch.device("cpu")
    ctx = StepContext(model=model, criterion=build_criterion(cfg, 5, cpu), device=cpu,
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    x, y = ddp_batch()
    backward(ctx, forward_loss(ctx, x, y), need_update=False)
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
