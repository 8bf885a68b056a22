"""``build_sam(encoder, ...)``: Meta's ``segment_anything.Sam`` with any of our image encoders, and its weights.

The prompt encoder and mask decoder are ``segment_anything``'s own, with SAM's settings (256-d prompts, a
two-layer ``TwoWayTransformer`` with 8 heads and MLP 2048, 3 multimask outputs, 16 mask-input channels), exactly as
``segment_anything.build_sam``, MobileSAM and RepViT-SAM build them. Weights are read only through
:mod:`regla.checkpoints`; the released RepViT-SAM layout (``image_encoder.features.*``) is renamed onto timm's
module names first (:func:`regla.sam.encoders.repvit_sam_release_to_timm`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..checkpoints import LoadReport, Weights, load_into, read_weights
from ..errors import UsageError
from .encoders import (
    DEFAULT_LAST_STAGE,
    EMBED_DIM,
    LAST_STAGE_MODES,
    ReglaSamEncoder,
    RepViTSamEncoder,
    TinyViTSamEncoder,
    is_mobile_sam_release,
    is_repvit_sam_release,
    mobile_sam_release_to_timm,
    repvit_sam_release_to_timm,
)

__all__ = ["ENCODERS", "build_image_encoder", "build_sam", "encoder_names", "load_sam_weights"]

#: SAM's image normalisation (``segment_anything.build_sam``), in 0-255 pixel units.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
PATCH = 16  # every encoder's output stride

#: Encoder name -> what it is. ``regla_<v>_sam`` exists for every registered ``regla_<v>``.
ENCODERS: dict[str, str] = {
    "repvit_sam": "RepViT-SAM: RepViT-M2.3, last downsampling at stride 1 (RepViT §4.2)",
    "mobile_sam": "MobileSAM: TinyViT-5M, last patch merging at stride 1",
    "sam_vit_b": "SAM ViT-B (segment_anything)",
    "sam_vit_l": "SAM ViT-L (segment_anything)",
    "sam_vit_h": "SAM ViT-H (segment_anything), the teacher",
}
_VIT = {"sam_vit_b": (768, 12, 12, (2, 5, 8, 11)), "sam_vit_l": (1024, 24, 16, (5, 11, 17, 23)),
        "sam_vit_h": (1280, 32, 16, (7, 15, 23, 31))}


def encoder_names() -> list[str]:
    """Every encoder name :func:`build_sam` accepts."""
    from timm import list_models

    import regla.models  # noqa: F401  registers regla_*

    regla = [f"{m}_sam" for m in list_models("regla_*")]
    return [*ENCODERS, *regla]


def _check_name(name: str) -> None:
    if name not in encoder_names():
        import difflib

        close = difflib.get_close_matches(name, encoder_names(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown SAM encoder {name!r}: expected one of {', '.join(encoder_names())}{hint}")


def build_image_encoder(name: str, img_size: int = 1024, last_stage: str = DEFAULT_LAST_STAGE) -> nn.Module:
    """The image encoder ``name`` (see :data:`ENCODERS`, or ``regla_<v>_sam``) for ``img_size`` input.

    ``last_stage`` (``stride1`` | ``fuse``) applies to ReGLA encoders only.
    """
    _check_name(name)
    if img_size % PATCH or img_size < 4 * PATCH:
        raise UsageError(f"img_size must be a multiple of {PATCH} and at least {4 * PATCH}, got {img_size}")
    if last_stage not in LAST_STAGE_MODES:
        raise UsageError(f"last_stage must be one of {', '.join(LAST_STAGE_MODES)}, got {last_stage!r}")
    if name == "repvit_sam":
        return RepViTSamEncoder(img_size)
    if name == "mobile_sam":
        return TinyViTSamEncoder(img_size)
    if name in _VIT:
        return _vit_encoder(name, img_size)
    return ReglaSamEncoder(name[: -len("_sam")], last_stage=last_stage, img_size=img_size)


def _vit_encoder(name: str, img_size: int) -> nn.Module:
    """SAM's ``ImageEncoderViT`` with ``segment_anything.build_sam``'s settings for ViT-B/L/H."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT

    dim, depth, heads, global_attn = _VIT[name]
    return ImageEncoderViT(depth=depth, embed_dim=dim, img_size=img_size, mlp_ratio=4,
                           norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=PATCH,
                           qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn, window_size=14,
                           out_chans=EMBED_DIM)


def build_sam(encoder: str | nn.Module, img_size: int = 1024, checkpoint: str | os.PathLike | None = None, *,
              last_stage: str = DEFAULT_LAST_STAGE, strict: bool = True) -> Any:
    """``segment_anything.Sam`` with the image encoder ``encoder`` (a name, or a module with ``img_size``).

    ``checkpoint``: a whole-SAM weights file (SAM's and MobileSAM's ``.pth``, RepViT-SAM's ``repvit_sam.pt``, or
    what ``regla sam`` writes), loaded through :func:`load_sam_weights` (strictly by default). In eval mode.
    """
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    image_encoder = build_image_encoder(encoder, img_size, last_stage) if isinstance(encoder, str) else encoder
    size = int(getattr(image_encoder, "img_size", img_size))
    grid = size // PATCH
    sam = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(embed_dim=EMBED_DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048,
                                                               num_heads=8),
                                 transformer_dim=EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    sam.eval()
    if checkpoint is not None:
        load_sam_weights(sam, read_weights(checkpoint), strict=strict)
    return sam


def load_sam_weights(sam: nn.Module, weights: Weights | Mapping[str, torch.Tensor],
                     strict: bool = True) -> LoadReport:
    """Load a whole-SAM state dict into ``sam`` (through :func:`regla.checkpoints.load_into`); returns the report.

    The released RepViT-SAM and MobileSAM layouts are renamed first. ``strict``: every tensor must fit (else
    :class:`regla.checkpoints.CheckpointError` names what differs).
    """
    state = weights.state if isinstance(weights, Weights) else dict(weights)
    source = weights.describe() if isinstance(weights, Weights) else "state dict"
    if is_repvit_sam_release(state):
        state = repvit_sam_release_to_timm(state)
        source += " (RepViT-SAM release layout)"
    elif is_mobile_sam_release(state):
        state = mobile_sam_release_to_timm(state)
        source += " (MobileSAM release layout)"
    _, report = load_into(sam, state, strict=strict, allow_fused=False, source=source)
    return report
