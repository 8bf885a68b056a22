"""scripts/conv_kernels.py: the chains it times close on their input and its MAC counts match torch's counter."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
conv_kernels = pytest.importorskip("conv_kernels")


@pytest.mark.parametrize("kind,conv", [
    ("dw5x5", nn.Conv2d(24, 24, 5, padding=2, groups=24)),
    ("dw3x3", nn.Conv2d(16, 16, 3, padding=1, groups=16)),
    ("pw", nn.Conv2d(8, 32, 1)),
])
@pytest.mark.parametrize("links", [1, 3])
def test_chain_closes_and_counts_its_macs(kind, conv, links):
    x = torch.randn(1, conv.in_channels, 12, 10)
    k = conv_kernels.Kernel("m", kind, "s1", conv, [x], count=2)
    model = conv_kernels.chain(k, links)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = model(x)
    assert y.shape == x.shape  # a chain of any length runs on the model's input
    assert counter.get_total_flops() // 2 == links * k.link_macs
    assert k.macs == conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] \
        * conv.kernel_size[1] * 12 * 10
    assert k.link_macs == (2 if kind == "pw" else 1) * k.macs


def test_table_costs_each_convolution_at_its_rate():
    x = torch.randn(1, 8, 4, 4)
    dw = conv_kernels.Kernel("m", "dw3x3", "s1", nn.Conv2d(8, 8, 3, padding=1, groups=8), [x], count=3)
    pw = conv_kernels.Kernel("m", "pw", "s1", nn.Conv2d(8, 16, 1), [x], count=1)
    for k, link_ms in ((dw, 2.0), (pw, 4.0)):
        k.ms = {b: link_ms for b in conv_kernels.BACKENDS}
    text = conv_kernels.table([dw, pw])
    # the dw row: 3 occurrences at 2 ms each; the pw row: a link (conv and its transpose) of 4 ms, so 2 ms per conv
    assert "| m | dw3x3 | s1 | 3 |" in text and "| 6.0 |" in text
    assert "| m | **all** |" in text and "**8.0**" in text
