"""The timm protocol for every registered model of ours: TorchScript, FX tracing (forward, backward, stage features)
and the pretrained cfg of every tag. Small inputs (64x64, batch 1-2), one intra-op thread."""

from __future__ import annotations

import functools

import pytest
import timm
import torch
from timm.layers import set_scriptable
from timm.models import create_feature_extractor
from timm.utils import reparameterize_model
from torch import nn

import regla  # noqa: F401  (registers regla_* and repnext_*)
from train_helpers import randomize_norms

MODELS = timm.list_models(module="regla") + timm.list_models(module="repnext")
TAGS = timm.list_models("regla_*", include_tags=True) + timm.list_models("repnext_*", include_tags=True)
SIZE = 64
TOL = 1e-5


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(timm.create_model(name, **kwargs)).eval()


def _input(batch: int = 1, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


# ---------------------------------------------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_matches_eager(name: str) -> None:
    with set_scriptable(True):
        model = _model(name)
        scripted = torch.jit.script(model)
    x = _input()
    with torch.no_grad(), torch.jit.optimized_execution(False):  # plain interpreter: no profiling runs (seconds)
        ref = model(x)
        assert _close(scripted(x), ref)


# ---------------------------------------------------------------------------------------------------------------
# FX symbolic tracing
# ---------------------------------------------------------------------------------------------------------------


def _grads(out: torch.Tensor, x: torch.Tensor, params: list[nn.Parameter]) -> tuple[torch.Tensor, ...]:
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    return torch.autograd.grad((out * weights).sum(), [x, *params])


@pytest.mark.parametrize("name", MODELS)
def test_fx_graph_matches_eager(name: str) -> None:
    """One FX graph (timm's tracer) returning the four stage outputs and the logits (the last node of ``head``).

    Eval mode: stage outputs equal ``forward_intermediates``, logits equal ``forward``, and gradients through the
    graph (input and every parameter, which the graph shares with the model) equal eager's. Training mode, one
    32 px image: the last stage (and RepNeXt's classifier BN) hold one value per channel; the BN that tolerates
    this branches on the input's shape at run time, so it must be a leaf of the graph, not traced through.
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
    grads_ref, grads_fx = _grads(ref, x_ref, params), _grads(out["out"], x_fx, params)
    assert grads_ref[0].abs().max() > 0
    for g_fx, g_ref in zip(grads_fx, grads_ref, strict=True):
        assert _close(g_fx, g_ref, 1e-4)

    model.train()
    x1 = _input(size=32)
    with torch.no_grad():
        ref, out = model(x1), traced(x1)["out"]
    assert torch.isfinite(out).all() and _close(out, ref)


@pytest.mark.parametrize("name", ["regla_t", "repnext_m0"])
def test_features_only_fx(name: str) -> None:
    """``features_only=True, feature_cls='fx'`` builds timm's FX feature net, equal to ``forward_intermediates``."""
    x = _input()
    with torch.no_grad():
        ref = _model(name).forward_intermediates(x, intermediates_only=True)
        feats = _model(name, features_only=True, feature_cls="fx")  # same seed: same weights
        assert type(feats).__name__ == "FeatureGraphNet"
        out = feats(x)
    assert len(out) == len(ref) == 4
    for o, r in zip(out, ref, strict=True):
        assert _close(o, r)


def test_input_check_still_runs_in_eager() -> None:
    """Skipping the input check while tracing must not skip it in plain eager calls."""
    model = _model("regla_t")
    with pytest.raises(ValueError, match="at least"):
        model(_input(size=16))


# ---------------------------------------------------------------------------------------------------------------
# Pretrained configs
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def _weight_names(arch: str, fused: bool) -> frozenset[str]:
    """State-dict keys of ``arch`` (built on the meta device: only names matter), reparameterized if ``fused``."""
    with torch.device("meta"):
        model = timm.create_model(arch)
        if fused:
            model = reparameterize_model(model)
    return frozenset(model.state_dict())


@pytest.mark.parametrize("tag", TAGS)
def test_pretrained_cfg_names_existing_layers(tag: str) -> None:
    """``first_conv`` and ``classifier`` name weights of the model as the tag's loading path leaves it.

    A ``*_fused`` tag's checkpoint is in deploy form: loading it reparameterizes the model first.
    """
    arch, _, name = tag.partition(".")
    cfg = timm.models.get_pretrained_cfg(tag).to_dict()
    keys = _weight_names(arch, name.endswith("_fused"))
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
    assert f"{cfg['first_conv']}.weight" in keys, cfg["first_conv"]
    for classifier in classifiers:
        assert f"{classifier}.weight" in keys and f"{classifier}.bias" in keys, classifier
    assert cfg["crop_pct"] in (0.875, 0.9)


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
