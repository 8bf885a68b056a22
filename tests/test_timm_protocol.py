"""The timm protocol for every registered model and every pretrained tag of ours.

What timm's own ``tests/test_models.py`` checks for a model without network access, written as our own tests and
made stricter where a shape check would let a wrong answer through (outputs are compared with eager ones):

* forward and ``set_grad_checkpointing`` (timm's ``test_model_forward``), ``forward_intermediates``
  (``test_model_forward_intermediates``);
* backward in training mode: every parameter gets a gradient, the same through the FX graph
  (``test_model_backward``, ``test_model_backward_fx``);
* the default cfg of every tag (``test_model_default_cfgs``), on the model ``timm.create_model(tag)`` builds;
* ``features_only`` with each feature class (``test_model_forward_features``,
  ``test_model_forward_intermediates_features``, FX);
* FX forward (``test_model_forward_fx``), FX then TorchScript (``test_model_forward_fx_torchscript``),
  TorchScript (``test_model_forward_torchscript``);
* pretrained loading with ``in_chans=1`` and other class counts (``test_model_load_pretrained``), from local files
  in the release's formats instead of downloads.

Small inputs (64x64, batch 1-2) except the default-cfg test, which runs at the cfg's input size as timm's does;
one intra-op thread (``train_helpers``).
"""

from __future__ import annotations

import argparse
import functools
import math

import pytest
import timm
import torch
from timm.layers import set_scriptable
from timm.models import FeatureInfo, create_feature_extractor, get_notrace_functions, get_notrace_modules
from timm.utils import reparameterize_model
from torch import nn
from torchvision.models.feature_extraction import get_graph_node_names

import regla  # noqa: F401  (registers regla_* and repnext_*)
from train_helpers import randomize_norms

MODELS = timm.list_models(module="regla") + timm.list_models(module="repnext")
TAGS = timm.list_models("regla_*", include_tags=True) + timm.list_models("repnext_*", include_tags=True)
# The constructor switches that change the traced code: Table 5-7 ablations and the distillation head.
SWITCHES = [("regla_t", dict(gating="none")), ("regla_t", dict(gating="decoupled")),
            ("regla_t", dict(post_attn="ffn")), ("regla_t", dict(post_attn="mib")),
            ("regla_t", dict(early_block="dw7")), ("regla_t", dict(distillation=True)),
            ("regla_t", dict(act_layer="gelu")), ("repnext_m0", dict(distillation=True)),
            ("repnext_m0", dict(fused=True))]
SIZE = 64
TOL = 1e-5


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(timm.create_model(name, **kwargs)).eval()


def _input(batch: int = 1, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def _id(param) -> str:
    return "-".join(f"{k}={v}" for k, v in param.items()) if isinstance(param, dict) else str(param)


# ---------------------------------------------------------------------------------------------------------------
# Forward, grad checkpointing, forward_intermediates, backward
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_and_grad_checkpointing(name: str) -> None:
    """Logits of the class count asked for; stage outputs with ``feature_info``'s channels and reductions, the last
    equal to ``forward_features``; grad checkpointing changes neither."""
    model = _model(name, num_classes=42)
    info = FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
    assert len(info.channels()) == 4
    x = _input()
    with torch.no_grad():
        out = model(x)
        final, stages = model.forward_intermediates(x)
        assert out.shape == (1, 42) and torch.isfinite(out).all()
        assert torch.equal(final, model.forward_features(x))
        for o, c, r in zip(stages, info.channels(), info.reduction(), strict=True):
            assert o.shape == (1, c, math.ceil(SIZE / r), math.ceil(SIZE / r))
        model.set_grad_checkpointing()
        assert _close(model(x), out)
        assert _close(model.forward_intermediates(x)[0], final)


# ---------------------------------------------------------------------------------------------------------------
# Default cfgs of every tag
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", TAGS)
def test_default_cfg_of_every_tag(tag: str) -> None:
    """The model ``timm.create_model(tag)`` builds (a ``*_fused`` tag: the fused form, whose weights the tag names)
    holds ``first_conv`` and ``classifier``; at the cfg's input size its unpooled features are ``num_features`` x
    ``pool_size``; ``reset_classifier(0)`` leaves the pre-logits, ``reset_classifier(0, '')`` the feature map, and
    so does ``create_model(tag, num_classes=0, global_pool='')``."""
    model = _model(tag)
    cfg = model.pretrained_cfg
    assert cfg["tag"] == tag.partition(".")[2]
    assert getattr(model, "is_fused", False) == tag.endswith("_fused")
    keys = model.state_dict()
    first_convs = cfg["first_conv"] if isinstance(cfg["first_conv"], (tuple, list)) else (cfg["first_conv"],)
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
    for conv in first_convs:
        assert keys[f"{conv}.weight"].shape[1] == 3, conv
    for classifier in classifiers:
        assert keys[f"{classifier}.weight"].shape[0] == cfg["num_classes"] == model.num_classes, classifier
        assert f"{classifier}.bias" in keys, classifier
    assert cfg["crop_pct"] in (0.875, 0.9)
    assert model.num_features > 0 and model.head_hidden_size > 0

    x = torch.randn(1, *cfg["input_size"], generator=torch.Generator().manual_seed(0))
    unpooled = (1, model.num_features, *cfg["pool_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape == unpooled and pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and _close(model(x), pre)
        model.reset_classifier(0, "")
        assert _close(model(x), feats)
        bare = _model(tag, num_classes=0, global_pool="")
        bare.load_state_dict(model.state_dict())  # the same layers: built without a classifier, as reset above
        assert bare.num_classes == 0 and _close(bare(x), feats)


@functools.cache
def _release_files(tmp: str) -> dict[str, str]:
    """``repnext_m0``'s weights (seeded, non-trivial norms) written as the release writes them: a DeiT-style
    ``.pth`` with an ``argparse.Namespace``, a timm-style ``.pth.tar``, a traced ``*_fused.pt``."""
    from pathlib import Path

    src = _model("repnext_m0")
    d = Path(tmp)
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(model="repnext_m0")}, d / "m0.pth")
    torch.save({"state_dict": src.state_dict(), "epoch": 299}, d / "m0.pth.tar")
    torch.jit.trace(reparameterize_model(src), _input()).save(str(d / "m0_fused.pt"))
    return {"dist_300e_in1k": str(d / "m0.pth"), "starnet_300e_in1k": str(d / "m0.pth.tar"),
            "dist_300e_in1k_fused": str(d / "m0_fused.pt")}


@pytest.mark.parametrize("tag", ["dist_300e_in1k", "starnet_300e_in1k", "dist_300e_in1k_fused"])
def test_pretrained_tags_load_with_other_classes_and_channels(tag: str, tmp_path_factory) -> None:
    """timm's ``test_model_load_pretrained`` offline: each tag's file format, with 5 and 0 classes and one input
    channel (the first conv's weights summed over RGB, as timm's ``adapt_input_conv``). A ``*_fused`` tag gives the
    fused model with the file's weights."""
    files = _release_files(str(tmp_path_factory.mktemp("release")))
    overlay = dict(file=files[tag], custom_load=True)  # timm resets custom_load when a file is overlaid
    src = _model("repnext_m0")
    x = _input()
    with torch.no_grad():
        model = timm.create_model(f"repnext_m0.{tag}", pretrained=True, pretrained_cfg_overlay=overlay).eval()
        assert model.is_fused == tag.endswith("_fused")
        assert _close(model(x), src(x), 1e-4)
        gray = timm.create_model(f"repnext_m0.{tag}", pretrained=True, pretrained_cfg_overlay=overlay, in_chans=1,
                                 num_classes=5).eval()
        assert gray(x[:, :1]).shape == (1, 5)
        first = gray.pretrained_cfg["first_conv"] + ".weight"
        fused_src = reparameterize_model(src) if tag.endswith("_fused") else src
        assert _close(gray.state_dict()[first], fused_src.state_dict()[first].sum(1, keepdim=True))
        headless = timm.create_model(f"repnext_m0.{tag}", pretrained=True, pretrained_cfg_overlay=overlay,
                                     num_classes=0).eval()
        assert _close(headless(x), src.forward_head(src.forward_features(x), pre_logits=True), 1e-4)


# ---------------------------------------------------------------------------------------------------------------
# features_only
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_features_only_with_each_feature_class(name: str) -> None:
    """``features_only=True`` with the default (list), ``getter`` and ``fx`` feature classes: four maps whose
    channels and reductions are the wrapper's ``feature_info``, equal to ``forward_intermediates``."""
    x = _input()
    with torch.no_grad():
        ref = _model(name).forward_intermediates(x, intermediates_only=True)
        for cls, kind in ((None, "FeatureListNet"), ("getter", "FeatureGetterNet"), ("fx", "FeatureGraphNet")):
            kwargs = {} if cls is None else dict(feature_cls=cls)
            feats = _model(name, features_only=True, **kwargs)  # same seed: same weights
            assert type(feats).__name__ == kind
            out = feats(x)
            channels, reduction = feats.feature_info.channels(), feats.feature_info.reduction()
            assert len(out) == len(ref) == len(channels) == 4, kind
            for o, r, c, red in zip(out, ref, channels, reduction, strict=True):
                assert o.shape == (1, c, math.ceil(SIZE / red), math.ceil(SIZE / red)), kind
                assert _close(o, r), kind


# ---------------------------------------------------------------------------------------------------------------
# FX symbolic tracing and TorchScript
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_fx_graph_matches_eager(name: str) -> None:
    """One FX graph (timm's tracer) returning the four stage outputs and the logits (the last node of ``head``).

    Eval mode: stage outputs equal ``forward_intermediates``, logits equal ``forward``, and gradients through the
    graph (input and every parameter, which the graph shares with the model) equal eager's. Training mode, batch 2
    (timm's ``test_model_backward`` and ``test_model_backward_fx``): every parameter gets a gradient, the same
    through the graph. Training mode, one 32 px image: the last stage (and RepNeXt's classifier BN) hold one value
    per channel; the BN that tolerates this branches on the input's shape at run time, so it must be a leaf of the
    graph, not traced through.
    """
    model = _model(name)
    stages = [info["module"] for info in model.feature_info]
    traced = create_feature_extractor(model, {**{s: s for s in stages}, "head": "out"})
    assert isinstance(traced, torch.fx.GraphModule)

    x = _input()
    x_ref, x_fx = x.clone().requires_grad_(), x.clone().requires_grad_()
    final, ref_stages = model.forward_intermediates(x_ref)
    ref = model.forward_head(final)
    assert _close(ref.detach(), model(x).detach())
    out = traced(x_fx)
    assert len(ref_stages) == len(stages) == 4
    for node, r in zip(stages, ref_stages, strict=True):
        assert _close(out[node].detach(), r.detach())
    assert _close(out["out"].detach(), ref.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    grads_ref = torch.autograd.grad((ref * weights).sum(), [x_ref, *params])
    grads_fx = torch.autograd.grad((out["out"] * weights).sum(), [x_fx, *params])
    assert grads_ref[0].abs().max() > 0
    for g_fx, g_ref in zip(grads_fx, grads_ref, strict=True):
        assert _close(g_fx, g_ref, 1e-4)

    model.train()  # the graph switches to the one traced in training mode
    x2 = _input(batch=2)
    ref, out = model(x2), traced(x2)["out"]
    assert _close(out.detach(), ref.detach())
    grads_ref, grads_fx = (torch.autograd.grad(o.mean(), params, allow_unused=True) for o in (ref, out))
    assert not [n for (n, _), g in zip(model.named_parameters(), grads_ref, strict=True) if g is None]
    for g_fx, g_ref in zip(grads_fx, grads_ref, strict=True):
        assert _close(g_fx, g_ref, 1e-4)

    x1 = _input(size=32)
    with torch.no_grad():
        ref, out = model(x1), traced(x1)["out"]
    assert torch.isfinite(out).all() and _close(out, ref)


def _timm_fx_model(model: nn.Module) -> torch.fx.GraphModule:
    """The whole forward as one FX graph, traced as timm's test suite traces it (its leaf modules and functions,
    constant parameter shapes; the graph returns the last node)."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    from torchvision.models.feature_extraction import create_feature_extractor as tv_feature_extractor

    return tv_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize(("name", "kwargs"), [(n, {}) for n in MODELS] + SWITCHES, ids=_id)
def test_fx_then_torchscript_matches_eager(name: str, kwargs: dict) -> None:
    """The FX graph equals eager bit for bit; scripted with ``torch.jit.script`` it still equals eager (FX copies
    ``forward``'s annotations into its generated code: they must be real types, not the strings that
    ``from __future__ import annotations`` leaves, which TorchScript cannot resolve)."""
    with set_scriptable(True):
        model = _model(name, **kwargs)
    x = _input()
    with torch.no_grad():
        ref = model(x)
        graph = _timm_fx_model(model)
        assert torch.equal(next(iter(graph(x).values())), ref)
        scripted = torch.jit.script(graph)
        with torch.jit.optimized_execution(False):  # plain interpreter: no profiling runs (seconds)
            assert _close(next(iter(scripted(x).values())), ref)


@pytest.mark.parametrize(("name", "kwargs"), [(n, {}) for n in MODELS] + SWITCHES, ids=_id)
def test_torchscript_matches_eager(name: str, kwargs: dict) -> None:
    with set_scriptable(True):
        model = _model(name, **kwargs)
        scripted = torch.jit.script(model)
    x = _input()
    with torch.no_grad(), torch.jit.optimized_execution(False):
        ref = model(x)
        assert _close(scripted(x), ref)


def test_input_check_still_runs_in_eager() -> None:
    """Skipping the input check while tracing must not skip it in plain eager calls."""
    model = _model("regla_t")
    with pytest.raises(ValueError, match="at least"):
        model(_input(size=16))


# ---------------------------------------------------------------------------------------------------------------
# The scriptable batch-1-tolerant BatchNorm is torch's BatchNorm otherwise
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, None])
def test_tolerant_batchnorm_equals_torch_batchnorm(momentum: float | None) -> None:
    from regla.models import _layers as L

    for ours, ref, shape in ((L.BatchNorm2d(4, momentum=momentum), nn.BatchNorm2d(4, momentum=momentum),
                              (2, 4, 3, 3)),
                             (L.BatchNorm1d(4, momentum=momentum), nn.BatchNorm1d(4, momentum=momentum), (3, 4))):
        ours.load_state_dict(randomize_norms(ref).state_dict())
        for step in range(3):
            x = torch.randn(shape, generator=torch.Generator().manual_seed(step))
            for mode in (True, False):
                ours.train(mode), ref.train(mode)
                assert torch.allclose(ours(x), ref(x), atol=1e-6)
        for key, value in ref.state_dict().items():
            assert torch.allclose(ours.state_dict()[key].float(), value.float()), key
        ours.train()
        single = torch.randn(1, 4) if shape == (3, 4) else torch.randn(1, 4, 1, 1)
        before = {k: v.clone() for k, v in ours.state_dict().items()}
        expected = ours.eval()(single)
        assert torch.allclose(ours.train()(single), expected)  # running statistics, not updated
        assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_both_families_share_one_set_of_layers() -> None:
    """One ConvNorm, one batch-1-tolerant BN, one distillation head and one protocol implementation (issue 8)."""
    from regla.models import _layers as L

    for name in ("regla_t", "repnext_m0"):
        model = timm.create_model(name, distillation=True)
        kinds = {type(m) for m in model.modules()}
        assert {L.ConvNorm, L.BatchNorm2d, L.DistilledClassifier} <= kinds, name
        assert isinstance(model, L.StagedModelMixin)
        for method in ("forward_intermediates", "prune_intermediate_layers", "reset_classifier", "fuse"):
            assert getattr(type(model), method) is getattr(L.StagedModelMixin, method), (name, method)
    assert not hasattr(__import__("regla.models.regla", fromlist=["x"]), "ClassifierHead")
