"""Parameter and MAC counting, shared by ``regla models`` and ``regla bench``.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2), the convention the
papers' "GFLOPs"/"MACs" columns follow for convolutions and matmuls. Element-wise ops are not counted.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int | tuple[int, int] = 224, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (FLOPs / 2 from ``FlopCounterMode``)."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    p = next(model.parameters(), None)
    x = torch.zeros(1, in_chans, h, w, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
