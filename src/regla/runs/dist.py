"""Where a process sits in a job (torchrun / SLURM / one process), its seeds and its numeric precision."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


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
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def setup_distributed(cfg: dict[str, Any]) -> Dist:
    """timm's ``init_distributed_device_so``: torchrun/SLURM environment -> process group (NCCL or gloo)."""
    from timm.utils.distributed import init_distributed_device_so

    info = init_distributed_device_so(device=resolve_device(cfg["device"]))
    return Dist(device=torch.device(info["device"]), rank=info["global_rank"], world_size=info["world_size"],
                local_rank=info["local_rank"], distributed=info["distributed"])


def setup_determinism(cfg: dict[str, Any], d: Dist) -> None:
    """Threads, seeds (seed + rank, timm's ``random_seed``) and, if asked, deterministic kernels."""
    from timm.utils import random_seed

    if cfg["torch_threads"]:
        torch.set_num_threads(int(cfg["torch_threads"]))
    random_seed(cfg["seed"], d.rank)
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=d.device.type != "cpu")
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def amp_dtype(cfg: dict[str, Any]) -> torch.dtype | None:
    """The autocast dtype of a recipe (None: AMP off)."""
    if not cfg["amp"]:
        return None
    return torch.bfloat16 if cfg["amp_dtype"] == "bfloat16" else torch.float16
