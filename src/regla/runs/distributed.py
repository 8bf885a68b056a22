"""Where a process sits in a job (torchrun / SLURM / one process), its seeds and its numeric precision; SyncBN and DDP.

SyncBN and DDP for every trainer: timm's ``convert_sync_batchnorm`` on GPUs, a gloo SyncBN on CPU.
PyTorch's ``nn.SyncBatchNorm`` only runs on GPUs. On CPU (gloo) ``sync_bn: true`` swaps each BatchNorm for
:class:`GlooSyncBatchNorm`, which computes the batch statistics over all ranks with differentiable all-reduces, so a
CPU DDP run normalises exactly as one process on the global batch would (used by the tests and CPU clusters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    """Where this process sits in the job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def primary(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> str:
    """The one meaning of ``device: auto`` for every command: the CUDA GPU if PyTorch sees one, else the CPU (an
    Apple GPU is used only when named: ``mps``). Other names are returned as they are (checked by
    :func:`regla.preflight.check_device`)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def setup_distributed(device: str) -> Dist:
    """timm's ``init_distributed_device_so``: torchrun/SLURM environment -> process group (NCCL or gloo), on
    ``device`` (a name; ``auto``: :func:`resolve_device`)."""
    from timm.utils.distributed import init_distributed_device_so

    info = init_distributed_device_so(device=resolve_device(device))
    return Dist(device=torch.device(info["device"]), rank=info["global_rank"], world_size=info["world_size"],
                local_rank=info["local_rank"], distributed=info["distributed"])


def setup_determinism(run: Any, d: Dist) -> None:
    """The run section's threads, seeds (seed + rank, timm's ``random_seed``) and, if asked, deterministic kernels."""
    from timm.utils import random_seed

    if run.torch_threads:
        torch.set_num_threads(int(run.torch_threads))
    random_seed(run.seed, d.rank)
    if run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=d.device.type != "cpu")
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def amp_dtype(run: Any) -> torch.dtype | None:
    """The autocast dtype of a run section (``recipe.run``; None: AMP off)."""
    if not run.amp:
        return None
    return torch.bfloat16 if run.amp_dtype == "bfloat16" else torch.float16



class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients (each rank's loss uses the global sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over every rank (differentiable all-reduce; works on gloo/CPU).

    Two passes (mean, then centred second moment) give the same numbers as ``BatchNorm2d`` on the global batch.
    Keeps ``act``/``drop`` of timm's ``BatchNormAct2d`` when converted from one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            y = nn.BatchNorm2d.forward(self, x)
        else:
            y = self._synced(x)
        if hasattr(self, "act"):
            y = self.act(self.drop(y))
        return y

    def _synced(self, x: torch.Tensor) -> torch.Tensor:
        all_reduce = _AllReduceSum.apply
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        n = all_reduce(count.detach().clone())
        mean = all_reduce(x.sum(dims)) / n
        var = all_reduce(((x - mean[None, :, None, None]) ** 2).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


_SYNC_CLASSES: dict[type, type] = {nn.BatchNorm2d: GlooSyncBatchNorm}


def convert_gloo_sync_bn(module: nn.Module) -> nn.Module:
    """Swap every ``BatchNorm2d`` (incl. timm's ``BatchNormAct2d``) for :class:`GlooSyncBatchNorm` in place."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d) and not isinstance(m, GlooSyncBatchNorm):
            base = type(m)
            if base not in _SYNC_CLASSES:
                _SYNC_CLASSES[base] = type(f"GlooSync{base.__name__}", (GlooSyncBatchNorm, base), {})
            m.__class__ = _SYNC_CLASSES[base]
    return module


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """SyncBN for DDP: timm's ``convert_sync_batchnorm`` on GPUs, :class:`GlooSyncBatchNorm` on CPU."""
    if device.type == "cpu":
        return convert_gloo_sync_bn(model)
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def count_sync_bn(model: nn.Module) -> int:
    """Number of synchronised BatchNorm layers in ``model``."""
    return sum(isinstance(m, (nn.SyncBatchNorm, GlooSyncBatchNorm)) for m in model.modules())


def wrap_ddp(model: nn.Module, device: torch.device, sync_bn: bool, distributed: bool) -> nn.Module:
    """Optionally convert to SyncBN, then wrap in ``DistributedDataParallel`` when running distributed."""
    if distributed and sync_bn:
        model = convert_sync_bn(model, device)
    if not distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
