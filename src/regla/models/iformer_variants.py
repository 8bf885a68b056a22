"""iFormer's ablation models (iFormer paper, §3.2-3.3 and §5: Tables 1, 2, 6 and 7) on timm's own iFormer.

iFormer is timm's (``timm.models.iformer``); nothing of it is copied here. :class:`IFormerAblation` is timm's
``IFormer`` built as usual, then a few of its modules are swapped for the row's, each a timm block or a minimal
subclass of one:

* ``stem_kernel`` / ``kernel_size``: the stem's two dense convs and the depthwise conv of every ``ConvBlock`` are
  rebuilt as timm ``ConvNorm`` of that kernel (timm fixes 5x5 and 7x7; Table 2 and the "Kernel Size" step of §3.2).
* ``attn='sha'`` / ``'mha'``: the mixer of each ``SHMABlock`` becomes :class:`PlainAttention`, timm's ``SHMA`` without
  the modulation (one value projection, no sigmoid gate), with one head or ``dim_attn // mha_head_dim`` heads
  (Table 1's SHA and MHA baselines, Table 7's SHA rows).
* ``gate_act='silu'``: ``SHMA.gate_act`` is SiLU instead of sigmoid (Table 6, row 1).
* ``shma_norm='pre_ln'``: the mixer becomes :class:`PreNormSHMA`, a LayerNorm before bias-carrying q/k/v projections
  instead of BN after them (Table 6, row 2).
* ``cpe=False``: each group's ``RepCPE`` becomes an identity (the roadmap adds CPE last, §3.3 "Positional Embedding").

The roadmap models start from "the model after enlarging the kernel size" (§5, Table 7's baseline): iFormer-M's
channels (48, 96, 192, 384), blocks (2, 2, 18, 2), BN everywhere, 4x expansion, 5x5 stem, 7x7 depthwise convs. One
attention group (attention + FFN, timm's ``RepCPE`` + ``SHMABlock`` + ``FFN``) replaces two conv blocks, a token mixer
and a channel mixer, as iFormer-M's stage 3 does (22 = 9 + 4 x 3 + 1 blocks for 18 conv blocks, half replaced). The
attention keeps the full width (q/k of C channels, 4x FFN): width is reduced one step later (§3.3 "Reducing
Width"). docs/architecture.md, "iFormer ablation variants", says which choices are ours and how close the counts come.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.iformer import SHMA, ConvBlock, ConvNorm, IFormer, RepCPE, SHMABlock, _cfg, checkpoint_filter_fn
from torch import nn

__all__ = ["IFormerAblation", "PlainAttention", "PreNormSHMA", "PAPER_FIGURES", "MODEL_ARGS"]

ATTNS = ("shma", "sha", "mha")
GATE_ACTS = {"sigmoid": nn.Sigmoid, "silu": nn.SiLU}
SHMA_NORMS = ("post_bn", "pre_ln")

# Published figures, quoted and never measured here: Table 1 (iPhone 13 latency, top-1), Table 2 (latency; the
# 7x7 row's top-1 is the "Stage Ratio" step of §3.2, 79.1%), Table 6 (params, GMACs, latency, top-1; row 1 diverged),
# Table 7 (params, MACs, latency, top-1). ImageNet-1K, 224 px, 300 epochs, no distillation.
PAPER_FIGURES: dict[str, dict[str, Any]] = {
    "iformer_m_mha_baseline": dict(lat_ms=1.40, top1=79.9, table="1 row 1"),
    "iformer_m_sha_baseline": dict(lat_ms=1.12, top1=79.8, table="1 row 2"),
    "iformer_m_conv_k3": dict(lat_ms=1.00, table="2 row 1"),
    "iformer_m_conv_k7": dict(lat_ms=1.01, top1=79.1, table="2 row 2"),
    "iformer_m_shma_silu": dict(params_m=8.9, gmacs=1.60, lat_ms=1.10, top1=None, table="6 row 1 (diverged)"),
    "iformer_m_shma_silu_preln": dict(params_m=8.9, gmacs=1.64, lat_ms=1.17, top1=80.3, table="6 row 2"),
    "iformer_m_conv": dict(params_m=9.4, gmacs=1.760, lat_ms=1.00, top1=79.4, table="7 row 1"),
    "iformer_m_sha_22": dict(params_m=9.1, gmacs=1.724, lat_ms=1.02, top1=79.5, table="7 row 2"),
    "iformer_m_shma_22": dict(params_m=9.2, gmacs=1.739, lat_ms=1.04, top1=79.6, table="7 row 3"),
    "iformer_m_sha_50": dict(params_m=8.8, gmacs=1.689, lat_ms=1.04, top1=79.5, table="7 row 4"),
    "iformer_m_shma_50": dict(params_m=8.9, gmacs=1.712, lat_ms=1.07, top1=79.8, table="7 row 5"),
    "iformer_m_sha_78": dict(params_m=8.3, gmacs=1.635, lat_ms=1.12, top1=79.3, table="7 row 6"),
    "iformer_m_shma_78": dict(params_m=8.5, gmacs=1.685, lat_ms=1.17, top1=79.6, table="7 row 7"),
    "iformer_m_sha_100": dict(params_m=7.9, gmacs=1.599, lat_ms=1.17, top1=78.1, table="7 row 8"),
    "iformer_m_shma_100": dict(params_m=8.3, gmacs=1.665, lat_ms=1.25, top1=79.0, table="7 row 9"),
    "iformer_m_shma_baseline": dict(params_m=10.0, gmacs=1.792, lat_ms=1.15, top1=80.4, table="7 row 10"),
    # Table 8: timm's own iformer_h (listed by `regla models --family iformer_variants` beside these figures)
    "iformer_h": dict(params_m=99, gmacs=15.5, top1=84.8, table="8"),
}

TIMM_MODELS = ("iformer_h",)  # timm's models whose paper figures this module quotes (regla models)


class PlainAttention(SHMA):
    """Softmax attention without modulation: timm's ``SHMA`` with one value projection and no sigmoid gate.

    ``num_heads=1`` is the SHA baseline, ``num_heads>1`` the MHA baseline of iFormer Table 1 (§3.3, "Single-Head vs.
    Multi-Head"): q/k/v are split into heads, which is the reshaping SHMA avoids. Only ``forward`` differs from SHMA.
    """

    def __init__(self, dim: int, ratio: int = 1, head_dim_reduction_ratio: int = 1, num_heads: int = 1,
                 device: Any = None, dtype: Any = None):
        super().__init__(dim, ratio, head_dim_reduction_ratio, device=device, dtype=dtype)
        dim_attn, mid_dim = dim // head_dim_reduction_ratio, int(dim * ratio)
        if num_heads < 1 or dim_attn % num_heads or mid_dim % num_heads:
            raise ValueError(f"num_heads must divide the attention width {dim_attn} and the value width {mid_dim}, "
                             f"got {num_heads}")
        del self.v_gate, self.gate_act
        self.v = ConvNorm(dim, mid_dim, 1, device=device, dtype=dtype)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, heads, HW, C / heads)
            return t.reshape(B, self.num_heads, -1, H * W).transpose(-1, -2)

        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)))
        return self.proj(out.transpose(-1, -2).reshape(B, -1, H, W))


class PreNormSHMA(SHMA):
    """timm's ``SHMA`` with Pre-LN (iFormer Table 6, row 2): LayerNorm over channels before the q, k and value/gate
    projections, which carry a bias instead of the BN that follows them in SHMA ("Post-BN"). The output projection keeps
    its BN. Only ``forward`` differs from SHMA: it normalizes its input."""

    def __init__(self, dim: int, ratio: int = 1, head_dim_reduction_ratio: int = 2, device: Any = None,
                 dtype: Any = None):
        super().__init__(dim, ratio, head_dim_reduction_ratio, device=device, dtype=dtype)
        self.norm = LayerNorm2d(dim, device=device, dtype=dtype)
        for name in ("q", "k", "v_gate"):
            conv = getattr(self, name).c
            setattr(self, name, nn.Conv2d(conv.in_channels, conv.out_channels, 1, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))


class IFormerAblation(IFormer):
    """timm's ``IFormer`` with the switches of iFormer's ablations (module docstring); every other argument is
    timm's. An argument neither takes is an error (``TypeError``), not a warning."""

    def __init__(self, stem_kernel: int = 5, kernel_size: int = 7, attn: str = "shma", mha_head_dim: int = 32,
                 gate_act: str = "sigmoid", shma_norm: str = "post_bn", cpe: bool = True, **kwargs: Any):
        unknown = sorted(set(kwargs) - _TIMM_ARGS)
        if unknown:
            raise TypeError(f"IFormerAblation got unknown argument(s) {unknown}; it takes timm IFormer's "
                            f"{sorted(_TIMM_ARGS)} and {sorted(_OWN_ARGS)}")
        _check(stem_kernel=stem_kernel, kernel_size=kernel_size, attn=attn, mha_head_dim=mha_head_dim,
               gate_act=gate_act, shma_norm=shma_norm)
        super().__init__(**kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        new: list[nn.Module] = []  # the modules built here, initialised as timm initialises IFormer's
        if stem_kernel != 5:
            for name in ("conv1", "conv2"):
                c = getattr(self.stem, name).c
                new.append(ConvNorm(c.in_channels, c.out_channels, stem_kernel, 2, stem_kernel // 2, **dd))
                setattr(self.stem, name, new[-1])
        for stage in self.stages:
            for i, block in enumerate(stage.blocks):
                if isinstance(block, ConvBlock) and kernel_size != 7:
                    dim = block.mixer.module[0].c.in_channels
                    new.append(ConvNorm(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, **dd))
                    block.mixer.module[0] = new[-1]
                elif isinstance(block, RepCPE) and not cpe:
                    stage.blocks[i] = nn.Identity()
                elif isinstance(block, SHMABlock):
                    mixer = _mixer(block.mixer.module, attn, mha_head_dim, shma_norm, dd)
                    if attn == "shma":
                        mixer.gate_act = GATE_ACTS[gate_act]()
                    if mixer is not block.mixer.module:
                        new.append(mixer)
                        block.mixer.module = mixer
        for module in new:
            module.apply(partial(self._init_weights, needs_reset=False))


def _mixer(old: SHMA, attn: str, mha_head_dim: int, shma_norm: str, dd: dict[str, Any]) -> nn.Module:
    """The token mixer replacing timm's ``SHMA`` ``old`` (same widths: ``q`` gives the attention width, ``proj`` the
    value width and the channels)."""
    dim, dim_attn, mid_dim = old.q.c.in_channels, old.q.c.out_channels, old.proj.c.in_channels
    ratio, reduction = mid_dim // dim, dim // dim_attn
    if attn == "shma":
        return PreNormSHMA(dim, ratio, reduction, **dd) if shma_norm == "pre_ln" else old
    heads = 1 if attn == "sha" else max(1, dim_attn // mha_head_dim)
    return PlainAttention(dim, ratio, reduction, heads, **dd)


_TIMM_ARGS = frozenset(inspect.signature(IFormer.__init__).parameters) - {"self"}
_OWN_ARGS = frozenset(inspect.signature(IFormerAblation.__init__).parameters) - {"self", "kwargs"}


def _check(**args: Any) -> None:
    """One ``ValueError`` naming the bad switch and what it allows."""
    for name in ("stem_kernel", "kernel_size"):
        if not isinstance(args[name], int) or args[name] < 1 or args[name] % 2 == 0:
            raise ValueError(f"{name} must be an odd positive integer, got {args[name]!r}")
    choices = {"attn": ATTNS, "gate_act": tuple(GATE_ACTS), "shma_norm": SHMA_NORMS}
    for name, allowed in choices.items():
        if args[name] not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {args[name]!r}")
    if args["attn"] != "shma" and (args["gate_act"] != "sigmoid" or args["shma_norm"] != "post_bn"):
        raise ValueError(f"gate_act and shma_norm switch SHMA; attn={args['attn']!r} has no gate nor Post-BN to switch")
    if not isinstance(args["mha_head_dim"], int) or args["mha_head_dim"] < 1:
        raise ValueError(f"mha_head_dim must be a positive integer, got {args['mha_head_dim']!r}")


# The roadmap model of §3.2 after "Kernel Size" (Table 7's baseline); the rows change only what the name says.
_ROADMAP = dict(dims=(48, 96, 192, 384), depths=(2, 2, 18, 2), attn_groups=(0, 0, 0, 0),
                attn_head_dim_reduction=(0, 0, 1, 1), conv_ratio=4, ffn_ratio=4, cpe=False)
_IFORMER_M = dict(dims=(48, 96, 192, 384), depths=(2, 2, 22, 6), attn_groups=(0, 0, 4, 2),
                  attn_head_dim_reduction=(0, 0, 2, 4), conv_ratio=4, ffn_ratio=3)  # timm's iformer_m


def _groups(stage3: int, stage4: int = 0) -> dict[str, Any]:
    """Attention groups replacing 2 x ``stage3`` of stage 3's 18 conv blocks (and both of stage 4's for one each)."""
    return dict(depths=(2, 2, 18 + stage3, 2 + stage4 * 3 - (2 if stage4 else 0)), attn_groups=(0, 0, stage3, stage4))


MODEL_ARGS: dict[str, dict[str, Any]] = {
    # Table 1: half of stage 3 and all of stage 4 replaced by ViT blocks, multi- vs single-head
    "iformer_m_mha_baseline": dict(_ROADMAP, **_groups(4, 2), attn="mha"),
    "iformer_m_sha_baseline": dict(_ROADMAP, **_groups(4, 2), attn="sha"),
    # Table 2: 3x3 vs 7x7 depthwise convs, at the "Stage Ratio" step (3x3 stem)
    "iformer_m_conv_k3": dict(_ROADMAP, stem_kernel=3, kernel_size=3),
    "iformer_m_conv_k7": dict(_ROADMAP, stem_kernel=3),
    # Table 6: SHMA's activation and normalization in iFormer-M (row 3, sigmoid + Post-BN, is timm's iformer_m)
    "iformer_m_shma_silu": dict(_IFORMER_M, gate_act="silu"),
    "iformer_m_shma_silu_preln": dict(_IFORMER_M, gate_act="silu", shma_norm="pre_ln"),
    # Table 7: share of stage 3's conv blocks replaced by SHA / SHMA (22, 50, 78, 100%), then also stage 4
    "iformer_m_conv": dict(_ROADMAP),
    **{f"iformer_m_{a}_{pct}": dict(_ROADMAP, **_groups(g), attn=a)
       for pct, g in ((22, 2), (50, 4), (78, 7), (100, 9)) for a in ("sha", "shma")},
    "iformer_m_shma_baseline": dict(_ROADMAP, **_groups(4, 2)),
}

default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in MODEL_ARGS})


def _create(name: str, pretrained: bool = False, **kwargs: Any) -> IFormerAblation:
    return build_model_with_cfg(IFormerAblation, name, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
                                **dict(MODEL_ARGS[name], **kwargs))


def _register(name: str) -> None:
    def entry(pretrained: bool = False, **kwargs: Any) -> IFormerAblation:
        return _create(name, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    fig = PAPER_FIGURES[name]
    entry.__doc__ = f"iFormer Table {fig['table']}: {MODEL_ARGS[name]}"
    globals()[name] = register_model(entry)


for _name in MODEL_ARGS:
    _register(_name)
