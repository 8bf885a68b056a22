"""RepViT ablation variants, composed from timm's RepViT (``timm.models.repvit``): nothing of timm's file is copied.

RepViT is timm's model. The rows of the RepViT paper's ablations that timm's constructor has no knob for are
registered here as :class:`RepVitVariant`, a subclass of timm's ``RepVit`` that builds timm's network and then swaps
the modules its row changes for timm's own classes (or, for one RepNeXt row, RepNeXt's downsampling layer):

* RepViT Table 6 (Sec. 4.4, "Structural re-parameterization"): without SR, every ``RepVggDw`` token mixer
  (``BN(DW3x3 + DW1x1 + identity)``) becomes one 3x3 depthwise conv + BN (timm's ``ConvNorm``):
  ``repvit_m0_9_noreparam``, ``repvit_m1_5_noreparam``, ``repvit_m2_3_noreparam``;
* RepViT Table 7 (Sec. 4.4, "SE layer placement"): no SE layer at all (``*_nose``), or an SE layer in every block of
  each stage (``*_se_per_block``) instead of the 1st, 3rd, 5th, ... ("ours", timm's model);
* RepNeXt Table 5, last row (RepNeXt Sec. 4.3, "Downsampling layer"): RepViT-M0.9 whose downsampling layers
  reduce the resolution as RepNeXt's do (Eq. 2 of the RepNeXt paper: ``Norm(CopyConv(X))``, which doubles the
  channels) instead of RepViT's stride-2 depthwise conv + 1x1 conv, keeping RepViT's pre-block and FFN:
  ``repvit_m0_9_repnext_ds``. This reading is the one that gives the row's 4.99 M parameters (RepViT-M0.9: 5.07 M);
  replacing the whole RepViT downsampling layer (pre-block included) by RepNeXt's would give 4.79 M.

The switches (``reparam``, ``se_layout``, ``downsample``) are checked: a bad value is a ``ValueError`` naming the
allowed values; an unknown argument is a ``TypeError`` (timm's constructor takes no ``**kwargs``). No weights are
published for these rows, so ``pretrained=True`` is refused. Fusion is timm's: ``timm.utils.reparameterize_model``
or ``model.fuse()`` fold every branch, as for the published models.
"""

from __future__ import annotations

from typing import Any

from timm.layers import SqueezeExcite
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.repvit import ConvNorm, RepVggDw, RepVit, RepViTBlock
from timm.models.repvit import _cfg as _repvit_cfg
from torch import nn

from ._layers import BatchNorm2d
from .repnext import CopyConv

__all__ = ["RepVitVariant", "PAPER_FIGURES", "SE_LAYOUTS", "DOWNSAMPLES"]

SE_LAYOUTS = ("cross_block", "per_block", "none")
DOWNSAMPLES = ("repvit", "repnext")

# Published figures, quoted (never measured here). RepViT Table 6 and 7: top-1 (%) of the 300-epoch models trained
# with RegNetY-16GF distillation (``top1_distilled``; the "ours" / SR rows are RepViT Table 1's models), Table 7's
# iPhone 12 latency (``lat_ms``). RepNeXt Table 5: params (M, deploy form), iPhone 12 latency, RTX3090 throughput
# and top-1 after 120 epochs without distillation (``top1_120e``). ``top1`` (the column ``regla models`` prints) is
# the row's own top-1 as its table gives it.
PAPER_FIGURES: dict[str, dict[str, float]] = {
    "repvit_m0_9_noreparam": dict(top1=78.47, top1_distilled=78.47),
    "repvit_m1_5_noreparam": dict(top1=82.09, top1_distilled=82.09),
    "repvit_m2_3_noreparam": dict(top1=83.10, top1_distilled=83.10),
    "repvit_m0_9_nose": dict(top1=77.92, top1_distilled=77.92, lat_ms=0.83),
    "repvit_m1_5_nose": dict(top1=81.86, top1_distilled=81.86, lat_ms=1.48),
    "repvit_m0_9_se_per_block": dict(top1=78.75, top1_distilled=78.75, lat_ms=0.92),
    "repvit_m1_5_se_per_block": dict(top1=82.29, top1_distilled=82.29, lat_ms=1.58),
    "repvit_m0_9_repnext_ds": dict(params_m=4.99, lat_ms=0.89, throughput=4731, top1=75.32, top1_120e=75.32),
}

# (embed_dim, depth) of timm's registrations (timm.models.repvit), which are the RepViT paper's supplementary tables.
_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "m0_9": ((48, 96, 192, 384), (2, 2, 14, 2)),
    "m1_5": ((64, 128, 256, 512), (4, 4, 24, 4)),
    "m2_3": ((80, 160, 320, 640), (6, 6, 34, 2)),
}


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"RepVitVariant {name} must be one of {choices}, got {value!r}")


class RepVitVariant(RepVit):
    """timm's ``RepVit`` with the RepViT Table 6-7 / RepNeXt Table 5 switches.

    Args:
        reparam: keep the training-time multi-branch token mixer (``RepVggDw``, RepViT Fig. 3b); ``False`` gives
            one 3x3 depthwise conv + BN instead (Table 6, "SR ✗"), in the stage blocks and the downsampling layers'
            pre-blocks alike.
        se_layout: ``"cross_block"`` (timm's and the paper's: SE in the 1st, 3rd, ... block of each stage),
            ``"per_block"`` (every block of each stage; the downsampling pre-blocks stay without, as in RepViT) or
            ``"none"`` (Table 7).
        downsample: ``"repvit"`` (RepViT Fig. 4d) or ``"repnext"`` (the stride-2 depthwise conv and the 1x1 conv
            replaced by RepNeXt's ``Norm(CopyConv(X))``, RepNeXt Eq. 2; needs each stage twice as wide as the
            previous one).
        **kwargs: timm's ``RepVit`` arguments (``embed_dim``, ``depth``, ``num_classes``, ``distillation``, ...).
    """

    def __init__(self, reparam: bool = True, se_layout: str = "cross_block", downsample: str = "repvit",
                 **kwargs: Any) -> None:
        if not isinstance(reparam, bool):
            raise ValueError(f"RepVitVariant reparam must be true or false, got {reparam!r}")
        _check_choice("se_layout", se_layout, SE_LAYOUTS)
        _check_choice("downsample", downsample, DOWNSAMPLES)
        super().__init__(**kwargs)
        if se_layout != "cross_block":
            self._set_se(se_layout == "per_block")
        if downsample == "repnext":
            self._repnext_downsample()
        if not reparam:
            self._drop_reparam()

    def _set_se(self, every_block: bool) -> None:
        """SE layers of the stage blocks: in every block (timm's ``SqueezeExcite(dim, 0.25)``) or none."""
        for stage in self.stages:
            for block in stage.blocks:
                dim = block.token_mixer.dim
                block.se = SqueezeExcite(dim, 0.25) if every_block else nn.Identity()

    def _drop_reparam(self) -> None:
        """Every ``RepVggDw`` -> one depthwise ``ConvNorm`` of the same kernel (no 1x1 branch, no identity)."""
        for block in [m for m in self.modules() if isinstance(m, RepViTBlock)]:
            mixer = block.token_mixer
            if isinstance(mixer, RepVggDw):
                k = mixer.conv.c.kernel_size[0]
                block.token_mixer = ConvNorm(mixer.dim, mixer.dim, k, 1, (k - 1) // 2, groups=mixer.dim)

    def _repnext_downsample(self) -> None:
        """In stages 2-4, ``Norm(CopyConv(X))`` (RepNeXt Eq. 2) does the stride-2 depthwise conv's and the 1x1 channel
        conv's work; RepViT's pre-block before and FFN after stay."""
        for i, stage in enumerate(self.stages):
            if i == 0:
                continue
            in_dim, out_dim = self.embed_dim[i - 1], self.embed_dim[i]
            if out_dim != 2 * in_dim:
                raise ValueError(f"downsample='repnext' doubles channels: stage {i + 1} goes {in_dim} -> {out_dim}")
            stage.downsample.spatial_downsample = nn.Sequential(CopyConv(in_dim), BatchNorm2d(out_dim))
            stage.downsample.channel_downsample = nn.Identity()


default_cfgs = generate_default_cfgs({name: _repvit_cfg() for name in PAPER_FIGURES})


def _create(name: str, size: str, pretrained: bool, switches: dict[str, Any], kwargs: dict[str, Any]) -> RepVitVariant:
    if pretrained:
        raise ValueError(f"{name}: no weights are published for this ablation row; build it with pretrained=False")
    embed_dim, depth = _SIZES[size]
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    args = dict(embed_dim=embed_dim, depth=depth, **switches)
    return build_model_with_cfg(RepVitVariant, name, pretrained=False,
                                feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
                                **dict(args, **kwargs))


@register_model
def repvit_m0_9_noreparam(pretrained: bool = False, **kwargs: Any) -> RepVitVariant:
    """RepViT-M0.9 without structural re-parameterization (RepViT Table 6, 78.47%)."""
    return _create("repvit_m0_9_noreparam", "m0_9", pretrained, dict(reparam=False), kwargs)


@register_model
def repvit_m1_5_noreparam(pretrained: bool = False, **kwargs: Any) -> RepVitVariant:
    """RepViT-M1.5 without structural re-parameterization (RepViT Table 6, 82.09%)."""
    return _create("repvit_m1_5_noreparam", "m1_5", pretrained, dict(reparam=False), kwargs)


@register_model
def repvit_m2_3_noreparam(pretrained: bool = False, **kwargs: Any) -> RepVitVariant:
    """RepViT-M2.3 without structural re-parameterization (RepViT Table 6, 83.10%)."""
    return _create("repvit_m2_3_noreparam", "m2_3", pretrained, dict(reparam=False), kwargs)


@register_model
def repvit_m0_9_nose(pretrained: bool = False, **kwargs: Any) -> RepVitVariant:
    """RepViT-M0.9 without SE layers (RepViT Table 7 "w/o SE", 77.92%)."""
    return _create("repvit_m0_9_nose", "m0_9", pretrained, dict(se_layout="none"), kwargs)


@register_model
def repvit_m1_5_nose(pretrained: bool = False, **kwargs: Any) -> RepVitVariant:
    """RepViT-M1.5 without SE layers (RepViT Table 7 "w/o SE", 81.86%)."""
    return _create("repvit_m1_5_nose", "m1_5", pretrained, dict(se_layout="none"), kwargs)


@register_model
def repvit_m0_9_se_per_block(pretrained: bool = False, **kwargs: Any) -> RepVitVariant:
    """RepViT-M0.9 with an SE layer in every block (RepViT Table 7 "per block", 78.75%)."""
    return _create("repvit_m0_9_se_per_block", "m0_9", pretrained, dict(se_layout="per_block"), kwargs)


@register_model
def repvit_m1_5_se_per_block(pretrained: bool = False, **kwargs: Any) -> RepVitVariant:
    """RepViT-M1.5 with an SE layer in every block (RepViT Table 7 "per block", 82.29%)."""
    return _create("repvit_m1_5_se_per_block", "m1_5", pretrained, dict(se_layout="per_block"), kwargs)


@register_model
def repvit_m0_9_repnext_ds(pretrained: bool = False, **kwargs: Any) -> RepVitVariant:
    """RepViT-M0.9 with RepNeXt's downsampling layer (RepNeXt Table 5, last row: 4.99 M, 75.32% at 120 epochs)."""
    return _create("repvit_m0_9_repnext_ds", "m0_9", pretrained, dict(downsample="repnext"), kwargs)
