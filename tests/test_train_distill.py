"""DeiT-style hard distillation through the distillation head, teacher from a local file (no network)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from regla.train.deit_kd import DistillationLoss, load_teacher
from regla.train.modeling import create_student
from regla.train.task import build_criterion
from regla.train.trainer import train
from train_helpers import MODEL, make_folder, tiny_recipe

TEACHER = "regnety_002"  # a small RegNetY stands in for regnety_160 (the same family and loading path)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "regnety.pth"
    torch.manual_seed(1)
    torch.save({"model": timm.create_model(TEACHER, num_classes=3).state_dict()}, path)  # DeiT's file layout
    return path


def test_hard_distillation_loss_uses_the_distillation_head(teacher_file, tmp_path):
    cfg = tiny_recipe(tmp_path, tmp_path / "o", distillation_type="hard", teacher_model=TEACHER,
                      teacher_path=str(teacher_file), smoothing=0.0)
    student = create_student(cfg, 3).train()
    crit = build_criterion(cfg, 3, torch.device("cpu"))
    assert all(not p.requires_grad for p in crit.teacher.parameters()) and not crit.teacher.training
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    cls, dist = student(x)  # distilled training: two heads
    with torch.no_grad():
        t = crit.teacher(x).argmax(1)
    expected = 0.5 * F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(dist, t)
    assert torch.allclose(crit(x, (cls, dist), y), expected)
    student.eval()
    assert student(x).shape == (4, 3)  # inference averages the heads


def test_soft_distillation_and_errors(teacher_file):
    teacher = load_teacher(TEACHER, teacher_file, 3, torch.device("cpu"))
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, "soft", alpha=0.5, tau=2.0)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    out = (torch.randn(2, 3), torch.randn(2, 3))
    assert torch.isfinite(loss(x, out, y))
    with pytest.raises(RuntimeError, match="returned one output"):
        loss(x, out[0], y)
    with pytest.raises(FileNotFoundError, match="local file"):
        load_teacher(TEACHER, teacher_file.parent / "missing.pth", 3, torch.device("cpu"))


def test_distilled_training_run(teacher_file, tmp_path):
    data = make_folder(tmp_path / "data", classes=3, train_per_class=4, val_per_class=2)
    cfg = tiny_recipe(data, tmp_path / "run", epochs=1, distillation_type="hard", teacher_model=TEACHER,
                      teacher_path=str(teacher_file))
    result = train(cfg, show_bar=False)
    assert result.last["epoch"] == 1 and result.last["top1"] is not None
    state = torch.load(result.run_dir / "last.pth", weights_only=True)
    assert state["arch"]["distillation"] is True and any("head_dist" in k for k in state["model"])
    assert MODEL == state["arch"]["model"]
