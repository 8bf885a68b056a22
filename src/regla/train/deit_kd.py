"""DeiT-style knowledge distillation from a frozen CNN teacher, through the student's distillation head.

RepViT §4 and RepNeXt §4 (and iFormer's Table 4) train their distilled rows with RegNetY-16GF (82.9% top-1,
timm ``regnety_160``) as the teacher, DeiT's hard distillation, alpha 0.5, tau 1.0. The student is built with
``distillation=True`` and put in distilled training (``set_distilled_training(True)``), so in training its forward
returns ``(class_logits, dist_logits)``: the class head learns from the labels, the distillation head from the
teacher's arg-max (hard) or softened distribution (soft). At inference the two heads are averaged.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class DistillationLoss(nn.Module):
    """``(1 - alpha) * base(cls, y) + alpha * KD(dist, teacher(x))`` (Touvron et al., DeiT, Eq. 2/3)."""

    def __init__(self, base_criterion: nn.Module, teacher: nn.Module | None, kind: str = "none",
                 alpha: float = 0.5, tau: float = 1.0):
        super().__init__()
        if kind not in ("none", "hard", "soft"):
            raise ValueError(f"distillation type must be none, hard or soft, got {kind!r}")
        if kind != "none" and teacher is None:
            raise ValueError("distillation needs a teacher")
        self.base_criterion = base_criterion
        self.teacher = teacher
        self.kind = kind
        self.alpha = alpha
        self.tau = tau

    def forward(self, inputs: torch.Tensor, outputs, targets: torch.Tensor) -> torch.Tensor:
        cls_out, dist_out = outputs if isinstance(outputs, (tuple, list)) else (outputs, None)
        base = self.base_criterion(cls_out, targets)
        if self.kind == "none":
            return base
        if dist_out is None:
            raise RuntimeError("distillation is on but the model returned one output: build it with "
                               "distillation=True and call set_distilled_training(True)")
        with torch.no_grad():
            teacher_out = self.teacher(inputs).float()
        dist_out = dist_out.float()
        if self.kind == "soft":
            t = self.tau
            kd = F.kl_div(F.log_softmax(dist_out / t, dim=1), F.log_softmax(teacher_out / t, dim=1),
                          reduction="sum", log_target=True) * (t * t) / dist_out.numel()
        else:
            kd = F.cross_entropy(dist_out, teacher_out.argmax(dim=1))
        return base * (1 - self.alpha) + kd * self.alpha


def load_teacher(name: str, path: str | Path, num_classes: int, device: torch.device) -> nn.Module:
    """A frozen teacher from a local weights file (no network): timm's ``DistillationTeacher`` with ``file=path``.

    DeiT's ``regnety_160-a5fe301d.pth`` (a dict with a ``model`` key) loads as is into timm's ``regnety_160``.
    """
    from timm.task.distillation import DistillationTeacher

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights {path} not found (distillation reads a local file only)")
    try:
        wrapper = DistillationTeacher(name, num_classes=num_classes, pretrained_path=str(path), device=device)
    except (RuntimeError, KeyError, ValueError) as e:
        raise RuntimeError(f"cannot load teacher {name} from {path}: {e}") from e
    teacher = wrapper.model.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
