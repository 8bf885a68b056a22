"""RepNeXt: a fast multi-scale CNN using structural reparameterization.

Paper: Zhao, Luo, Ouyang, "RepNeXt: A Fast Multi-Scale CNN using Structural Reparameterization",
arXiv:2406.16004. Official release: https://github.com/suous/RepNeXt.

Written for regla from the paper; module and parameter names follow the official release so that its
checkpoints (training form ``*.pth`` and fused TorchScript ``*_fused.pt``) load with ``strict=True``.

Structure (paper Sec. 3.1, Fig. 2):

* stem: two 3x3 stride-2 ``ConvNorm`` with GELU in between;
* four stages; stages 2-4 start with a ``RepNeXtDownsample`` (Eq. 2) whose token mixer is ``CopyConv`` (Sec. 3.3);
* ``MetaNeXtBlock`` (Eq. 1): ``Y = X + ChannelMixer(Norm(TokenMixer(X)))`` with ``ChunkConv`` (Sec. 3.2, Eqs. 3-6);
* classifier: BN + Linear, with the distillation head of the release (both heads always exist; their outputs
  are averaged at inference).

Structural reparameterization (``RepNeXt.fuse()`` or ``timm.utils.reparameterize_model``) folds every
``ConvNorm``/``NormLinear`` BN into its conv/linear, merges the training-time branches of ``RepDWConvS``
(3x3 + 1x3 + 3x1 + dilated 2x2) into one 3x3 depthwise kernel and those of ``RepDWConvM`` (7x7 + 5x3 + 3x5 +
1x7->7x1 + 1x5->5x1) into one 7x7 depthwise kernel, and averages the two classifier heads. As in the official
deploy form, the identity chunk stays an identity, the 1x11 -> 11x1 strip pair stays two convs (merging it into an
11x11 kernel would cost 121 instead of 22 MACs per pixel and is not exact at the borders because the first strip
has a bias), and the stand-alone ``norm`` BN after the token mixer is kept (the fused checkpoints contain it).

Table 5's ablations (Sec. 4.3) are constructor switches whose defaults are the published model: ``downsample``
(``"copy"`` / ``"conv3x3"``), ``kernel_branches`` (which ``ChunkConv`` branches have a kernel), ``small_kernel`` and
``medium_kernel`` (the SRP steps of ``RepDWConvS`` / ``RepDWConvM``). :data:`ABLATIONS` lists each row with its
switches and published figures; every combination fuses exactly (docs/repnext.md, "Table 5").
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import (
    adapt_input_conv,
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)
from timm.models._manipulate import checkpoint_seq
from torch import nn

from ._layers import BatchNorm1d, BatchNorm2d, ConvNorm, DistilledClassifier, StagedModelMixin, check_global_pool
from ._weights import filter_fn, read_raw

__all__ = ["ABLATIONS", "RepNeXt", "checkpoint_filter_fn", "load_official_state_dict", "PAPER_FIGURES"]

_RELEASE = "https://github.com/suous/RepNeXt/releases/download/v1.0/"

# Published figures of the paper (arXiv:2406.16004), quoted, never measured here. Table 2: params (M, deploy form),
# GMACs at 224, iPhone 12 Core ML latency (mean and std over 20 trials, ms), RTX3090 throughput (im/s) and top-1 with
# RegNetY-16GF distillation (``top1_distilled``); Table 3: top-1 without distillation (``top1``), as ReGLA's figures.
# M0 (a later release) is in neither table.
PAPER_FIGURES: dict[str, dict[str, float]] = {
    "repnext_m1": dict(params_m=4.8, gmacs=0.8, lat_ms=0.86, lat_std_ms=0.03, throughput=3885, top1=77.5,
                       top1_distilled=78.8),
    "repnext_m2": dict(params_m=6.5, gmacs=1.1, lat_ms=1.00, lat_std_ms=0.04, throughput=3198, top1=78.9,
                       top1_distilled=80.1),
    "repnext_m3": dict(params_m=7.8, gmacs=1.3, lat_ms=1.11, lat_std_ms=0.04, throughput=2903, top1=79.4,
                       top1_distilled=80.7),
    "repnext_m4": dict(params_m=13.3, gmacs=2.3, lat_ms=1.48, lat_std_ms=0.04, throughput=1745, top1=81.2,
                       top1_distilled=82.3),
    "repnext_m5": dict(params_m=21.7, gmacs=4.5, lat_ms=2.20, lat_std_ms=0.02, throughput=978, top1=82.4,
                       top1_distilled=83.3),
}


_NO_SRP = dict(small_kernel="plain", medium_kernel="plain")

# RepNeXt Table 5 (Sec. 4.3): ablations of RepNeXt-M1, 120 epochs on ImageNet-1K without distillation, quoted. Each
# row: the model and constructor switches that build it, and the published params (M, deploy form), iPhone 12
# latency (ms), RTX3090 throughput (im/s) and top-1 (%). The baseline is "RepNeXt-M1 without SRP"; the medium-kernel
# rows add SRP steps to it one after another, the small-kernel rows then to the last of them (whose last row is the
# published RepNeXt-M1). Recipes: configs/peers/repnext/<row>.yaml; ``regla models`` prints these rows.
ABLATIONS: dict[str, dict[str, Any]] = {
    "table5_row1_baseline": dict(model="repnext_m1", kwargs=_NO_SRP, params_m=4.82, lat_ms=0.86,
                                 throughput=3885, top1=75.34),
    "table5_row2_downsample_conv3x3": dict(model="repnext_m1", kwargs=dict(_NO_SRP, downsample="conv3x3"),
                                           params_m=4.89, lat_ms=0.87, throughput=4078, top1=74.45),
    "table5_row3_no_small_branch": dict(model="repnext_m1", kwargs=dict(_NO_SRP, kernel_branches=["medium", "large"]),
                                        params_m=4.81, lat_ms=0.85, throughput=4017, top1=75.22),
    "table5_row4_no_medium_branch": dict(model="repnext_m1", kwargs=dict(_NO_SRP, kernel_branches=["small", "large"]),
                                         params_m=4.77, lat_ms=0.85, throughput=4341, top1=75.25),
    "table5_row5_no_large_branch": dict(model="repnext_m1", kwargs=dict(_NO_SRP, kernel_branches=["small", "medium"]),
                                        params_m=4.79, lat_ms=0.84, throughput=4332, top1=75.22),
    "table5_row6_medium_5x5_3x3": dict(model="repnext_m1", kwargs=dict(small_kernel="plain", medium_kernel="square"),
                                       params_m=4.82, lat_ms=0.86, throughput=3885, top1=75.62),
    "table5_row7_medium_5x3_3x5": dict(model="repnext_m1",
                                       kwargs=dict(small_kernel="plain", medium_kernel="asymmetric"),
                                       params_m=4.82, lat_ms=0.86, throughput=3885, top1=75.69),
    "table5_row8_medium_serial_strips": dict(model="repnext_m1", kwargs=dict(small_kernel="plain"),
                                             params_m=4.82, lat_ms=0.86, throughput=3885, top1=75.71),
    "table5_row9_small_serial_strips": dict(model="repnext_m1", kwargs=dict(small_kernel="serial"),
                                            params_m=4.82, lat_ms=0.86, throughput=3885, top1=75.84),
    "table5_row10_small_parallel_strips": dict(model="repnext_m1", kwargs={}, params_m=4.82, lat_ms=0.86,
                                               throughput=3885, top1=75.97),
    "table5_row11_repvit_m0_9": dict(model="repvit_m0_9", kwargs={}, params_m=5.07, lat_ms=0.89,
                                     throughput=4817, top1=75.19),
    "table5_row12_repvit_m0_9_repnext_downsample": dict(model="repvit_m0_9_repnext_ds", kwargs={}, params_m=4.99,
                                                        lat_ms=0.89, throughput=4731, top1=75.32),
}

# --------------------------------------------------------------------------------------------------------------
# Normalization that tolerates a single value per channel (batch 1 in training mode).
# --------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------
# Kernel algebra used by the reparameterization (Sec. 3.2, "Reparameterized ... depthwise convolution").
# --------------------------------------------------------------------------------------------------------------


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` such that ``bn(x) == scale * x + shift`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _pad_to(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a centred ``(..., kh, kw)`` kernel to ``size`` (both differences must be even)."""
    dh, dw = size[0] - kernel.shape[-2], size[1] - kernel.shape[-1]
    return F.pad(kernel, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


def _dilate(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """Equivalent dense kernel of a dilated kernel: ``k`` taps spread ``dilation`` apart, zeros between."""
    kh, kw = kernel.shape[-2:]
    out = kernel.new_zeros(*kernel.shape[:-2], (kh - 1) * dilation + 1, (kw - 1) * dilation + 1)
    out[..., ::dilation, ::dilation] = kernel
    return out


def _strip_product(conv_w: nn.Conv2d, conv_h: nn.Conv2d) -> torch.Tensor:
    """Kernel of ``conv_h(conv_w(x))`` for bias-free depthwise ``1xk`` then ``kx1``: per-channel outer product."""
    return conv_h.weight * conv_w.weight  # (C,1,k,1) * (C,1,1,k) -> (C,1,k,k)


def _depthwise_conv(channels: int, kernel: torch.Tensor, bias: torch.Tensor, stride: int) -> nn.Conv2d:
    """A biased depthwise conv holding ``kernel``, with 'same' padding for odd square kernels."""
    k = kernel.shape[-1]
    conv = nn.Conv2d(channels, channels, k, stride=stride, padding=k // 2, groups=channels,
                     device=kernel.device, dtype=kernel.dtype)
    conv.weight.copy_(kernel)
    conv.bias.copy_(bias)
    return conv


def _dw(channels: int, kernel_size: tuple[int, int], stride: tuple[int, int], bias: bool,
        dilation: int = 1) -> nn.Conv2d:
    """Depthwise conv with 'same' padding for odd kernels (and the release's padding 1 for the dilated 2x2)."""
    padding = tuple(((k - 1) * dilation + 1) // 2 for k in kernel_size)
    return nn.Conv2d(channels, channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                     groups=channels, bias=bias)


# --------------------------------------------------------------------------------------------------------------
# Basic layers.
# --------------------------------------------------------------------------------------------------------------


class NormLinear(nn.Sequential):
    """BN1d followed by a linear layer (children ``norm``, ``linear``); ``fuse()`` folds the BN into the linear."""

    def __init__(self, in_features: int, out_features: int, std: float = 0.02) -> None:
        super().__init__()
        self.add_module("norm", BatchNorm1d(in_features))
        self.add_module("linear", nn.Linear(in_features, out_features))
        trunc_normal_(self.linear.weight, std=std)
        nn.init.zeros_(self.linear.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        scale, shift = _bn_scale_shift(self.norm)
        lin = self.linear
        fused = nn.Linear(lin.in_features, lin.out_features, device=lin.weight.device, dtype=lin.weight.dtype)
        fused.weight.copy_(lin.weight * scale[None, :])
        fused.bias.copy_(lin.weight @ shift + lin.bias)
        return fused


def channel_mixer(dim: int, hidden_dim: int, act_layer: Callable[[], nn.Module] = nn.GELU) -> nn.Sequential:
    """``ChannelMixer(X) = Conv1x1_down(GELU(Conv1x1_up(X)))`` of Eq. 1, with BN after each 1x1 conv."""
    return nn.Sequential(ConvNorm(dim, hidden_dim), act_layer(), ConvNorm(hidden_dim, dim))


# --------------------------------------------------------------------------------------------------------------
# Token mixers (Sec. 3.2 and 3.3).
# --------------------------------------------------------------------------------------------------------------


#: Switch values of the RepNeXt Table 5 ablations (Sec. 4.3); the last of each is the published model.
SMALL_KERNELS = ("plain", "serial", "parallel")
MEDIUM_KERNELS = ("plain", "square", "asymmetric", "strips")
KERNEL_BRANCHES = ("small", "medium", "large")
DOWNSAMPLES = ("copy", "conv3x3")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """A switch value outside ``choices`` is a ``ValueError`` naming the switch and the allowed values."""
    if value not in choices:
        raise ValueError(f"RepNeXt {name} must be one of {choices}, got {value!r}")


def _check_branches(branches: Sequence[str]) -> tuple[str, ...]:
    """``kernel_branches``: a subset of :data:`KERNEL_BRANCHES` without repeats (a missing branch is an identity)."""
    if isinstance(branches, str):
        raise ValueError(f"RepNeXt kernel_branches must be a list drawn from {KERNEL_BRANCHES}, got {branches!r}")
    branches = tuple(branches)
    for b in branches:
        _check_choice("kernel_branches entry", b, KERNEL_BRANCHES)
    if len(set(branches)) != len(branches):
        raise ValueError(f"RepNeXt kernel_branches repeats a branch: {list(branches)}")
    return branches


class RepDWConvS(nn.Module):
    """Reparameterized small-kernel depthwise conv, ``RepDWConvS`` of Eqs. 6-7.

    Stride 1 (Eq. 6): ``DW3x3 + DW1x3 + DW3x1 + DW2x2(d=2)`` in parallel. Stride 2 (Sec. 3.3, copy convolution):
    the strips run in series, ``DW3x3 + DW3x1(DW1x3) + DW2x2(d=2)``, and (as released) carry no bias.
    ``fuse()`` returns one 3x3 depthwise conv.

    ``rep`` selects the small-kernel rows of Table 5 (Sec. 4.3, "Structural reparameterization"): ``"plain"`` is the
    3x3 kernel alone (the ablation baseline without SRP), ``"serial"`` adds the serial ``1x3 -> 3x1`` strips and the
    dilated 2x2 at every stride, ``"parallel"`` (default, the published model) runs the strips in parallel at
    stride 1 and in series at stride 2.
    """

    def __init__(self, channels: int, stride: int = 1, rep: str = "parallel") -> None:
        super().__init__()
        _check_choice("small_kernel", rep, SMALL_KERNELS)
        self.stride = stride
        self.serial = rep == "serial" or stride != 1
        self.conv_3_3 = _dw(channels, (3, 3), (stride, stride), bias=True)
        self.conv_3_w: nn.Conv2d | None = None
        self.conv_3_h: nn.Conv2d | None = None
        self.conv_2_2: nn.Conv2d | None = None
        if rep != "plain":
            self.conv_3_w = _dw(channels, (1, 3), (1, stride), bias=not self.serial)
            self.conv_3_h = _dw(channels, (3, 1), (stride, 1), bias=not self.serial)
            self.conv_2_2 = _dw(channels, (2, 2), (stride, stride), bias=True, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_3_3(x)
        if self.conv_3_w is None or self.conv_3_h is None or self.conv_2_2 is None:
            return y
        if self.serial:
            strips = self.conv_3_h(self.conv_3_w(x))
        else:
            strips = self.conv_3_w(x) + self.conv_3_h(x)
        return y + strips + self.conv_2_2(x)

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of the single 3x3 depthwise conv equal to this module."""
        w, b = self.conv_3_3.weight, self.conv_3_3.bias
        if self.conv_3_w is None or self.conv_3_h is None or self.conv_2_2 is None:
            return w, b
        w = w + _dilate(self.conv_2_2.weight, 2)
        b = b + self.conv_2_2.bias
        if self.serial:
            w = w + _strip_product(self.conv_3_w, self.conv_3_h)
        else:
            w = w + _pad_to(self.conv_3_w.weight, (3, 3)) + _pad_to(self.conv_3_h.weight, (3, 3))
            b = b + self.conv_3_w.bias + self.conv_3_h.bias
        return w, b

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        w, b = self.fused_kernel()
        return _depthwise_conv(w.shape[0], w, b, self.stride)


class RepDWConvM(nn.Module):
    """Reparameterized medium-kernel depthwise conv, ``RepDWConvM`` of Eqs. 6-7 (five kernel patterns).

    ``DW7x7 + DW5x3 + DW3x5 + DW7x1(DW1x7) + DW5x1(DW1x5)``; the serial strips carry no bias.
    ``fuse()`` returns one 7x7 depthwise conv.

    ``rep`` selects the medium-kernel rows of Table 5 (Sec. 4.3): ``"plain"`` is the 7x7 kernel alone (the
    baseline without SRP), ``"square"`` adds parallel 5x5 and 3x3 kernels, ``"asymmetric"`` replaces them by 5x3 and
    3x5, ``"strips"`` (default, the published model) also adds the serial ``1x7 -> 7x1`` and ``1x5 -> 5x1`` strips.
    """

    def __init__(self, channels: int, stride: int = 1, rep: str = "strips") -> None:
        super().__init__()
        _check_choice("medium_kernel", rep, MEDIUM_KERNELS)
        self.stride = stride
        self.conv_7_7 = _dw(channels, (7, 7), (stride, stride), bias=True)
        # parallel kernels (the release's names: ``conv_5_3`` / ``conv_3_5``); absent ones are None
        self.conv_5_5 = _dw(channels, (5, 5), (stride, stride), bias=True) if rep == "square" else None
        self.conv_3_3 = _dw(channels, (3, 3), (stride, stride), bias=True) if rep == "square" else None
        asym = rep in ("asymmetric", "strips")
        self.conv_5_3 = _dw(channels, (5, 3), (stride, stride), bias=True) if asym else None
        self.conv_3_5 = _dw(channels, (3, 5), (stride, stride), bias=True) if asym else None
        self.conv_7_w: nn.Conv2d | None = None
        self.conv_7_h: nn.Conv2d | None = None
        self.conv_5_w: nn.Conv2d | None = None
        self.conv_5_h: nn.Conv2d | None = None
        if rep == "strips":
            self.conv_7_w = _dw(channels, (1, 7), (1, stride), bias=False)
            self.conv_7_h = _dw(channels, (7, 1), (stride, 1), bias=False)
            self.conv_5_w = _dw(channels, (1, 5), (1, stride), bias=False)
            self.conv_5_h = _dw(channels, (5, 1), (stride, 1), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_7_7(x)
        if self.conv_5_5 is not None and self.conv_3_3 is not None:
            y = y + self.conv_5_5(x) + self.conv_3_3(x)
        if self.conv_5_3 is not None and self.conv_3_5 is not None:
            y = y + self.conv_5_3(x) + self.conv_3_5(x)
        if self.conv_7_w is None or self.conv_7_h is None or self.conv_5_w is None or self.conv_5_h is None:
            return y
        return y + self.conv_7_h(self.conv_7_w(x)) + self.conv_5_h(self.conv_5_w(x))

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of the single 7x7 depthwise conv equal to this module."""
        size = (7, 7)
        w, b = self.conv_7_7.weight, self.conv_7_7.bias
        for conv in (self.conv_5_5, self.conv_3_3, self.conv_5_3, self.conv_3_5):
            if conv is not None:
                w = w + _pad_to(conv.weight, size)
                b = b + conv.bias
        if self.conv_7_w is None or self.conv_7_h is None or self.conv_5_w is None or self.conv_5_h is None:
            return w, b
        w = (w + _strip_product(self.conv_7_w, self.conv_7_h)
             + _pad_to(_strip_product(self.conv_5_w, self.conv_5_h), size))
        return w, b

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        w, b = self.fused_kernel()
        return _depthwise_conv(w.shape[0], w, b, self.stride)


class ChunkConv(nn.Module):
    """Chunk convolution, Algorithm 1 / Eqs. 3-5: split channels in four, ``(identity, S, M, 1x11->11x1)``, concat.

    The large branch ("equivalent large-kernel depthwise convolution") is two biased strip convs ``conv_l.0`` (1x11)
    and ``conv_l.1`` (11x1), kept as is by ``fuse()``. A branch left out of ``branches`` (Table 5, "Kernel
    branches") passes its quarter of the channels through unchanged, like the identity chunk.
    """

    def __init__(self, dim: int, large_kernel: int = 11, branches: Sequence[str] = KERNEL_BRANCHES,
                 small_kernel: str = "parallel", medium_kernel: str = "strips") -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"ChunkConv needs channels divisible by 4, got {dim}")
        c = dim // 4
        self.conv_s: nn.Module = RepDWConvS(c, rep=small_kernel) if "small" in branches else nn.Identity()
        self.conv_m: nn.Module = RepDWConvM(c, rep=medium_kernel) if "medium" in branches else nn.Identity()
        self.conv_l: nn.Module = nn.Sequential(
            _dw(c, (1, large_kernel), (1, 1), bias=True),
            _dw(c, (large_kernel, 1), (1, 1), bias=True),
        ) if "large" in branches else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, s, m, l = torch.chunk(x, 4, dim=1)
        return torch.cat((i, self.conv_s(s), self.conv_m(m), self.conv_l(l)), dim=1)


class CopyConv(nn.Module):
    """Copy convolution, Algorithm 2 / Eqs. 7-8: ``Concat(RepDWConvS_s2(X), RepDWConvM_s2(X))``, doubling channels."""

    def __init__(self, dim: int, small_kernel: str = "parallel", medium_kernel: str = "strips") -> None:
        super().__init__()
        self.conv_s = RepDWConvS(dim, stride=2, rep=small_kernel)
        self.conv_m = RepDWConvM(dim, stride=2, rep=medium_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.conv_s(x), self.conv_m(x)), dim=1)


# --------------------------------------------------------------------------------------------------------------
# Blocks, stages, stem, classifier.
# --------------------------------------------------------------------------------------------------------------


class RepNeXtStem(nn.Module):
    """Stem of Sec. 3.1: two 3x3 stride-2 convs (``ConvNorm``) with GELU in between; overall stride 4."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.stride = 4
        self.stem = nn.Sequential(
            ConvNorm(in_chs, out_chs // 2, 3, stride=2, padding=1),
            act_layer(),
            ConvNorm(out_chs // 2, out_chs, 3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


class MetaNeXtBlock(nn.Module):
    """MetaNeXt block, Eq. 1: ``Y = X + ChannelMixer(Norm(ChunkConv(X)))``."""

    def __init__(self, dim: int, mlp_ratio: float = 2.0, act_layer: Callable[[], nn.Module] = nn.GELU,
                 **mixer: Any) -> None:
        super().__init__()
        self.token_mixer = ChunkConv(dim, **mixer)
        self.norm = BatchNorm2d(dim)
        self.channel_mixer = channel_mixer(dim, int(dim * mlp_ratio), act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.channel_mixer(self.norm(self.token_mixer(x)))


class RepNeXtDownsample(nn.Module):
    """Downsampling MetaNeXt block, Eq. 2: ``X^ = Norm(CopyConv(X)); Y = X^ + ChannelMixer(X^)``; C -> 2C, H/2, W/2."""

    def __init__(self, dim: int, mlp_ratio: float = 2.0, act_layer: Callable[[], nn.Module] = nn.GELU,
                 small_kernel: str = "parallel", medium_kernel: str = "strips") -> None:
        super().__init__()
        out_dim = dim * 2
        self.token_mixer = CopyConv(dim, small_kernel, medium_kernel)
        self.norm = BatchNorm2d(out_dim)
        self.channel_mixer = channel_mixer(out_dim, int(out_dim * mlp_ratio), act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.token_mixer(x))
        return x + self.channel_mixer(x)


class RepNeXtStage(nn.Module):
    """One stage: optional downsampling (stages 2-4) then ``depth`` ``MetaNeXtBlock``s.

    ``downsample``: ``"copy"`` is the ``RepNeXtDownsample`` of Eq. 2; ``"conv3x3"`` the Table 5 row "simple 3x3
    convolution" (Sec. 4.3, "Downsampling layer"): one 3x3 stride-2 conv + BN from ``in_dim`` to ``out_dim``;
    ``"none"`` keeps the resolution (the first stage). ``mixer`` holds the ``ChunkConv``/``CopyConv`` switches.
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int, mlp_ratio: float = 2.0,
                 act_layer: Callable[[], nn.Module] = nn.GELU, downsample: str = "copy",
                 kernel_branches: Sequence[str] = KERNEL_BRANCHES, small_kernel: str = "parallel",
                 medium_kernel: str = "strips") -> None:
        super().__init__()
        if downsample == "copy":
            if out_dim != 2 * in_dim:
                raise ValueError(f"copy convolution doubles channels: {in_dim} -> {out_dim} is not possible")
            self.downsample: nn.Module = RepNeXtDownsample(in_dim, mlp_ratio, act_layer, small_kernel, medium_kernel)
        elif downsample == "conv3x3":
            self.downsample = ConvNorm(in_dim, out_dim, 3, stride=2, padding=1)
        else:
            if in_dim != out_dim:
                raise ValueError(f"stage without downsampling keeps channels: {in_dim} != {out_dim}")
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            MetaNeXtBlock(out_dim, mlp_ratio, act_layer, branches=kernel_branches, small_kernel=small_kernel,
                          medium_kernel=medium_kernel)
            for _ in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


# --------------------------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------------------------


class RepNeXt(StagedModelMixin, nn.Module):
    """RepNeXt (Sec. 3.1, Fig. 2): stem, four stages of ``MetaNeXtBlock``s joined by ``RepNeXtDownsample``, head.

    Args:
        in_chans: input channels.
        num_classes: classes of the classifier (0 for none).
        embed_dim: channels of each stage; each must be twice the previous one (copy convolution).
        depth: ``MetaNeXtBlock``s per stage.
        mlp_ratio: channel-mixer expansion.
        global_pool: ``'avg'`` or ``''``.
        act_layer: activation of stem and channel mixers.
        distillation: start in distilled training mode (return both heads while training).
        drop_rate: dropout before the classifier.
        fused: build the inference (reparameterized) form directly, e.g. to load ``*_fused.pt`` checkpoints.
        drop_path_rate: accepted for timm's generic callers; RepNeXt has no stochastic depth, so only 0.
        downsample: ``"copy"`` (Eq. 2) or ``"conv3x3"`` (Table 5, "simple 3x3 convolution").
        kernel_branches: the ``ChunkConv`` branches that have a kernel, from ``("small", "medium", "large")``; a
            missing one is an identity (Table 5, "remove small/medium/large kernel").
        small_kernel: ``RepDWConvS`` training-time branches, ``"plain"`` / ``"serial"`` / ``"parallel"`` (Table 5).
        medium_kernel: ``RepDWConvM`` training-time branches, ``"plain"`` / ``"square"`` / ``"asymmetric"`` /
            ``"strips"`` (Table 5).

    The defaults are the published model. Every switch value is checked (``ValueError`` naming the allowed values),
    and an argument the constructor does not know is a ``TypeError``, as for any Python function.
    """

    __jit_unused_properties__ = ["is_fused"]  # Python-only (isinstance over module types): not compiled by TorchScript

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: Sequence[int] = (48, 96, 192, 384),
        depth: Sequence[int] = (3, 3, 15, 2),
        mlp_ratio: float = 2.0,
        global_pool: str = "avg",
        act_layer: Callable[[], nn.Module] = nn.GELU,
        distillation: bool = False,
        drop_rate: float = 0.0,
        fused: bool = False,
        drop_path_rate: float = 0.0,
        downsample: str = "copy",
        kernel_branches: Sequence[str] = KERNEL_BRANCHES,
        small_kernel: str = "parallel",
        medium_kernel: str = "strips",
    ) -> None:
        super().__init__()
        check_global_pool(global_pool)
        if drop_path_rate:
            raise ValueError(f"RepNeXt has no stochastic depth: drop_path_rate must be 0, got {drop_path_rate}")
        _check_choice("downsample", downsample, DOWNSAMPLES)
        _check_choice("small_kernel", small_kernel, SMALL_KERNELS)
        _check_choice("medium_kernel", medium_kernel, MEDIUM_KERNELS)
        mixer = dict(kernel_branches=_check_branches(kernel_branches), small_kernel=small_kernel,
                     medium_kernel=medium_kernel)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.embed_dim = tuple(embed_dim)
        self.grad_checkpointing = False

        self.stem = RepNeXtStem(in_chans, embed_dim[0], act_layer)
        self.stages, self.feature_info = self._build_stages(embed_dim, depth, mlp_ratio, act_layer, downsample, mixer)
        self.num_features = self.head_hidden_size = embed_dim[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = self._make_head(num_classes, distillation)
        if fused:
            self.fuse()

    def _build_stages(self, embed_dim: Sequence[int], depth: Sequence[int], mlp_ratio: float,
                      act_layer: Callable[[], nn.Module], downsample: str,
                      mixer: dict[str, Any]) -> tuple[nn.Sequential, list[dict[str, Any]]]:
        stages, feature_info = [], []
        in_dim, stride = embed_dim[0], self.stem.stride
        for i, (dim, d) in enumerate(zip(embed_dim, depth, strict=True)):
            stages.append(RepNeXtStage(in_dim, dim, d, mlp_ratio, act_layer, downsample=downsample if i else "none",
                                       **mixer))
            stride *= 2 if i > 0 else 1
            feature_info.append(dict(num_chs=dim, reduction=stride, module=f"stages.{i}"))
            in_dim = dim
        return nn.Sequential(*stages), feature_info

    # ---- timm protocol -------------------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            ],
        )

    @property
    def is_fused(self) -> bool:
        """True once no training-time branch (``ConvNorm``, ``Rep*`` convs, two-head classifier) is left."""
        training_only = (ConvNorm, NormLinear, RepDWConvS, RepDWConvM, DistilledClassifier)
        return not any(isinstance(m, training_only) for m in self.modules())

    def _make_head(self, num_classes: int, distillation: bool | None = None) -> nn.Module:
        """The release's classifier: two BN + Linear heads (averaged at inference); one Linear once fused."""
        if self.is_fused:
            return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        head = DistilledClassifier(self.num_features, num_classes, distillation=True, layer=NormLinear)
        head.distilled_training = bool(distillation)
        return head

    def _input_check(self, x: torch.Tensor) -> None:
        """RepNeXt takes any input timm's layers take; nothing to check."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---- reparameterization and checkpoints ----------------------------------------------------------------
    def load_pretrained(self, checkpoint_path: str | Path) -> None:
        """Load an official checkpoint file (``.pth``/``.pth.tar`` training form or TorchScript ``_fused.pt``).

        Used by timm for the ``custom_load`` pretrained configs below. A fused checkpoint fuses this model first.
        If the classifier size differs from the checkpoint's, the classifier keeps its initialization; with
        ``in_chans != 3`` the first conv's weights are adapted as timm's own loader does (``adapt_input_conv``).
        """
        state_dict = checkpoint_filter_fn(load_official_state_dict(checkpoint_path), self)
        own = self.state_dict()
        first = "stem.stem.0.conv.weight" if isinstance(self.stem.stem[0], ConvNorm) else "stem.stem.0.weight"
        if first in state_dict and state_dict[first].shape[1] != own[first].shape[1]:
            state_dict[first] = adapt_input_conv(self.in_chans, state_dict[first])
        dropped = [k for k in state_dict if k.startswith("head.")
                   and (k not in own or own[k].shape != state_dict[k].shape)]
        for k in dropped:
            del state_dict[k]
        result = self.load_state_dict(state_dict, strict=not dropped)
        if dropped and any(not k.startswith("head.") for k in result.missing_keys + result.unexpected_keys):
            raise RuntimeError(f"checkpoint does not match the model: {result}")


# --------------------------------------------------------------------------------------------------------------
# Checkpoint conversion.
# --------------------------------------------------------------------------------------------------------------


def load_official_state_dict(path: str | Path) -> dict[str, Any]:
    """Read an official RepNeXt checkpoint file without executing pickled code (:func:`regla.checkpoints.read_raw`).

    TorchScript archives (the release's ``*_fused.pt``) give their state dict; other files are read with
    ``torch.load(weights_only=True)``, allowing the ``argparse.Namespace`` the release's training scripts store.
    """
    return read_raw(path)[0]


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official checkpoint -> our state dict (:func:`regla.checkpoints.filter_fn`).

    Keys are identical; this unwraps the release's containers (``{'model': ...}`` from its DeiT-style ``main.py``,
    ``{'state_dict': ...}`` from its timm-style ``moganet_train.py``), strips a DDP ``module.`` prefix, and, for a fused
    (deploy-form) checkpoint, fuses ``model`` in place so that the keys match.
    """
    return filter_fn(state_dict, model)


# --------------------------------------------------------------------------------------------------------------
# Registry.
# --------------------------------------------------------------------------------------------------------------


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.stem.0.conv",
        "classifier": ("head.head.linear", "head.head_dist.linear"),
        "license": "apache-2.0",
        "paper_ids": "arXiv:2406.16004",
        "origin_url": "https://github.com/suous/RepNeXt",
        "custom_load": True,  # release files may hold an argparse.Namespace or be TorchScript: RepNeXt.load_pretrained
        **kwargs,
    }


def _release_cfgs() -> dict[str, dict[str, Any]]:
    cfgs: dict[str, dict[str, Any]] = {}
    for v in ("m0", "m1", "m2", "m3", "m4", "m5"):
        # RepViT training recipe, distilled, 300 epochs (README table 1); the first tag is the default.
        cfgs[f"repnext_{v}.dist_300e_in1k"] = _cfg(_RELEASE + f"repnext_{v}_distill_300e.pth")
        cfgs[f"repnext_{v}.dist_300e_in1k_fused"] = _cfg(
            _RELEASE + f"repnext_{v}_distill_300e_fused.pt", first_conv="stem.stem.0", classifier="head")
    for v in ("m0", "m1", "m2"):
        # StarNet training recipe (README table 2), eval crop 0.9.
        cfgs[f"repnext_{v}.starnet_dist_300e_in1k"] = _cfg(
            _RELEASE + f"repnext_{v}_sz224_4xbs256_ep300_distill.pth.tar", crop_pct=0.9)
        cfgs[f"repnext_{v}.starnet_300e_in1k"] = _cfg(
            _RELEASE + f"repnext_{v}_sz224_4xbs512_ep300.pth.tar", crop_pct=0.9)
    return cfgs


default_cfgs = generate_default_cfgs(_release_cfgs())


def _fused_tag(variant: str, kwargs: dict[str, Any]) -> bool:
    """True when the pretrained cfg timm resolves for this call is a ``*_fused`` tag (weights in deploy form)."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    return (cfg.tag or "").endswith("_fused")


def _create_repnext(variant: str, pretrained: bool = False, **kwargs: Any) -> RepNeXt:
    """Build through timm; a ``*_fused`` tag builds the fused (deploy) form its weights and cfg names belong to."""
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    if _fused_tag(variant, kwargs):
        kwargs.setdefault("fused", True)
    return build_model_with_cfg(
        RepNeXt,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


# (embed_dim, depth) of the release's model/repnext.py; M1-M5 are Table 2's models, M0 a later compact release.
_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "m0": ((40, 80, 160, 320), (2, 2, 9, 1)),
    "m1": ((48, 96, 192, 384), (3, 3, 15, 2)),
    "m2": ((56, 112, 224, 448), (3, 3, 15, 2)),
    "m3": ((64, 128, 256, 512), (3, 3, 13, 2)),
    "m4": ((64, 128, 256, 512), (5, 5, 25, 4)),
    "m5": ((80, 160, 320, 640), (7, 7, 35, 2)),
}


def _variant(name: str, pretrained: bool, kwargs: dict[str, Any]) -> RepNeXt:
    embed_dim, depth = _VARIANTS[name]
    return _create_repnext(f"repnext_{name}", pretrained=pretrained, **dict(dict(embed_dim=embed_dim, depth=depth),
                                                                           **kwargs))


@register_model
def repnext_m0(pretrained: bool = False, **kwargs: Any) -> RepNeXt:
    """RepNeXt-M0 (compact model of the official release, not in the paper's tables)."""
    return _variant("m0", pretrained, kwargs)


@register_model
def repnext_m1(pretrained: bool = False, **kwargs: Any) -> RepNeXt:
    """RepNeXt-M1 (paper figures: ``PAPER_FIGURES['repnext_m1']``)."""
    return _variant("m1", pretrained, kwargs)


@register_model
def repnext_m2(pretrained: bool = False, **kwargs: Any) -> RepNeXt:
    """RepNeXt-M2 (paper figures: ``PAPER_FIGURES['repnext_m2']``)."""
    return _variant("m2", pretrained, kwargs)


@register_model
def repnext_m3(pretrained: bool = False, **kwargs: Any) -> RepNeXt:
    """RepNeXt-M3 (paper figures: ``PAPER_FIGURES['repnext_m3']``)."""
    return _variant("m3", pretrained, kwargs)


@register_model
def repnext_m4(pretrained: bool = False, **kwargs: Any) -> RepNeXt:
    """RepNeXt-M4 (paper figures: ``PAPER_FIGURES['repnext_m4']``)."""
    return _variant("m4", pretrained, kwargs)


@register_model
def repnext_m5(pretrained: bool = False, **kwargs: Any) -> RepNeXt:
    """RepNeXt-M5 (paper figures: ``PAPER_FIGURES['repnext_m5']``)."""
    return _variant("m5", pretrained, kwargs)
