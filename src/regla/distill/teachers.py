"""The teachers of ReGLA §3.5 (Table 8's sets ``4tea``, ``6tea``, ``7tea``), each run by a timm architecture.

§3.5 names seven teachers: dBOT-ft and DeiT-III (classification), DINOv2 (detection), SAM2 (segmentation), iBOT
(masked modelling), ViTamin (contrastive) and AIMv2 (autoregressive). The paper gives no sizes; we take the
base-size model of each family (AIMv2's smallest is large) as UNIC's ViT-B/16 teachers, which the 4tea set shares
(docs/distillation.md). Each :class:`TeacherSpec` records the input normalisation (ImageNet or CLIP), the
resolution it runs at, where its class token comes from and the layout of its released checkpoint
(:mod:`regla.distill.release`). Any timm model can be added as a teacher from a recipe (a mapping with ``model``).

:class:`Teacher` runs one frozen teacher (eval mode, no gradient, bf16 on a GPU that has it) on the student's batch:
it undoes the student's normalisation, applies its own, resizes to its resolution, and returns its class token
(or None) and its patch tokens as a ``(B, C, h, w)`` grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regla.errors import UsageError

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "REGISTRY", "SETS", "Teacher", "TeacherSpec",
           "resolve_teachers"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLASS_TOKENS = ("token", "pooled", None)


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher: the timm model that runs it and how.

    ``class_token``: ``"token"`` (the first prefix token after the final norm), ``"pooled"`` (the model's own pooled
    output, ``forward_head(pre_logits=True)``: dBOT-ft's ``fc_norm`` of the mean patch token, as UNIC's dBOT-ft
    teacher), or None (no class token: the patch loss only, unless ``addcls`` pools one). ``layout`` names the
    release format its checkpoint comes in (:data:`regla.distill.release.LAYOUTS`).
    """

    name: str
    model: str
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resolution: int = 224
    class_token: str | None = "token"
    layout: str = "timm"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    release: str = ""  # what the release file is, for messages

    def describe(self) -> str:
        return f"{self.name} ({self.model} @ {self.resolution} px)"


REGISTRY: dict[str, TeacherSpec] = {s.name: s for s in (
    TeacherSpec("dbot_ft", "vit_base_patch16_224", class_token="pooled", layout="dbot_ft",
                model_kwargs={"global_pool": "avg", "fc_norm": True},
                release="dBOT ViT-B/16 fine-tuned on IN-1K (84.5_dbot_base_finetune.pth: 'model' with fc_norm)"),
    TeacherSpec("deit3", "deit3_base_patch16_224", layout="deit3",
                release="DeiT-III ViT-B/16 (deit_3_base_224_*.pth: 'model', layer scale as gamma_1/gamma_2)"),
    TeacherSpec("dinov2", "vit_base_patch14_dinov2", layout="dinov2",
                release="DINOv2 ViT-B/14 (dinov2_vitb14_pretrain.pth: a plain state dict with mask_token)"),
    TeacherSpec("ibot", "vit_base_patch16_224", layout="ibot",
                release="iBOT ViT-B/16 teacher (checkpoint_teacher.pth: 'state_dict', DINO ViT keys)"),
    TeacherSpec("vitamin", "vitamin_base_224", mean=CLIP_MEAN, std=CLIP_STD, class_token=None, layout="vitamin",
                release="ViTamin-B OpenCLIP checkpoint (open_clip_pytorch_model.bin: 'visual.trunk.' keys)"),
    TeacherSpec("aimv2", "aimv2_large_patch14_224", mean=CLIP_MEAN, std=CLIP_STD, class_token=None, layout="aimv2",
                release="AIMv2-L/14 224 (model.safetensors: 'preprocessor.' and 'trunk.' keys)"),
    # SAM2's trunk ends at stride 32: at 448 px its grid is the 14x14 of a 224 px student's 1/16 grid.
    TeacherSpec("sam2", "sam2_hiera_base_plus", resolution=448, class_token=None, layout="sam2",
                release="SAM2 Hiera-B+ (sam2_hiera_base_plus.pt: 'model', trunk under 'image_encoder.trunk.')"),
)}

#: Table 8's teacher sets.
SETS: dict[str, tuple[str, ...]] = {
    "4tea": ("dbot_ft", "deit3", "dinov2", "ibot"),
    "6tea": ("dbot_ft", "deit3", "dinov2", "ibot", "vitamin", "aimv2"),
    "7tea": ("dbot_ft", "deit3", "dinov2", "ibot", "vitamin", "aimv2", "sam2"),
}

_SPEC_KEYS = {f.name for f in fields(TeacherSpec)}


def _from_mapping(entry: Mapping[str, Any]) -> TeacherSpec:
    """A teacher from a recipe mapping: a registry name with changes, or any timm ``model`` with a ``name``."""
    unknown = sorted(set(entry) - _SPEC_KEYS)
    if unknown:
        raise UsageError(f"teacher {dict(entry)}: unknown key(s) {', '.join(unknown)} (allowed: "
                         f"{', '.join(sorted(_SPEC_KEYS))})")
    values = dict(entry)
    for key in ("mean", "std"):
        if key in values:
            values[key] = tuple(float(v) for v in values[key])
    if values.get("class_token") not in CLASS_TOKENS:
        raise UsageError(f"teacher {entry}: class_token must be 'token', 'pooled' or null")
    name = values.get("name")
    if name in REGISTRY:
        return replace(REGISTRY[name], **values)
    if not name or not values.get("model"):
        raise UsageError(f"teacher {dict(entry)}: a teacher outside the registry needs 'name' and 'model' "
                         f"(registry: {', '.join(REGISTRY)})")
    return TeacherSpec(**values)


def resolve_teachers(entries: Sequence[Any], checkpoints: Mapping[str, str] | None = None) -> list[TeacherSpec]:
    """The teachers a recipe names: set names (``7tea``), registry names, or mappings; checkpoints by name."""
    specs: list[TeacherSpec] = []
    for entry in entries:
        if isinstance(entry, str) and entry in SETS:
            specs += [REGISTRY[n] for n in SETS[entry]]
        elif isinstance(entry, str) and entry in REGISTRY:
            specs.append(REGISTRY[entry])
        elif isinstance(entry, Mapping):
            specs.append(_from_mapping(entry))
        else:
            raise UsageError(f"teacher {entry!r}: not a set ({', '.join(SETS)}), a registered teacher "
                             f"({', '.join(REGISTRY)}) or a mapping with name and model")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"teacher(s) named twice: {', '.join(dup)}")
    if not specs:
        raise UsageError("no teachers given (teachers: [7tea], or a list of names)")
    unknown = sorted(set(checkpoints or {}) - set(names) - set(REGISTRY))  # a shared list may name unused ones
    if unknown:
        raise UsageError(f"teacher_checkpoints names unknown teacher(s) {', '.join(unknown)} "
                         f"(teachers: {', '.join(names)}; registry: {', '.join(REGISTRY)})")
    return [replace(s, checkpoint=(checkpoints or {}).get(s.name, s.checkpoint)) for s in specs]


def resample_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(B, C, h, w)`` map on another grid: average pooling for an integer shrink, else bilinear (antialiased)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h % size[0] == 0 and w % size[1] == 0:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=h > size[0] or w > size[1])


class Teacher(nn.Module):
    """A frozen teacher: the student's batch in, ``(class token or None, patch grid (B, C, h, w))`` out, float32."""

    def __init__(self, spec: TeacherSpec, model: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        self.model = model.eval().requires_grad_(False).to(dtype)
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> Teacher:  # always in eval mode (§3.5: frozen teachers)
        return super().train(False)

    def prepare(self, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Student-normalised images -> this teacher's normalisation and resolution."""
        x = (images.float() * std + mean - self.mean) / self.std
        if x.shape[-1] != self.spec.resolution or x.shape[-2] != self.spec.resolution:
            x = F.interpolate(x, size=(self.spec.resolution,) * 2, mode="bicubic", align_corners=False,
                              antialias=True)
        return x.to(self.dtype)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        x = self.prepare(images, mean, std)
        with torch.autocast(x.device.type, enabled=False):
            out = self.model.forward_features(x)
            cls = self.model.forward_head(out, pre_logits=True) if self.spec.class_token == "pooled" else None
        if out.ndim == 3:
            prefix = int(getattr(self.model, "num_prefix_tokens", 0))
            if self.spec.class_token == "token":
                if prefix < 1:
                    raise UsageError(f"teacher {self.spec.describe()} has no class token: set class_token: null")
                cls = out[:, 0]
            grid = _token_grid(self.model, out.shape[1] - prefix)
            patches = out[:, prefix:].transpose(1, 2).reshape(out.shape[0], out.shape[2], *grid)
        elif out.ndim == 4:
            nhwc = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
            patches = out.permute(0, 3, 1, 2) if nhwc else out
        else:
            raise UsageError(f"teacher {self.spec.describe()}: forward_features gave a {out.ndim}-D output; "
                             "expected tokens (B, N, C) or a map (B, C, H, W)")
        return (None if cls is None else cls.float()), patches.float().contiguous()


def _token_grid(model: nn.Module, n: int) -> tuple[int, int]:
    """(h, w) of ``n`` patch tokens: the patch embedding's grid if it matches, else a square."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and grid[0] * grid[1] == n:
        return int(grid[0]), int(grid[1])
    side = int(round(n ** 0.5))
    if side * side != n:
        raise UsageError(f"cannot arrange {n} teacher tokens on a grid")
    return side, side


def create_teacher_model(spec: TeacherSpec) -> nn.Module:
    """The timm model of ``spec`` without a classifier, at its resolution (ViTs are built for it)."""
    import timm

    from regla.preflight import require_model

    require_model(spec.model)
    kwargs = dict(spec.model_kwargs)
    kwargs.setdefault("num_classes", 0)
    if spec.layout != "sam2" and "img_size" not in kwargs and _takes_img_size(spec.model):
        kwargs["img_size"] = spec.resolution
    model = timm.create_model(spec.model, pretrained=False, **kwargs)
    if spec.layout == "sam2":
        model.head = nn.Identity()  # SAM2's trunk has no final norm: the teacher is the raw trunk output
    return model


def _takes_img_size(name: str) -> bool:
    return any(name.startswith(p) for p in ("vit_", "deit", "aimv2_", "vitamin_", "eva", "beit"))


def teacher_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that has it (§3.5's teachers are inference only), else float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
