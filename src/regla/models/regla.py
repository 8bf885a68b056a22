"""ReGLA: Efficient Receptive-Field Modeling with Gated Linear Attention Network.

Paper: the title above (Li, Zhao et al.), sections cited as §N. A four-stage hybrid backbone:

* a stem to H/4, strided 3x3 convolutions between stages (§3.4);
* ELRF blocks in stages 1-2 (§3.3): 3x3 depthwise conv, then an FFN with a 5x5 depthwise conv inside, residual;
* in stages 3-4, attention groups of CPE (depthwise conv + residual), RGMA (§3.2, Eq. 4-6) and a 3x3 depthwise
  conv after attention (Table 7); stage 3 opens with ELRF blocks (``docs/architecture.md``);
* RGMA: ``X_o = sigmoid(W_g x) * ReLUAttn(W_q x, W_k x, W_v x)`` followed by an output projection, with
  ``ReLUAttn`` of Eq. (3) computed in O(N d^2) as ``ReLU(Q) (ReLU(K)^T V) / (ReLU(Q) (ReLU(K)^T 1))``.

Ablation switches (constructor arguments): ``early_block`` = ``elrf | dw7 | dw9`` (Table 5), ``gating`` =
``none | decoupled | gate`` (Table 6; 'gate*' is ``decoupled``), ``post_attn`` = ``ffn | mib | conv3`` (Table 7).

Every BatchNorm folds into its conv and every depthwise residual (CPE, post-attention conv) into its kernel with
:meth:`ReGLA.fuse` or ``timm.utils.reparameterize_model``. Choices the paper leaves open are documented, with
reasons, in ``docs/architecture.md``.
"""

from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    calculate_drop_path_rates,
    create_act_layer,
    get_act_layer,
    register_notrace_function,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

try:  # newer torch: FX symbolic tracing only (torch.export is covered by is_compiling below), no warning
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing
except ImportError:  # pragma: no cover
    from torch.fx._symbolic_trace import is_fx_tracing

from ._layers import ConvNorm, DistilledClassifier, StagedModelMixin, check_global_pool
from ._weights import filter_fn

__all__ = ["ReGLA", "RGMA", "ELRF", "relu_linear_attention", "PAPER_FIGURES"]

EARLY_BLOCKS = ("elrf", "dw7", "dw9")
GATINGS = ("none", "decoupled", "gate")
POST_ATTNS = ("ffn", "mib", "conv3")
MIN_INPUT_SIZE = 32

# Published figures of the paper: Table 1 (params), Table 2 (GFLOPs, iPhone 16 Pro latency, ImageNet-1K top-1),
# Table 3 (top-1 with multi-teacher distillation). Quoted, never measured here.
PAPER_FIGURES: dict[str, dict[str, float]] = {
    "regla_t": dict(params_m=3.8, gmacs=0.48, lat224_ms=2.25, lat512_ms=4.11, top1=76.4),
    "regla_s": dict(params_m=6.4, gmacs=1.04, lat224_ms=2.76, lat512_ms=4.36, top1=78.9),
    "regla_m": dict(params_m=9.6, gmacs=1.24, lat224_ms=2.89, lat512_ms=4.98, top1=80.85, top1_distilled=81.9),
    "regla_l": dict(params_m=19.9, gmacs=1.73, lat224_ms=2.91, lat512_ms=8.82, top1=82.9, top1_distilled=84.3),
    "regla_x": dict(params_m=39.8, gmacs=2.22, lat224_ms=3.77, lat512_ms=14.81, top1=83.7, top1_distilled=85.2),
}


# ---------------------------------------------------------------------------------------------------------------
# Foldable building blocks
# ---------------------------------------------------------------------------------------------------------------


class RepDWResidual(nn.Module):
    """``x + DropPath(BN(DWConv_k(x)))``; fuses to one depthwise conv with the identity in its centre tap.

    Used for CPE (conditional positional encoding, Fig. 2) and for the 3x3 conv after attention (Table 7, Conv.3).
    """

    def __init__(self, dim: int, kernel_size: int = 3, drop_path: float = 0.0):
        super().__init__()
        self.conv = ConvNorm(dim, dim, kernel_size, groups=dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        conv = self.conv.fuse()
        k = conv.kernel_size[0]
        conv.weight[:, 0, k // 2, k // 2] += 1.0
        return conv


class Residual(nn.Module):
    """``x + DropPath(module(x))``."""

    def __init__(self, module: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.m = module
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.m(x))


class Stem(nn.Module):
    """Two stride-2 3x3 convs to H/4 (§3.4): 3 -> C1/2 -> C1, BN + activation after each."""

    def __init__(self, in_chans: int, out_chs: int, act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv1 = ConvNorm(in_chans, out_chs // 2, 3, stride=2)
        self.act1 = create_act_layer(act_layer, inplace=True)
        self.conv2 = ConvNorm(out_chs // 2, out_chs, 3, stride=2)
        self.act2 = create_act_layer(act_layer, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.conv2(self.act1(self.conv1(x))))


# ---------------------------------------------------------------------------------------------------------------
# Convolutional blocks: ELRF (§3.3) and the large-kernel baselines of Table 5
# ---------------------------------------------------------------------------------------------------------------


class ELRF(nn.Module):
    """Efficient Large Receptive Field block (§3.3, Fig. 2).

    ``x + PW(act(DW5x5(act(PW(DW3x3(x))))))``: a 3x3 depthwise conv, then an FFN whose hidden layer carries a
    5x5 depthwise conv (MobileNetV4's ExtraDW layout). The two kernels compose to a 7x7 receptive field.
    """

    def __init__(self, dim: int, mlp_ratio: float = 3.0, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dw3 = ConvNorm(dim, dim, 3, groups=dim)
        self.pw1 = ConvNorm(dim, hidden, 1)
        self.act1 = create_act_layer(act_layer, inplace=True)
        self.dw5 = ConvNorm(hidden, hidden, 5, groups=hidden)
        self.act2 = create_act_layer(act_layer, inplace=True)
        self.pw2 = ConvNorm(hidden, dim, 1, bn_weight_init=0.0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.pw1(self.dw3(x)))
        y = self.pw2(self.act2(self.dw5(y)))
        return x + self.drop_path(y)


class ConvBlock(nn.Module):
    """Table 5 baseline: ``x + FFN(DWConv_k(x))`` with a single k x k depthwise conv (k = 7 or 9)."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 3.0, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dw = ConvNorm(dim, dim, kernel_size, groups=dim)
        self.pw1 = ConvNorm(dim, hidden, 1)
        self.act = create_act_layer(act_layer, inplace=True)
        self.pw2 = ConvNorm(hidden, dim, 1, bn_weight_init=0.0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.pw2(self.act(self.pw1(self.dw(x)))))


def make_conv_block(kind: str, dim: int, mlp_ratio: float, drop_path: float,
                    act_layer: type[nn.Module]) -> nn.Module:
    """Build the convolutional block named by the Table 5 switch."""
    if kind == "elrf":
        return ELRF(dim, mlp_ratio, drop_path, act_layer)
    return ConvBlock(dim, int(kind[2:]), mlp_ratio, drop_path, act_layer)


# ---------------------------------------------------------------------------------------------------------------
# RGMA: ReLU Gated Modulated Attention (§3.2)
# ---------------------------------------------------------------------------------------------------------------


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """ReLU linear attention, Eq. (3), without ever forming the N x N matrix.

    ``out_n = sum_m v_m (phi(k_m) . phi(q_n)) / (sum_m phi(k_m) . phi(q_n) + eps)`` with ``phi = ReLU``,
    evaluated as ``(V phi(K)^T) phi(Q)`` and ``(1^T phi(K)^T) phi(Q)`` in O(N d_k d_v).

    Every operator is one that ExecuTorch's XNNPACK delegate takes (``docs/benchmarks.md``, "One XNNPACK graph"):
    the normaliser's token sum ``phi(K)^T 1`` is a batched matmul with a ones vector made by arithmetic on the
    tokens (``sum`` and ``ones``/``full`` are operators XNNPACK lacks: either would cut the delegated graph in two),
    and no token count enters as a Python number, which tracing would freeze at the traced size.

    Args:
        q, k: ``(B, d_k, H, W)`` or ``(B, d_k, N)`` queries and keys (before the ReLU).
        v: ``(B, d_v, H, W)`` or ``(B, d_v, N)`` values, on the same tokens.
        eps: added to the denominator, which is 0 for a query with no positive feature.

    Returns:
        ``(B, d_v, H, W)`` or ``(B, d_v, N)``, as ``v``.
    """
    qf, kf = F.relu(q).flatten(2), F.relu(k).flatten(2)  # (B, d_k, N)
    kv = torch.bmm(v.flatten(2), kf.transpose(1, 2))  # (B, d_v, d_k)
    num = torch.bmm(kv, qf)  # (B, d_v, N)
    ones = qf[:, :1].transpose(1, 2) * 0.0 + 1.0  # (B, N, 1)
    k_sum = torch.bmm(kf, ones)  # phi(K)^T 1: (B, d_k, 1)
    den = torch.bmm(k_sum.transpose(1, 2), qf)  # (B, 1, N)
    return (num / (den + eps)).reshape(v.shape)


@register_notrace_function  # reads the autocast state at run time: a leaf of FX graphs
def fp32_relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """:func:`relu_linear_attention`, computed (and returned) in fp32 under autocast, in the inputs' dtype otherwise.

    TorchScript has no device-type autocast query: a scripted model computes in the inputs' dtype.
    """
    if torch.jit.is_scripting():
        return relu_linear_attention(q, k, v, eps)
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(device_type=q.device.type, enabled=False):
            return relu_linear_attention(q.float(), k.float(), v.float(), eps)
    return relu_linear_attention(q, k, v, eps)


class RGMA(nn.Module):
    """ReLU Gated Modulated Attention, Eq. (4)-(6), single head, followed by an output projection.

    One 1x1 conv (+BN) computes ``[W_q x, W_k x, W_v x, W_g x]``. ``gating`` selects Table 6's row:

    * ``"gate"`` (row 3, the paper's model): the value is integrated with the gate: one sigmoid modulates the
      joint value/gate projection, ``[V, G] = sigmoid([W_v; W_g] x)`` (iFormer's modulation layout), and
      ``X_o = G * ReLUAttn(Q, K, V)``;
    * ``"decoupled"`` ('gate*', row 2): ``V = W_v x`` stays linear, ``G = sigmoid(W_g x)``;
    * ``"none"`` (row 1): ``X_o = ReLUAttn(Q, K, W_v x)``.

    The attention arithmetic runs in fp32 even under autocast.
    """

    def __init__(self, dim: int, key_dim: int, value_dim: int, gating: str = "gate", eps: float = 1e-6):
        super().__init__()
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
        self.gating = gating
        self.key_dim, self.value_dim, self.eps = key_dim, value_dim, eps
        n_out = 2 * key_dim + value_dim * (1 if gating == "none" else 2)
        self.qkvg = ConvNorm(dim, n_out, 1)
        self.proj = ConvNorm(value_dim, dim, 1, bn_weight_init=0.0)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(Q, K, V, G)`` from the joint projection, by channel slices (no ``split``: XNNPACK takes slices)."""
        dk, dv = self.key_dim, self.value_dim
        y = self.qkvg(x)
        q, k = y[:, :dk], y[:, dk:2 * dk]
        if self.gating == "none":
            return q, k, y[:, 2 * dk:], None
        if self.gating == "gate":
            vg = torch.sigmoid(y[:, 2 * dk:])
            return q, k, vg[:, :dv], vg[:, dv:]
        return q, k, y[:, 2 * dk:2 * dk + dv], torch.sigmoid(y[:, 2 * dk + dv:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, g = self._split(x)
        out = fp32_relu_linear_attention(q, k, v, self.eps).to(x.dtype)  # (B, d_v, H, W)
        if g is not None:
            out = out * g
        return self.proj(out)


class FFN(nn.Module):
    """Table 7 'FFN': ``x + PW(act(PW(x)))``."""

    def __init__(self, dim: int, mlp_ratio: float = 2.0, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.pw1 = ConvNorm(dim, hidden, 1)
        self.act = create_act_layer(act_layer, inplace=True)
        self.pw2 = ConvNorm(hidden, dim, 1, bn_weight_init=0.0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.pw2(self.act(self.pw1(x))))


class MIB(nn.Module):
    """Table 7 'MIB': MobileNetV2 inverted bottleneck ``x + PW(act(DW3x3(act(PW(x)))))``."""

    def __init__(self, dim: int, mlp_ratio: float = 2.0, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.pw1 = ConvNorm(dim, hidden, 1)
        self.act1 = create_act_layer(act_layer, inplace=True)
        self.dw = ConvNorm(hidden, hidden, 3, groups=hidden)
        self.act2 = create_act_layer(act_layer, inplace=True)
        self.pw2 = ConvNorm(hidden, dim, 1, bn_weight_init=0.0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.pw2(self.act2(self.dw(self.act1(self.pw1(x))))))


def make_post_attn(kind: str, dim: int, mlp_ratio: float, drop_path: float,
                   act_layer: type[nn.Module]) -> nn.Module:
    """Build the block that follows RGMA (Table 7 switch)."""
    if kind == "conv3":
        return RepDWResidual(dim, 3, drop_path)
    if kind == "ffn":
        return FFN(dim, mlp_ratio, drop_path, act_layer)
    return MIB(dim, mlp_ratio, drop_path, act_layer)


# ---------------------------------------------------------------------------------------------------------------
# Stage, head, model
# ---------------------------------------------------------------------------------------------------------------


class ReGLAStage(nn.Module):
    """One stage: strided 3x3 conv downsampling (none for stage 1), then ``depth`` blocks.

    A stage with ``num_attn`` attention groups holds ``depth - 3 * num_attn`` convolutional blocks followed by
    ``num_attn`` groups of [CPE, RGMA, post-attention block] (three blocks each, as counted by Table 1).
    """

    def __init__(self, in_dim: int, dim: int, depth: int, num_attn: int, conv_kind: str, mlp_ratio: float,
                 key_dim: int, value_dim: int, gating: str, post_attn: str, post_mlp_ratio: float,
                 drop_path_rates: list[float], act_layer: type[nn.Module], downsample: bool):
        super().__init__()
        if depth < 3 * num_attn:
            raise ValueError(f"a stage of depth {depth} cannot hold {num_attn} attention groups of 3 blocks")
        self.grad_checkpointing = False
        self.downsample = ConvNorm(in_dim, dim, 3, stride=2) if downsample else nn.Identity()
        num_conv = depth - 3 * num_attn
        dpr = drop_path_rates
        blocks: list[nn.Module] = [make_conv_block(conv_kind, dim, mlp_ratio, dpr[j], act_layer)
                                   for j in range(num_conv)]
        for g in range(num_attn):
            j = num_conv + 3 * g
            blocks += [
                RepDWResidual(dim, 3),  # CPE
                Residual(RGMA(dim, key_dim, value_dim, gating), dpr[j + 1]),
                make_post_attn(post_attn, dim, post_mlp_ratio, dpr[j + 2], act_layer),
            ]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _check_input(x: Any, in_chans: int) -> None:
    """Raise a ValueError naming what is wrong with a model input and what was expected."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D tensor (B, {in_chans}, H, W), got {x.ndim}-D shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"expected a floating-point tensor (normalized image), got dtype {x.dtype}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels (B, {in_chans}, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[2], x.shape[3]) < MIN_INPUT_SIZE:
        raise ValueError(f"input sides must be at least {MIN_INPUT_SIZE} px, got {x.shape[2]}x{x.shape[3]}")


def _is_tracing() -> bool:
    """True while tracing (jit or FX) or compiling."""
    return torch.jit.is_tracing() or is_fx_tracing() or torch.compiler.is_compiling()


def _check_input_eager(x: torch.Tensor, in_chans: int) -> None:
    """:func:`_check_input`, except while scripting, tracing (jit or FX) or compiling: no check in those graphs."""
    if not torch.jit.is_scripting():  # TorchScript compiles nothing inside this block
        if not _is_tracing():
            _check_input(x, in_chans)


class ReGLA(StagedModelMixin, nn.Module):
    """ReGLA backbone and classifier (§3.4, Fig. 2, Table 1).

    Args:
        in_chans: input channels.
        num_classes: classifier outputs (0 for no classifier).
        global_pool: ``"avg"`` or ``""`` (no pooling in :meth:`forward_head`).
        embed_dims: channels C_1..C_4 (Table 1).
        depths: blocks L_1..L_4 per stage (Table 1), counting CPE, RGMA and the post-attention block separately.
        attn_groups: attention groups [CPE, RGMA, post-attn] per stage (the rest are convolutional blocks).
        key_ratio: per-stage query/key width of RGMA as a fraction of C_i.
        value_ratio: value/gate width of RGMA as a fraction of C_i (one value, or one per stage).
        mlp_ratio: hidden expansion of ELRF and of the Table 5 conv blocks (one value, or one per stage).
        post_mlp_ratio: hidden expansion of the Table 7 'ffn' / 'mib' post-attention blocks.
        early_block: Table 5 switch for stages 1-2: ``elrf`` | ``dw7`` | ``dw9``.
        gating: Table 6 switch: ``gate`` (default) | ``decoupled`` ('gate*') | ``none``.
        post_attn: Table 7 switch: ``conv3`` (default) | ``ffn`` | ``mib``.
        head_hidden_size: width of the pre-logits 1x1 conv after pooling (0 to classify pooled features directly).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        distillation: add a DeiT-style distillation classifier.
        act_layer: activation of the conv blocks, stem and pre-logits (timm name or class); ReLU by default
            (MobileNetV4's UIB, which ELRF builds on; fuses into the conv at inference), ``"gelu"`` for iFormer's.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: tuple[int, ...] = (32, 64, 128, 256),
        depths: tuple[int, ...] = (2, 2, 16, 6),
        attn_groups: tuple[int, ...] = (0, 0, 3, 2),
        key_ratio: tuple[float, ...] = (0.0, 0.0, 0.5, 0.25),
        value_ratio: float | tuple[float, ...] = 1.0,
        mlp_ratio: float | tuple[float, ...] = 3.0,
        post_mlp_ratio: float = 2.0,
        early_block: str = "elrf",
        gating: str = "gate",
        post_attn: str = "conv3",
        head_hidden_size: int = 1024,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        distillation: bool = False,
        act_layer: str | type[nn.Module] = "relu",
    ):
        super().__init__()
        _check_choice("early_block", early_block, EARLY_BLOCKS)
        act_layer = get_act_layer(act_layer)
        _check_choice("gating", gating, GATINGS)
        _check_choice("post_attn", post_attn, POST_ATTNS)
        check_global_pool(global_pool)
        if not len(embed_dims) == len(depths) == len(attn_groups) == len(key_ratio):
            raise ValueError("embed_dims, depths, attn_groups and key_ratio need one entry per stage")
        mlp_ratios = _per_stage("mlp_ratio", mlp_ratio, len(depths))
        value_ratios = _per_stage("value_ratio", value_ratio, len(depths))
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.distillation = distillation
        self.feature_info: list[dict[str, Any]] = []

        self.stem = Stem(in_chans, embed_dims[0], act_layer)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, prev = [], embed_dims[0]
        for i, (dim, depth) in enumerate(zip(embed_dims, depths, strict=True)):
            stages.append(ReGLAStage(
                prev, dim, depth, attn_groups[i],
                conv_kind=early_block if i < 2 else "elrf",
                mlp_ratio=mlp_ratios[i],
                key_dim=max(int(dim * key_ratio[i]), 1),
                value_dim=int(dim * value_ratios[i]),
                gating=gating, post_attn=post_attn, post_mlp_ratio=post_mlp_ratio,
                drop_path_rates=dpr[i], act_layer=act_layer, downsample=i > 0,
            ))
            prev = dim
            self.feature_info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = embed_dims[-1]

        # Pre-logits: 1x1 conv + activation on the pooled features, MobileNetV4-style (docs/architecture.md). No norm,
        # so that training with batch 1 works.
        self.head_hidden_size = head_hidden_size or self.num_features
        self.pre_logits = (nn.Sequential(nn.Conv2d(self.num_features, head_hidden_size, 1),
                                          create_act_layer(act_layer, inplace=True))
                           if head_hidden_size else nn.Identity())
        self.head_drop = nn.Dropout(drop_rate)
        self.head = DistilledClassifier(self.head_hidden_size, num_classes, distillation)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # --- timm protocol -----------------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^pre_logits|^head", (99999,)),
            ],
        )

    def _make_head(self, num_classes: int, distillation: bool | None = None) -> nn.Module:
        if distillation is not None:
            self.distillation = distillation
        return DistilledClassifier(self.head_hidden_size, num_classes, self.distillation)

    def _drop_pre_logits(self) -> None:
        self.pre_logits = nn.Identity()

    def _input_check(self, x: torch.Tensor) -> None:
        _check_input_eager(x, self.in_chans)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input_eager(x, self.in_chans)
        return self.stages(self.stem(x))  # each stage checkpoints its own blocks when asked

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((2, 3), keepdim=True)
            x = self.pre_logits(x).flatten(1)
        x = self.head_drop(x)
        if pre_logits:
            return x
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _per_stage(name: str, value: float | tuple[float, ...], num_stages: int) -> tuple[float, ...]:
    """One value per stage: a scalar repeated, or a sequence of exactly ``num_stages`` values."""
    if isinstance(value, (int, float)):
        return (float(value),) * num_stages
    if len(value) != num_stages:
        raise ValueError(f"{name} needs one value or one per stage ({num_stages}), got {tuple(value)}")
    return tuple(float(v) for v in value)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints, configs, registration
# ---------------------------------------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ReGLA) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: :func:`regla.checkpoints.filter_fn` (containers, EMA rule, fused files)."""
    return filter_fn(state_dict, model)


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,  # ConvNeXt/iFormer eval (resize 256, crop 224) that §4.1 follows, as every recipe
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv",
        "classifier": "head.head",
        "paper_name": "ReGLA: Efficient Receptive-Field Modeling with Gated Linear Attention Network",
        "license": "apache-2.0",
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"regla_{v}.untrained": _cfg() for v in "tsmlx"})


def _create_regla(variant: str, pretrained: bool = False, **kwargs: Any) -> ReGLA:
    return build_model_with_cfg(
        ReGLA, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


# Table 1: blocks (L) and channels (C). The split of each stage into ELRF blocks and attention groups, the ELRF
# expansion, the RGMA key/value widths and the classifier width per variant are our inference (docs/architecture.md,
# "Fitting Tables 1 and 2"); iFormer, whose configurations Table 1 shares, also varies them per variant.
MODEL_ARGS: dict[str, dict[str, Any]] = {
    "regla_t": dict(embed_dims=(32, 64, 128, 256), depths=(2, 2, 16, 6), attn_groups=(0, 0, 1, 2), mlp_ratio=3.0),
    "regla_s": dict(embed_dims=(32, 64, 160, 320), depths=(2, 2, 19, 6), attn_groups=(0, 0, 1, 2), mlp_ratio=4.0),
    "regla_m": dict(embed_dims=(48, 96, 192, 384), depths=(2, 2, 22, 6), attn_groups=(0, 0, 5, 1), mlp_ratio=4.0),
    # L and X: the minimax fit of scripts/fit_variants.py to Table 1's params and Table 2's MACs (see the docs).
    "regla_l": dict(embed_dims=(64, 128, 256, 448), depths=(3, 3, 31, 9), attn_groups=(0, 0, 10, 1),
                    mlp_ratio=(2.0, 2.0, 2.0, 6.0), key_ratio=(0.0, 0.0, 0.25, 0.25), value_ratio=(1.0, 1.0, 0.5, 0.5),
                    head_hidden_size=1024),
    "regla_x": dict(embed_dims=(64, 128, 336, 512), depths=(4, 4, 43, 12), attn_groups=(0, 0, 14, 2),
                    mlp_ratio=(2.0, 2.0, 4.0, 6.0), key_ratio=(0.0, 0.0, 0.125, 0.5), value_ratio=(1.0, 1.0, 0.5, 1.0),
                    head_hidden_size=2560),
}


def _create_variant(name: str, pretrained: bool, **kwargs: Any) -> ReGLA:
    return _create_regla(name, pretrained=pretrained, **dict(MODEL_ARGS[name], **kwargs))


@register_model
def regla_t(pretrained: bool = False, **kwargs: Any) -> ReGLA:
    """ReGLA-T: blocks [2, 2, 16, 6], channels [32, 64, 128, 256] (Table 1)."""
    return _create_variant("regla_t", pretrained, **kwargs)


@register_model
def regla_s(pretrained: bool = False, **kwargs: Any) -> ReGLA:
    """ReGLA-S: blocks [2, 2, 19, 6], channels [32, 64, 160, 320] (Table 1)."""
    return _create_variant("regla_s", pretrained, **kwargs)


@register_model
def regla_m(pretrained: bool = False, **kwargs: Any) -> ReGLA:
    """ReGLA-M: blocks [2, 2, 22, 6], channels [48, 96, 192, 384] (Table 1)."""
    return _create_variant("regla_m", pretrained, **kwargs)


@register_model
def regla_l(pretrained: bool = False, **kwargs: Any) -> ReGLA:
    """ReGLA-L: blocks [3, 3, 31, 9], channels [64, 128, 256, 448] (Table 1).

    The free settings minimise the larger error against Table 1 (19.9 M params) and Table 2 (1.73 GMACs at 224 px)
    over ``scripts/fit_variants.py``'s grid: attention groups 10 (stage 3) / 1 (stage 4), ELRF expansion 2/2/2/6,
    d_k = C/4 and d_v = C/2 in stages 3-4, a 1024-wide classifier. 20.22 M params (+1.6%), 1.702 GMACs (-1.6%).
    """
    return _create_variant("regla_l", pretrained, **kwargs)


@register_model
def regla_x(pretrained: bool = False, **kwargs: Any) -> ReGLA:
    """ReGLA-X: blocks [4, 4, 43, 12], channels [64, 128, 336, 512] (Table 1).

    The free settings minimise the larger error against Table 1 (39.8 M params) and Table 2 (2.22 GMACs at 224 px)
    over ``scripts/fit_variants.py``'s grid: attention groups 14 (stage 3) / 2 (stage 4), ELRF expansion 2/2/4/6,
    d_k = C/8 and d_v = C/2 in stage 3, d_k = C/2 and d_v = C in stage 4, a 2560-wide classifier. 31.70 M params
    (-20.3%), 2.624 GMACs (+18.2%): both figures cannot be met together (docs/architecture.md).
    """
    return _create_variant("regla_x", pretrained, **kwargs)
