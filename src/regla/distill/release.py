"""Loaders of the teachers' released checkpoints (ReGLA §3.5), each mapping a release layout onto its timm model.

Every file is read by :func:`regla.checkpoints.read_weights` (containers ``model``/``state_dict`` unwrapped,
``module.`` removed, pickles read with ``weights_only``) and loaded strictly by :func:`regla.checkpoints.load_into`.
In between, a layout renames keys as the release has them into timm's names, with timm's own converters where timm
has one (``vision_transformer.checkpoint_filter_fn``: DINOv2's ``mask_token``/SwiGLU, DeiT-III's ``gamma_N``,
AIMv2's ``preprocessor.``/``trunk.``, OpenCLIP's ``visual.trunk.``, position embeddings resampled to the
teacher's resolution; ``hieradet_sam2.checkpoint_filter_fn``: SAM2's ``mlp.layers.N``), and drops what a feature
teacher does not use (classifiers, iBOT's ``masked_embed``, SAM2's neck and decoders, CLIP's text tower).

Nothing is downloaded: a teacher without a local file, a missing file, or a file of another layout is a
:class:`~regla.checkpoints.CheckpointError` naming the teacher, the path and what was expected.
:func:`build_teacher` loads one teacher this way and freezes it for the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from regla.checkpoints import CheckpointError, create_model_from_weights, load_into, read_weights

from .teachers import Teacher, TeacherSpec, create_teacher_model, teacher_dtype

__all__ = ["LAYOUTS", "Layout", "build_teacher", "check_checkpoint", "load_release", "map_release"]

State = dict[str, torch.Tensor]


def _vit_filter(state: State, model: nn.Module, **kw) -> State:
    from timm.models.vision_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(state, model, **kw)


def _hiera_filter(state: State, model: nn.Module) -> State:
    from timm.models.hieradet_sam2 import checkpoint_filter_fn

    return checkpoint_filter_fn(state, model)


@dataclass(frozen=True)
class Layout:
    """A release format: the key prefix its backbone sits under, prefixes it may carry, keys a feature teacher
    drops, and timm's converter to apply."""

    prefix: str = ""  # keep only keys under it, prefix removed (SAM2: image_encoder.trunk.)
    strip: tuple[str, ...] = ()  # prefixes removed where present (iBOT: backbone.)
    drop: tuple[str, ...] = ()  # key prefixes a feature teacher does not use
    convert: Callable[[State, nn.Module], State] | None = None
    expect: str = ""  # a key the release must hold, for the error message


LAYOUTS: dict[str, Layout] = {
    "dinov2": Layout(convert=_vit_filter, expect="mask_token"),
    "deit3": Layout(drop=("head.",), convert=partial(_vit_filter, adapt_layer_scale=True),
                    expect="blocks.0.gamma_1"),
    "ibot": Layout(strip=("backbone.",), drop=("head.", "masked_embed"), convert=_vit_filter,
                   expect="blocks.0.attn.qkv.weight"),
    "dbot_ft": Layout(drop=("head.",), convert=_vit_filter, expect="fc_norm.weight"),
    "aimv2": Layout(drop=("head.",), convert=_vit_filter, expect="preprocessor.patchifier.proj.weight"),
    "vitamin": Layout(convert=_vit_filter, expect="visual.trunk.pos_embed"),
    "sam2": Layout(prefix="image_encoder.trunk.", convert=_hiera_filter, expect="image_encoder.trunk.pos_embed"),
    "timm": Layout(),  # a timm/regla weights file (a `regla train` run's .safetensors, a timm checkpoint)
}


def map_release(spec: TeacherSpec, state: Mapping[str, torch.Tensor], model: nn.Module) -> State:
    """``state`` in ``spec.layout``'s release layout -> the keys of ``model`` (the timm model of ``spec``)."""
    layout = LAYOUTS[spec.layout]
    out = dict(state)
    if layout.prefix:
        out = {k[len(layout.prefix):]: v for k, v in out.items() if k.startswith(layout.prefix)}
    for prefix in layout.strip:
        out = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in out.items()}
    if layout.convert is not None:
        out = layout.convert(out, model)
    return {k: v for k, v in out.items() if not k.startswith(layout.drop)} if layout.drop else out


def check_checkpoint(spec: TeacherSpec) -> Path:
    """The local file of ``spec``'s checkpoint; a CheckpointError naming the teacher when unset or missing."""
    what = spec.release or f"weights of {spec.model}"
    if not spec.checkpoint:
        raise CheckpointError(f"teacher {spec.name}: no checkpoint given; set teacher_checkpoints.{spec.name}=PATH "
                              f"(expected: {what}; nothing is downloaded)")
    path = Path(spec.checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(f"teacher {spec.name}: checkpoint {path} not found (expected: {what})")
    return path


def load_release(spec: TeacherSpec) -> nn.Module:
    """The timm model of ``spec`` with its release checkpoint loaded strictly (eval mode)."""
    if spec.layout not in LAYOUTS:
        raise CheckpointError(f"teacher {spec.name}: unknown release layout {spec.layout!r} "
                              f"(known: {', '.join(LAYOUTS)})")
    path = check_checkpoint(spec)
    what = spec.release or f"weights of {spec.model}"
    try:
        if spec.layout == "timm":
            model, _, _ = create_model_from_weights(path, spec.model, **spec.model_kwargs)
            return model.eval()
        weights = read_weights(path)
        model = create_teacher_model(spec)
        layout = LAYOUTS[spec.layout]
        if layout.expect and not any(k.endswith(layout.expect) for k in weights.state):
            raise CheckpointError(f"no key {layout.expect!r} in {weights.describe()}, so it is not this layout")
        mapped = map_release(spec, weights.state, model)
        load_into(model, mapped, strict=True, allow_fused=False, source=weights.describe())
    except CheckpointError as e:
        raise CheckpointError(f"teacher {spec.name}: {path} does not fit {spec.describe()} (expected: {what}): "
                              f"{e}") from e
    return model.eval()


def build_teacher(spec: TeacherSpec, device: torch.device) -> Teacher:
    """Create, load (strictly, from its release file) and freeze one teacher; errors name teacher and path."""
    model = load_release(spec)
    return Teacher(spec, model, teacher_dtype(device)).to(device)
