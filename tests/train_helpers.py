"""Shared test helpers: tiny image folders and CPU recipes (regla_t at 32 px), KNN features, a free port."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

torch.set_num_threads(1)  # the test machine's cores are shared

MODEL = os.environ.get("REGLA_TEST_MODEL", "regla_t")
SIZE = 32


def pattern(label: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """An RGB image whose class is visible: a bright bar in a class-specific position, plus noise."""
    img = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
    band = size // 4
    start = (label * band) % (size - band + 1)
    img[:, start:start + band, label % 3] = 230
    return img


def make_folder(root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4,
                size: int = 16, seed: int = 0) -> Path:
    """``root/{train,val}/class_<k>/<n>.png`` with learnable patterns."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(pattern(k, rng, size)).save(d / f"{i:03d}.png")
    return root


def tiny_recipe(data_dir: Path, output: Path, **overrides: Any) -> Any:
    """A seconds-long deterministic CPU recipe on ``data_dir`` (a :class:`regla.config.Recipe`)."""
    from regla.train.config import build_config

    base = dict(model=MODEL, data_dir=str(data_dir), output=str(output), img_size=SIZE, crop_pct=1.0, epochs=2,
                batch_size=8, lr=2e-3, warmup_epochs=0, aa=None, mixup=0.0, cutmix=0.0, reprob=0.0,
                color_jitter=0.0, hflip=0.0, scale=[0.8, 1.0], model_ema=False, workers=0, device="cpu",
                torch_threads=1, deterministic=True, seed=0)
    base.update(overrides)
    return build_config(None, base=base)


def ddp_recipe() -> Any:
    """Recipe of the DDP gradient test: no stochastic layers, label smoothing on."""
    from regla.train.config import build_config

    return build_config(None, base=dict(model=MODEL, device="cpu", mixup=0.0, cutmix=0.0, drop_path=0.0,
                                        smoothing=0.1))


def ddp_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed global batch (the same in every process), in float64 so that only the algorithm can differ."""
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, 3, SIZE, SIZE, generator=g, dtype=torch.float64), torch.randint(0, 5, (n,), generator=g)


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, as after training (fresh ones hide fusion errors: zero-init
    residual branches)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def eval_args(data: Path, ckpt: Path, **kw: Any):
    """``regla eval`` arguments (an ``argparse.Namespace``) for ``data`` and ``ckpt``, CPU, no workers, batch 4."""
    import argparse

    from regla.eval import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    argv = ["--data", str(data), "--checkpoint", str(ckpt), "--device", "cpu", "--workers", "0", "--batch-size", "4"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return p.parse_args(argv)


def criterion_step(criterion):
    """A task step that applies a ``regla train`` criterion (images, outputs, targets) to an (x, y) batch."""
    def step(model, batch, device):
        x, y = batch
        return criterion(x, model(x), y), {}
    return step


def free_port() -> int:
    """A free TCP port on localhost for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def knn_features(n_bank=203, n_query=57, dim=16, classes=7, seed=0):
    """Unit features of a bank and queries around ``classes`` random centres (tests/test_knn.py and its DDP worker)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    bank_y = torch.randint(0, classes, (n_bank,), generator=g)
    query_y = torch.randint(0, classes, (n_query,), generator=g)
    bank = F.normalize(centres[bank_y] + 1.5 * torch.randn(n_bank, dim, generator=g), dim=1)
    queries = F.normalize(centres[query_y] + 1.5 * torch.randn(n_query, dim, generator=g), dim=1)
    return bank, bank_y, queries, query_y, classes


@contextlib.contextmanager
def save_hook(hook):
    """Every checkpoint-set write of the harness calls ``hook(step)`` at each step of its protocol (fault injection
    through the public :func:`regla.runs.checkpoint_sets.save_checkpoint` and its ``hook`` argument)."""
    import pytest

    from regla.runs import checkpoint_sets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint_sets, "save_checkpoint", functools.partial(checkpoint_sets.save_checkpoint, hook=hook))
        yield
