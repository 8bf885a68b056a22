"""Run under torchrun by tests/test_train_ddp.py: one DDP training step on this rank's half of a fixed batch.

Writes rank 0's gradients (which DDP has averaged over ranks) for sync_bn False and True to argv[1].
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from regla.runs.distributed import count_sync_bn, setup_distributed, wrap_ddp
from regla.runs.engine import StepContext, backward, forward_loss
from regla.train.modeling import create_student
from regla.train.task import build_criterion
from train_helpers import MODEL, criterion_step, ddp_batch, ddp_recipe


def main(out: str) -> None:
    cfg = ddp_recipe()
    d = setup_distributed(cfg.run.device)
    assert d.distributed and d.world_size == 2 and dist.get_backend() == "gloo"
    x, y = ddp_batch()
    half = x.shape[0] // 2
    xs, ys = x[d.rank * half:(d.rank + 1) * half], y[d.rank * half:(d.rank + 1) * half]
    result = {"model": MODEL}
    for sync_bn in (False, True):
        torch.manual_seed(0)
        model = create_student(cfg, num_classes=5).double()
        ddp = wrap_ddp(model, d.device, sync_bn=sync_bn, distributed=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        ctx = StepContext(model=ddp, step=criterion_step(build_criterion(cfg, 5, d.device)), optimizer=opt,
                          device=d.device)
        backward(ctx, forward_loss(ctx, (xs, ys))[0], need_update=False)
        result[f"sync_{sync_bn}"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        result[f"n_sync_{sync_bn}"] = count_sync_bn(ddp)
    if d.rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
