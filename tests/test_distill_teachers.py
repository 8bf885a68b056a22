"""Teachers of ReGLA §3.5: each release layout (generated with its key names) loads strictly into its timm model."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from regla.checkpoints import CheckpointError
from regla.distill.release import load_release
from regla.distill.teachers import REGISTRY, SETS, Teacher, create_teacher_model, resolve_teachers

torch.set_num_threads(1)

TINY_VIT = dict(embed_dim=24, depth=1, num_heads=2)


def _tiny_vitamin():
    from timm.models.vitamin import VitCfg, VitConvCfg

    cfg = VitCfg(embed_dim=(8, 16, 24), depths=(1, 1, 1), stem_width=8,
                 conv_cfg=VitConvCfg(norm_layer="layernorm2d", norm_eps=1e-6), head_type="1d")
    return dict(embed_dim=24, depth=1, num_heads=2, embed_cfg=cfg)


TINY = {
    "dinov2": dict(resolution=28, model_kwargs=TINY_VIT),
    "deit3": dict(resolution=32, model_kwargs=TINY_VIT),
    "ibot": dict(resolution=32, model_kwargs=TINY_VIT),
    "dbot_ft": dict(resolution=32, model_kwargs={**REGISTRY["dbot_ft"].model_kwargs, **TINY_VIT}),
    "aimv2": dict(resolution=28, model_kwargs=TINY_VIT),
    "vitamin": dict(resolution=32, model_kwargs=_tiny_vitamin()),
    "sam2": dict(resolution=64, model_kwargs=dict(embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(),
                                                  window_spec=(4, 4, 2, 2), global_pos_size=(4, 4))),
}


def tiny_spec(name, checkpoint=None):
    return replace(REGISTRY[name], checkpoint=checkpoint, **TINY[name])


def release_state(name, timm_state):
    """The tiny timm model's weights written as the release has them (key names of each project's code)."""
    s = {k: v.clone() for k, v in timm_state.items()}
    if name == "dinov2":  # facebookresearch/dinov2: plain dict, mask_token, pos_embed on the 37x37 grid of 518 px
        s["mask_token"] = torch.zeros(1, s["cls_token"].shape[-1])
        return s
    if name == "deit3":  # facebookresearch/deit: {'model': ...}, layer scale as gamma_1/gamma_2, a classifier
        s = {re.sub(r"ls([12])\.gamma", r"gamma_\1", k): v for k, v in s.items()}
        return {"model": {**s, "head.weight": torch.zeros(10, 24), "head.bias": torch.zeros(10)}}
    if name == "ibot":  # bytedance/ibot checkpoint_teacher.pth: {'state_dict': DINO ViT keys}
        return {"state_dict": s}
    if name == "dbot_ft":  # liuxingbin/dbot (MAE-style fine-tune): {'model': ... fc_norm, head}
        return {"model": {**s, "head.weight": torch.zeros(10, 24), "head.bias": torch.zeros(10)}}
    if name == "aimv2":  # apple/ml-aim: preprocessor.* and trunk.*, SwiGLU fc1/fc3, norm_1/norm_2, post_trunk_norm
        out = {}
        for k, v in s.items():
            k = k.replace("patch_embed.", "preprocessor.patchifier.").replace("mlp.fc1_g", "mlp.fc1")
            k = k.replace("mlp.fc1_x", "mlp.fc3").replace("norm1", "norm_1").replace("norm2", "norm_2")
            k = "preprocessor.pos_embed" if k == "pos_embed" else k
            k = "trunk.post_trunk_norm." + k[len("norm."):] if k.startswith("norm.") else k
            out["trunk." + k if k.startswith("blocks.") else k] = v
        return out
    if name == "vitamin":  # OpenCLIP: visual.trunk.* plus the projection and the text tower
        out = {"visual.trunk." + k: v for k, v in s.items()}
        return {**out, "visual.head.proj.weight": torch.zeros(16, 24),
                "text.token_embedding.weight": torch.zeros(5, 16), "logit_scale": torch.ones(())}
    if name == "sam2":  # facebookresearch/sam2: {'model': image_encoder.trunk.*, neck, decoders}
        out = {"image_encoder.trunk." + k.replace("mlp.fc1", "mlp.layers.0").replace("mlp.fc2", "mlp.layers.1"): v
               for k, v in s.items()}
        return {"model": {**out, "image_encoder.neck.convs.0.conv.weight": torch.zeros(4, 4, 1, 1),
                          "sam_mask_decoder.iou_token.weight": torch.zeros(1, 4)}}
    raise AssertionError(name)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_release_layout_loads_strictly(name, tmp_path):
    spec = tiny_spec(name)
    torch.manual_seed(0)
    source = create_teacher_model(spec)
    state = source.state_dict()
    for v in state.values():  # distinct values, so a mis-mapped key cannot go unnoticed
        v.copy_(torch.randn_like(v)) if v.is_floating_point() else None
    path = tmp_path / f"{name}.pth"
    release = release_state(name, state)
    if name == "dinov2":  # the release's grid differs from the teacher's: timm resamples pos_embed
        release["pos_embed"] = torch.randn(1, 1 + 3 * 3, 24)
    torch.save(release, path)
    model = load_release(replace(spec, checkpoint=str(path)))
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for k in state:
        if not (name == "dinov2" and k == "pos_embed"):
            assert torch.equal(loaded[k], state[k]), k
    assert loaded["pos_embed"].shape == state["pos_embed"].shape


def test_teacher_outputs_and_no_gradient(tmp_path):
    spec = tiny_spec("dbot_ft")
    torch.save({"model": create_teacher_model(spec).state_dict()}, tmp_path / "d.pth")
    teacher = Teacher(spec, load_release(replace(spec, checkpoint=str(tmp_path / "d.pth"))))
    teacher.train()
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 40, 40, requires_grad=True)
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5)
    cls, patches = teacher(x, mean, std)
    assert cls.shape == (2, 24) and patches.shape == (2, 24, 2, 2) and not cls.requires_grad
    tokens = teacher.model.forward_features(teacher.prepare(x, mean, std))
    torch.testing.assert_close(cls, teacher.model.fc_norm(tokens[:, 1:].mean(1)))  # dBOT-ft: fc_norm of the mean


def test_missing_and_mismatched_checkpoints_name_the_teacher(tmp_path):
    with pytest.raises(CheckpointError, match="teacher dinov2: no checkpoint given; set teacher_checkpoints.dinov2"):
        load_release(tiny_spec("dinov2"))
    with pytest.raises(CheckpointError, match=r"teacher sam2: checkpoint .*nope.pt not found \(expected: SAM2"):
        load_release(tiny_spec("sam2", str(tmp_path / "nope.pt")))
    torch.save({"model": create_teacher_model(tiny_spec("deit3")).state_dict()}, tmp_path / "deit.pth")
    with pytest.raises(CheckpointError, match=r"teacher sam2: .*deit.pth does not fit sam2 .*expected: SAM2"):
        load_release(tiny_spec("sam2", str(tmp_path / "deit.pth")))
    spec = tiny_spec("deit3", str(tmp_path / "deit.pth"))  # right layout, wrong width
    wider = create_teacher_model(replace(spec, model_kwargs=dict(TINY_VIT, embed_dim=48)))
    torch.save(release_state("deit3", wider.state_dict()), tmp_path / "deit.pth")
    with pytest.raises(CheckpointError, match="teacher deit3: .*of another shape"):
        load_release(spec)


def test_sets_and_recipe_teachers():
    assert len(SETS["4tea"]) == 4 and len(SETS["6tea"]) == 6 and len(SETS["7tea"]) == 7
    assert set(SETS["6tea"]) - set(SETS["4tea"]) == {"vitamin", "aimv2"} and set(SETS["7tea"]) - set(SETS["6tea"]) \
        == {"sam2"}
    specs = resolve_teachers(["4tea", {"name": "mine", "model": "resnet18", "class_token": "pooled"}],
                             {"dinov2": "/x.pth"})
    assert [s.name for s in specs] == ["dbot_ft", "deit3", "dinov2", "ibot", "mine"]
    assert specs[2].checkpoint == "/x.pth" and specs[4].layout == "timm"
    assert len(resolve_teachers(["4tea"], {"sam2": "/y"})) == 4  # a shared list of checkpoints
    with pytest.raises(ValueError, match="teacher_checkpoints names unknown teacher"):
        resolve_teachers(["4tea"], {"sam3": "/y"})
    with pytest.raises(ValueError, match="named twice"):
        resolve_teachers(["4tea", "dinov2"])


@pytest.mark.parametrize("name", ["sam2", "aimv2", "vitamin", "dinov2"])
def test_teacher_grids(name):
    """Hiera's NHWC map and the ViTs' tokens become (B, C, h, w) grids; no class token where there is none."""
    spec = tiny_spec(name)
    teacher = Teacher(spec, create_teacher_model(spec))
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    x = torch.randn(2, 3, 40, 40)
    cls, grid = teacher(x, mean, std)
    feats = teacher.model.forward_features(teacher.prepare(x, mean, std))
    if name == "sam2":  # NHWC trunk output, stride 32 at 64 px
        assert grid.shape == (2, 64, 2, 2) and torch.equal(grid, feats.permute(0, 3, 1, 2))
    else:
        prefix = teacher.model.num_prefix_tokens
        side = int((feats.shape[1] - prefix) ** 0.5)
        assert grid.shape == (2, 24, side, side)
        assert torch.equal(grid.flatten(2).transpose(1, 2), feats[:, prefix:])
    assert (cls is None) == (spec.class_token is None)
