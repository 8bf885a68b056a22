"""The distillation student: a backbone, a ladder over its stages and one projection head per teacher (§3.5).

UNIC's ladder of projectors (``modeling/unic.py``, ``LP``) gives every encoder block its own small MLP per teacher
and sums their outputs. ReGLA's backbone is hierarchical, so we apply the same idea to its four stages: each
stage's map is resampled to the 1/16 grid (average pooling for stages 1-3, bilinear upsampling for stage 4; §3.5
"Student features are resampled to 1/16 scale"), flattened to tokens, passed through that stage's MLP for the
teacher, and the stage outputs are summed (docs/distillation.md). The class-token prediction (``addcls``, §3.5:
"adaptive average pooling of patch tokens") sums per-stage MLPs over each stage's pooled tokens.

UNIC's ``AdaptMLP`` (Linear-GELU-Linear) is the head, hidden width ``head_hidden`` and ``head_last_hidden`` for the
last stage (UNIC: 768 and 3072). The heads are discarded after distillation (:meth:`DistillStudent.export_state`).

The teacher-feature statistics of the standardisation live here as buffers (saved and restored with the model),
with the count of standardisation updates that drives the cosine momentum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .teachers import resample_grid

__all__ = ["AdaptMLP", "DistillStudent", "FeatureStats", "TeacherHead", "create_backbone"]


class AdaptMLP(nn.Sequential):
    """UNIC's projector: Linear(dim, hidden) - GELU - Linear(hidden, out), truncated-normal init (std 0.02)."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))
        for m in self:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)


class TeacherHead(nn.Module):
    """One teacher's projectors: one MLP per ladder stage for patch tokens and, with a class token, one for it."""

    def __init__(self, dims: Sequence[int], patch_dim: int, cls_dim: int | None, hidden: int, last_hidden: int):
        super().__init__()
        widths = [last_hidden if i == len(dims) - 1 else hidden for i in range(len(dims))]
        self.patch = nn.ModuleList(AdaptMLP(d, h, patch_dim) for d, h in zip(dims, widths, strict=True))
        self.cls = None if cls_dim is None else nn.ModuleList(
            AdaptMLP(d, h, cls_dim) for d, h in zip(dims, widths, strict=True))

    def forward(self, tokens: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {"patch": sum(mlp(t) for mlp, t in zip(self.patch, tokens, strict=True))}
        if self.cls is not None:
            out["cls"] = sum(mlp(t.mean(1)) for mlp, t in zip(self.cls, tokens, strict=True))
        return out


class FeatureStats(nn.Module):
    """Running per-channel mean and std of one teacher's patch tokens and class token (UNIC ``teacher_ft_stats``)."""

    def __init__(self, patch_dim: int, cls_dim: int | None):
        super().__init__()
        self.register_buffer("patch_mean", torch.zeros(patch_dim))
        self.register_buffer("patch_std", torch.ones(patch_dim))
        if cls_dim is not None:
            self.register_buffer("cls_mean", torch.zeros(cls_dim))
            self.register_buffer("cls_std", torch.ones(cls_dim))

    def of(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"{kind}_mean"), getattr(self, f"{kind}_std")


def create_backbone(name: str, **kwargs) -> nn.Module:
    """The student backbone: the plain timm model (no classifier), so its weights load back with timm as they are."""
    import timm

    kwargs.setdefault("num_classes", 0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    if not hasattr(model, "forward_intermediates"):
        from regla.errors import UsageError

        raise UsageError(f"student {name}: timm's {type(model).__name__} has no forward_intermediates, which the "
                         "ladder reads every stage through")
    return model


class DistillStudent(nn.Module):
    """Backbone + ladder heads + teacher statistics; ``forward`` returns each teacher's predicted tokens.

    ``teachers`` maps name -> (patch-token width, class-token width or None: no class-token target). ``stages``
    picks ``feature_info`` entries (all four stages of ReGLA by default); ``grid_stride`` is the grid every stage is
    resampled to (16: §3.5).
    """

    def __init__(self, backbone: nn.Module, teachers: dict[str, tuple[int, int | None]],
                 stages: Sequence[int] | None = None, grid_stride: int = 16, head_hidden: int = 768,
                 head_last_hidden: int = 3072):
        super().__init__()
        self.backbone = backbone
        info = backbone.feature_info
        info = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        self.stages = list(range(len(info))) if stages is None else [i % len(info) for i in stages]
        self.grid_stride = grid_stride
        dims = [int(info[i]["num_chs"]) for i in self.stages]
        self.heads = nn.ModuleDict({n: TeacherHead(dims, p, c, head_hidden, head_last_hidden)
                                    for n, (p, c) in teachers.items()})
        self.stats = nn.ModuleDict({n: FeatureStats(p, c) for n, (p, c) in teachers.items()})
        self.register_buffer("stat_updates", torch.zeros((), dtype=torch.long))

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The ladder's grid for input ``x``: 1/``grid_stride`` of its size (at least 1x1)."""
        return max(x.shape[-2] // self.grid_stride, 1), max(x.shape[-1] // self.grid_stride, 1)

    def ladder(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each chosen stage's features resampled to the ladder grid, as tokens (B, h*w, C_i)."""
        maps = self.backbone.forward_intermediates(x, indices=self.stages, intermediates_only=True)
        size = self.grid(x)
        return [resample_grid(m, size).flatten(2).transpose(1, 2) for m in maps]

    def forward(self, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        tokens = self.ladder(x)
        return {name: head(tokens) for name, head in self.heads.items()}

    def export_state(self) -> dict[str, torch.Tensor]:
        """The plain backbone's weights (heads and statistics dropped), as ``timm.create_model`` loads them."""
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}

    @torch.no_grad()
    def freeze_unused(self, img_size: int, in_chans: int = 3) -> list[str]:
        """Freeze backbone parameters the ladder never reaches (a classifier's pre-logits layer): DDP needs every
        trained parameter to get a gradient. Found by one backward pass; returns their names."""
        was = self.training
        self.eval()
        with torch.enable_grad():
            x = torch.zeros(2, in_chans, img_size, img_size)
            sum(t.float().sum() for t in self.ladder(x)).backward()
        unused = [n for n, p in self.backbone.named_parameters() if p.requires_grad and p.grad is None]
        for n, p in self.backbone.named_parameters():
            p.grad = None
            if n in unused:
                p.requires_grad_(False)
        self.train(was)
        return unused
