"""SAM image encoders on timm backbones: RepViT-SAM (RepViT §4.2), ReGLA-SAM, MobileSAM's TinyViT-5M.

Every encoder maps a normalised, padded ``(B, 3, S, S)`` image to SAM's ``(B, 256, S/16, S/16)`` image embedding,
as ``segment_anything``'s ``ImageEncoderViT`` does, so that Meta's ``PromptEncoder``, ``MaskDecoder``,
``SamPredictor`` and ``SamAutomaticMaskGenerator`` run on it unchanged. Each has ``img_size`` (read by
``SamPredictor``), a ``backbone`` (a timm model) and SAM's ``neck`` (1x1 conv to 256, LayerNorm2d, 3x3 conv,
LayerNorm2d; SAM §A, the neck of RepViT-SAM and MobileSAM).

* **RepViT-SAM** (RepViT §4.2; THU-MIG/RepViT ``sam/repvit_sam/modeling/repvit.py``): timm's RepViT-M2.3 with the
  last downsampling's depthwise conv at stride 1, so stage 4 stays at 1/16. The released checkpoint names its
  layers ``features.0 .. features.54``; :func:`repvit_sam_release_to_timm` maps them onto timm's module names.
* **ReGLA-SAM**: any ``regla_*`` backbone with the same neck at 1/16, reached in one of two ways
  (``last_stage``): ``"stride1"`` sets the last downsampling conv to stride 1, as RepViT-SAM does (stage 4 runs on
  4x the pixels; its attention is linear in them); ``"fuse"`` keeps stage 4 at 1/32 and adds its 1x1 projection,
  upsampled x2, to the 1x1 projection of stage 3 (1/16) in the neck's first layer (an FPN-style lateral sum,
  equal to a 1x1 conv on the concatenation).
* **MobileSAM's TinyViT-5M** (MobileSAM; ``tiny_vit_sam.py``): timm's TinyViT with embed dims 64/128/160/320,
  depths 2/2/6/2, heads 2/4/5/10, windows 7/7/14/7, and the last patch merging at stride 1 (1/16).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d as SamLayerNorm2d
from torch import nn

__all__ = [
    "DEFAULT_LAST_STAGE",
    "EMBED_DIM",
    "FuseProjection",
    "LAST_STAGE_MODES",
    "RepViTSamEncoder",
    "ReglaSamEncoder",
    "TimmSamEncoder",
    "TinyViTSamEncoder",
    "is_mobile_sam_release",
    "is_repvit_sam_release",
    "mobile_sam_release_to_timm",
    "repvit_sam_release_to_timm",
    "sam_neck",
]

#: Channels of SAM's image embedding (the prompt encoder's and mask decoder's width).
EMBED_DIM = 256
#: How a ReGLA backbone's last stage reaches 1/16.
LAST_STAGE_MODES = ("stride1", "fuse")
#: The default (docs/sam.md, "Choice: fuse"): faster, and stage 4 keeps the resolution it was pre-trained at.
DEFAULT_LAST_STAGE = "fuse"
#: RepViT-M2.3's blocks per stage in timm's layout (the released RepViT-SAM: 7/7/35/3 ``features`` blocks, the
#: last of stages 1-3 being timm's ``downsample.pre_block`` of the next stage).
REPVIT_M2_3_DEPTHS = (6, 6, 34, 2)


class LayerNorm2d(SamLayerNorm2d):
    """SAM's ``LayerNorm2d`` (same parameters, same arithmetic), with the channel means taken as global pooling.

    SAM's ``x.mean(1)`` over channels is an operator ExecuTorch's XNNPACK delegate does not take, so the neck
    would run outside the delegate and cut the encoder's graph in two. Here each mean over channels is the mean
    over the last two dims of a ``(B, H*W, C, 1)`` view (XNNPACK's global average pooling), which gives the same
    values (bit-identical on CPU in our tests).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = _channel_mean(x)
        d = x - u
        var = _channel_mean(d * d)
        return self.weight[:, None, None] * (d / torch.sqrt(var + self.eps)) + self.bias[:, None, None]


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(1, keepdim=True)`` of a ``(B, C, H, W)`` tensor, computed as a global pooling."""
    b, _, h, w = x.shape
    return x.flatten(2).transpose(1, 2).unsqueeze(-1).mean((2, 3), keepdim=True).reshape(b, 1, h, w)


def sam_neck(in_chs: int | nn.Module, out_chs: int = EMBED_DIM) -> nn.Sequential:
    """SAM's neck: 1x1 conv (no bias), LayerNorm2d, 3x3 conv (no bias), LayerNorm2d (ImageEncoderViT.neck).

    ``in_chs`` may be a module replacing the first 1x1 conv (:class:`FuseProjection`); the key names stay
    ``neck.0`` .. ``neck.3`` as in SAM, MobileSAM and RepViT-SAM.
    """
    first = in_chs if isinstance(in_chs, nn.Module) else nn.Conv2d(in_chs, out_chs, 1, bias=False)
    return nn.Sequential(first, LayerNorm2d(out_chs), nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False),
                         LayerNorm2d(out_chs))


class FuseProjection(nn.Module):
    """The first neck layer of ReGLA-SAM's ``fuse`` mode: ``P16(x16) + up2(P32(x32))`` with 1x1 convs ``P``.

    Projecting before upsampling is exact (bilinear resizing and a 1x1 conv commute) and does the stride-32 conv
    on a quarter of the pixels.
    """

    def __init__(self, chs16: int, chs32: int, out_chs: int = EMBED_DIM):
        super().__init__()
        self.proj16 = nn.Conv2d(chs16, out_chs, 1, bias=False)
        self.proj32 = nn.Conv2d(chs32, out_chs, 1, bias=False)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x16, x32 = feats
        y32 = F.interpolate(self.proj32(x32), size=x16.shape[-2:], mode="bilinear", align_corners=False)
        return self.proj16(x16) + y32


class TimmSamEncoder(nn.Module):
    """A timm backbone whose ``forward_features`` is at 1/16, then SAM's neck."""

    def __init__(self, backbone: nn.Module, out_chs: int, img_size: int = 1024):
        super().__init__()
        self.img_size = img_size
        self.backbone = backbone
        self.neck = sam_neck(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone.forward_features(x))


class RepViTSamEncoder(TimmSamEncoder):
    """RepViT-SAM's image encoder (RepViT §4.2): timm's RepViT-M2.3, last downsampling at stride 1, SAM's neck.

    Output ``(B, 256, S/16, S/16)``: 256x64x64 for SAM's 1024 input, as released.
    """

    def __init__(self, img_size: int = 1024):
        import timm

        backbone = timm.create_model("repvit_m2_3", num_classes=0, global_pool="")
        # The released model builds its 320->640 downsampling block at stride 1 (`stride if inp != 320 else 1`).
        backbone.stages[3].downsample.spatial_downsample.c.stride = (1, 1)
        super().__init__(backbone, backbone.num_features, img_size)


class TinyViTSamEncoder(TimmSamEncoder):
    """MobileSAM's image encoder: TinyViT-5M (timm) with the last patch merging at stride 1, SAM's neck."""

    def __init__(self, img_size: int = 1024):
        from timm.models.tiny_vit import TinyVit

        backbone = TinyVit(num_classes=0, embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2),
                           num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7), drop_path_rate=0.0)
        # MobileSAM's PatchMerging uses stride 1 when it outputs 320 channels (tiny_vit_sam.py): 1/16 at the end.
        backbone.stages[3].downsample.conv2.conv.stride = (1, 1)
        backbone.head = nn.Identity()  # the classifier's norm: not part of MobileSAM's encoder (no tensors left)
        super().__init__(backbone, backbone.num_features, img_size)


class ReglaSamEncoder(nn.Module):
    """ReGLA-SAM: a ``regla_*`` backbone (stem and four stages, classifier removed) and SAM's neck at 1/16.

    ``last_stage="stride1"``: the stage-4 downsampling conv runs at stride 1 and the neck reads stage 4;
    ``"fuse"``: stages 3 (1/16) and 4 (1/32) both feed the neck through :class:`FuseProjection`. The backbone
    keeps regla's module names (``backbone.stem``, ``backbone.stages.N``), so an ImageNet checkpoint of the same
    model loads into it (``load_into(encoder.backbone, weights, strict=False)`` leaves only the head unused).
    """

    def __init__(self, model_name: str = "regla_m", last_stage: str = DEFAULT_LAST_STAGE, img_size: int = 1024,
                 **kwargs: object):
        super().__init__()
        import timm

        import regla.models  # noqa: F401  registers regla_*

        if last_stage not in LAST_STAGE_MODES:
            raise ValueError(f"last_stage must be one of {LAST_STAGE_MODES}, got {last_stage!r}")
        self.img_size = img_size
        self.last_stage = last_stage
        backbone = timm.create_model(model_name, num_classes=0, **kwargs)
        backbone.prune_intermediate_layers(indices=[2, 3], prune_head=True)
        chs16, chs32 = (info["num_chs"] for info in backbone.feature_info[2:4])
        if last_stage == "stride1":
            backbone.stages[3].downsample.conv.stride = (1, 1)
            backbone.feature_info[3]["reduction"] = 16
            self.neck = sam_neck(chs32)
        else:
            self.neck = sam_neck(FuseProjection(chs16, chs32))
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.last_stage == "stride1":
            return self.neck(self.backbone.forward_features(x))
        return self.neck(self.backbone.forward_intermediates(x, indices=[2, 3], intermediates_only=True))


# ---------------------------------------------------------------------------------------------------------------
# The released RepViT-SAM checkpoint (repvit_sam.pt): ``image_encoder.features.N.*`` -> timm's names
# ---------------------------------------------------------------------------------------------------------------

# Inside one stride-1 release block: token_mixer = [RepVGGDW, SE], channel_mixer = Residual([conv, GELU, conv]).
_BLOCK_RULES = (
    ("token_mixer.0.", "token_mixer."),
    ("token_mixer.1.", "se."),
    ("channel_mixer.m.0.", "channel_mixer.conv1."),
    ("channel_mixer.m.2.", "channel_mixer.conv2."),
)
# Inside a release downsampling block: token_mixer = [dw conv stride 2, Identity, 1x1 conv], FFN residual.
_DOWN_RULES = (
    ("token_mixer.0.", "spatial_downsample."),
    ("token_mixer.2.", "channel_downsample."),
    ("channel_mixer.m.0.", "ffn.conv1."),
    ("channel_mixer.m.2.", "ffn.conv2."),
)
_FEATURE_KEY = re.compile(r"^(?P<prefix>.*?)features\.(?P<idx>\d+)\.(?P<rest>.+)$")


def _release_feature_targets(depths: tuple[int, ...] = REPVIT_M2_3_DEPTHS) -> dict[int, tuple[str, tuple]]:
    """Release ``features`` index -> (timm module path, rename rules) for RepViT-SAM's layout.

    ``features.0`` is the stem (``0`` and ``2``: the two convs); then stage 1's blocks; then for each later stage
    the previous stage's last block (timm: ``downsample.pre_block``), the downsampling block, and the stage's blocks.
    """
    targets: dict[int, tuple[str, tuple]] = {0: ("stem", (("0.", "conv1."), ("2.", "conv2.")))}
    idx = 1
    for stage, depth in enumerate(depths):
        if stage > 0:
            targets[idx] = (f"stages.{stage}.downsample.pre_block", _BLOCK_RULES)
            targets[idx + 1] = (f"stages.{stage}.downsample", _DOWN_RULES)
            idx += 2
        for block in range(depth):
            targets[idx] = (f"stages.{stage}.blocks.{block}", _BLOCK_RULES)
            idx += 1
    return targets


def is_repvit_sam_release(state: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state`` is in the released RepViT-SAM layout (``image_encoder.features.N.*``)."""
    return any(k.startswith("image_encoder.features.") for k in state)


def repvit_sam_release_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a released RepViT-SAM state dict onto :class:`RepViTSamEncoder`'s module names.

    ``image_encoder.features.N.<...>`` becomes ``image_encoder.backbone.<timm path>.<...>``; every other key
    (``image_encoder.neck.*``, ``prompt_encoder.*``, ``mask_decoder.*``) is kept. A ``features`` key this layout
    does not have is kept as it is, so that a strict load reports it as unused.
    """
    targets = _release_feature_targets()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _FEATURE_KEY.match(key)
        target = targets.get(int(match["idx"])) if match else None
        renamed = _rename(match["rest"], target[1]) if target else None
        out[f"{match['prefix']}backbone.{target[0]}.{renamed}" if renamed else key] = value
    return out


# ---------------------------------------------------------------------------------------------------------------
# The released MobileSAM checkpoint (mobile_sam.pt): ``image_encoder.layers.N.*`` -> timm's TinyVit names
# ---------------------------------------------------------------------------------------------------------------

_TINYVIT_KEY = re.compile(r"^(?P<prefix>.*?image_encoder\.)(?P<rest>(patch_embed|layers|norm_head|head)\..+)$")


def is_mobile_sam_release(state: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state`` is in MobileSAM's layout (``image_encoder.layers.N.*``, TinyViT's own names)."""
    return any(k.startswith("image_encoder.layers.") for k in state)


def mobile_sam_release_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a released MobileSAM state dict onto :class:`TinyViTSamEncoder`'s (timm's) module names.

    ``patch_embed.seq.0/2`` -> ``patch_embed.conv1/2``; ``layers.i.blocks`` -> ``stages.i.blocks``; a layer's
    closing ``downsample`` -> the next stage's opening ``downsample`` (timm merges patches at a stage's start);
    conv-BN children ``c`` -> ``conv``. TinyViT's classifier (``norm_head``, ``head``: unused by SAM) is dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _TINYVIT_KEY.match(key)
        if not match:
            out[key] = value
            continue
        rest = match["rest"]
        if rest.startswith(("norm_head.", "head.")):
            continue
        rest = re.sub(r"^patch_embed\.seq\.0\.", "patch_embed.conv1.", rest)
        rest = re.sub(r"^patch_embed\.seq\.2\.", "patch_embed.conv2.", rest)
        rest = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.", rest)
        rest = re.sub(r"^layers\.(\d+)\.", r"stages.\1.", rest)
        rest = re.sub(r"\.c\.(weight|bias)$", r".conv.\1", rest)
        out[f"{match['prefix']}backbone.{rest}"] = value
    return out


def _rename(rest: str, rules: tuple) -> str | None:
    """``rest`` with the first matching prefix rule applied (``None`` if none matches)."""
    for old, new in rules:
        if rest.startswith(old):
            return new + rest[len(old):]
    return None
