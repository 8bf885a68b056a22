"""RepNeXt (regla.models.repnext): reparameterization, complexity vs the paper, official-checkpoint compatibility,
and the timm protocol. Small inputs only; the whole module runs in seconds on two cores."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch
from timm.utils import reparameterize_model
from torch import nn

from regla.models import repnext as R
from regla.utils import count_macs, count_params
from train_helpers import randomize_norms

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = json.loads((FIXTURES / "repnext_official_keys.json").read_text())

_spec = importlib.util.spec_from_file_location("make_repnext_fixture", FIXTURES / "make_repnext_fixture.py")
fixture_tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture_tools)

VARIANTS = ["m0", "m1", "m2", "m3", "m4", "m5"]
# Paper Table 2 (params, GMACs, latency, top-1) as the module quotes it: the one source of the paper's figures.
TABLE2 = {name.removeprefix("repnext_"): fig for name, fig in R.PAPER_FIGURES.items()}


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(t.shape) for k, t in model.state_dict().items()}


def _model(variant: str, **kwargs) -> R.RepNeXt:
    return timm.create_model(f"repnext_{variant}", **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Structural reparameterization
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_matches_unfused(variant: str) -> None:
    torch.manual_seed(0)
    model = randomize_norms(_model(variant)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)  # timm's generic entry point (deep copy)
        out = fused(x)
    assert fused.is_fused and not model.is_fused
    assert ref.abs().max() > 0.1  # a degenerate (all-zero) output would make the comparison vacuous
    assert (out - ref).abs().max().item() < 1e-4
    # one depthwise kernel per branch group: 3x3 for S, 7x7 for M; no BN left inside convs or head
    chunk = fused.stages[0].blocks[0].token_mixer
    assert isinstance(chunk.conv_s, nn.Conv2d) and chunk.conv_s.kernel_size == (3, 3)
    assert isinstance(chunk.conv_m, nn.Conv2d) and chunk.conv_m.kernel_size == (7, 7)
    copy = fused.stages[1].downsample.token_mixer
    assert copy.conv_s.stride == (2, 2) and copy.conv_m.kernel_size == (7, 7)
    assert isinstance(fused.head, nn.Linear)


def test_fuse_method_in_place_matches_reparameterize_model() -> None:
    torch.manual_seed(0)
    model = randomize_norms(_model("m0")).eval()
    x = torch.randn(1, 3, 45, 37)  # odd sizes exercise stride-2 padding of every branch
    with torch.no_grad():
        ref = model(x)
        via_timm = reparameterize_model(model)(x)
        assert model.fuse() is model
        out = model(x)
    assert model.is_fused
    assert (out - ref).abs().max().item() < 1e-4
    assert torch.equal(out, via_timm)


BRANCHES = {  # training-time branches of Eq. 6 / Sec. 3.3; serial strip pairs form one branch
    (R.RepDWConvS, 1): [["conv_3_3"], ["conv_3_w"], ["conv_3_h"], ["conv_2_2"]],
    (R.RepDWConvS, 2): [["conv_3_3"], ["conv_3_w", "conv_3_h"], ["conv_2_2"]],
    (R.RepDWConvM, 1): [["conv_7_7"], ["conv_5_3"], ["conv_3_5"], ["conv_7_w", "conv_7_h"], ["conv_5_w", "conv_5_h"]],
    (R.RepDWConvM, 2): [["conv_7_7"], ["conv_5_3"], ["conv_3_5"], ["conv_7_w", "conv_7_h"], ["conv_5_w", "conv_5_h"]],
}


@pytest.mark.parametrize("cls,stride", list(BRANCHES))
def test_rep_dwconv_fuse_exact_per_branch(cls: type, stride: int) -> None:
    """Each branch alone is merged exactly (a wrong offset or kernel pattern cannot hide in the sum)."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 13, 11)
    mod = cls(8, stride=stride).eval()
    for branch in BRANCHES[(cls, stride)]:
        with torch.no_grad():
            for name, conv in mod.named_children():
                conv.weight.normal_() if name in branch else conv.weight.zero_()
                if conv.bias is not None:
                    conv.bias.normal_() if name in branch else conv.bias.zero_()
            ref, out = mod(x), mod.fuse()(x)
        assert ref.abs().max() > 0.1, branch
        assert (out - ref).abs().max().item() < 1e-5, branch


# ---------------------------------------------------------------------------------------------------------------
# Complexity vs Table 2 and vs the official definition
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(TABLE2))
def test_params_and_macs_match_table2(variant: str) -> None:
    paper_params, paper_gmacs = TABLE2[variant]["params_m"], TABLE2[variant]["gmacs"]
    fused = _model(variant).fuse().eval()
    params, macs = count_params(fused) / 1e6, count_macs(fused, 224) / 1e9
    assert abs(params / paper_params - 1) <= 0.03, params
    assert abs(macs / paper_gmacs - 1) <= 0.10, macs


def test_paper_figures_are_the_one_source() -> None:
    """Table 2 models M1-M5 with every column; bench and ``regla models`` read them from here."""
    from regla.bench.models import bench_model
    from regla.models.cli import format_rows

    assert sorted(R.PAPER_FIGURES) == [f"repnext_m{i}" for i in range(1, 6)]
    for name, fig in R.PAPER_FIGURES.items():
        assert {"params_m", "gmacs", "lat_ms", "top1", "top1_distilled"} <= set(fig)
        assert fig["top1"] < fig["top1_distilled"]  # Table 3 (no distillation) below Table 2 (distilled)
        assert bench_model(name).published.top1 == fig["top1"]
    assert R.PAPER_FIGURES["repnext_m4"]["params_m"] == 13.3 and R.PAPER_FIGURES["repnext_m1"]["lat_ms"] == 0.86
    row = dict(model="repnext_m1", params_m=4.83, gmacs=0.82, paper_params_m=4.8, paper_gmacs=0.8, paper_top1=77.5)
    assert format_rows([row], 224, markdown=True).splitlines()[-1].split(" | ")[2:4] == ["4.8", "+0.6%"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_param_counts_and_keys_match_official(variant: str) -> None:
    ref = OFFICIAL["variants"][variant]
    model = _model(variant)
    assert count_params(model) == ref["train_params"]
    assert fixture_tools.digest(_shapes(model)) == ref["train_digest"]
    model.fuse()
    assert count_params(model) == ref["fused_params"]
    assert fixture_tools.digest(_shapes(model)) == ref["fused_digest"]


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoints
# ---------------------------------------------------------------------------------------------------------------


def test_official_training_state_dict_loads_strict() -> None:
    state_dict = fixture_tools.random_state_dict(OFFICIAL["m1_train"])
    model = _model("m1")
    assert list(_shapes(model)) == list(OFFICIAL["m1_train"])
    model.load_state_dict(state_dict, strict=True)


@pytest.mark.parametrize("how", ["fuse", "reparameterize_model", "constructor"])
def test_official_fused_state_dict_loads_strict(how: str) -> None:
    state_dict = fixture_tools.random_state_dict(OFFICIAL["m1_fused"])
    if how == "fuse":
        model = _model("m1").fuse()
    elif how == "reparameterize_model":
        model = reparameterize_model(_model("m1"))
    else:
        model = _model("m1", fused=True)
    assert _shapes(model) == OFFICIAL["m1_fused"]
    model.load_state_dict(state_dict, strict=True)


def test_logits_match_official_implementation() -> None:
    """Same weights as the fixture's official run -> same logits, training form and fused form (float64)."""
    ref = OFFICIAL["m1_reference"]
    model = _model("m1").double().eval()
    model.load_state_dict(fixture_tools.random_state_dict(OFFICIAL["m1_train"], ref["seed_weights"]), strict=True)
    x = fixture_tools.reference_input()
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits[0, :16], torch.tensor(ref["logits_train_first16"], dtype=torch.float64),
                                   rtol=1e-9, atol=1e-9)
        assert logits.sum().item() == pytest.approx(ref["logits_train_sum"], rel=1e-9)
        fused_logits = model.fuse()(x)
    # the official fused reference was fused in float32 (its fuse() needs float32): allow float32 rounding
    torch.testing.assert_close(fused_logits[0, :16], torch.tensor(ref["logits_fused_first16"], dtype=torch.float64),
                               rtol=1e-5, atol=1e-4)


def test_checkpoint_filter_fn_unwraps_release_containers() -> None:
    state_dict = fixture_tools.random_state_dict(OFFICIAL["m1_train"])
    model = _model("m1")
    for wrapped in ({"model": state_dict, "epoch": 299},
                    {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "arch": "repnext_m1"}):
        model.load_state_dict(R.checkpoint_filter_fn(wrapped, model), strict=True)
    assert not model.is_fused


def test_checkpoint_filter_fn_fuses_model_for_fused_checkpoint() -> None:
    model = _model("m1")
    state_dict = R.checkpoint_filter_fn(fixture_tools.random_state_dict(OFFICIAL["m1_fused"]), model)
    assert model.is_fused
    model.load_state_dict(state_dict, strict=True)
    with pytest.raises(ValueError, match="training-form"):
        R.checkpoint_filter_fn(fixture_tools.random_state_dict(OFFICIAL["m1_train"]), model)


def test_release_file_formats_load_through_timm(tmp_path: Path) -> None:
    """The release's .pth ({'model', 'args': Namespace, ...}) and TorchScript *_fused.pt, via pretrained_cfg_overlay."""
    torch.manual_seed(0)
    src = randomize_norms(_model("m0")).eval()
    x = torch.randn(1, 3, 64, 64)
    pth = tmp_path / "repnext_m0_distill_300e.pth"
    torch.save({"model": src.state_dict(), "epoch": 299, "args": argparse.Namespace(model="repnext_m0")}, pth)
    fused_src = reparameterize_model(src)
    pt = tmp_path / "repnext_m0_distill_300e_fused.pt"
    torch.jit.trace(fused_src, x).save(str(pt))
    with torch.no_grad():
        ref = src(x)
        for path in (pth, pt):
            overlay = dict(file=str(path), custom_load=True)  # timm resets custom_load when a file is overlaid
            model = timm.create_model("repnext_m0", pretrained=True, pretrained_cfg_overlay=overlay)
            assert model.eval().is_fused == (path == pt)
            assert (model(x) - ref).abs().max().item() < 1e-4
        # a different class count keeps the backbone and re-initializes the classifier
        model = timm.create_model("repnext_m0", pretrained=True, num_classes=10,
                                  pretrained_cfg_overlay=dict(file=str(pth), custom_load=True)).eval()
        torch.testing.assert_close(model.forward_features(x), src.forward_features(x))
        assert model(x).shape == (1, 10)


def test_pretrained_cfgs_point_at_release() -> None:
    names = timm.list_pretrained("repnext_*")
    for v in VARIANTS:
        assert f"repnext_{v}.dist_300e_in1k" in names
        cfg = timm.models.get_pretrained_cfg(f"repnext_{v}.dist_300e_in1k")
        assert cfg.url == f"https://github.com/suous/RepNeXt/releases/download/v1.0/repnext_{v}_distill_300e.pth"
    assert _model("m3").pretrained_cfg["tag"] == "dist_300e_in1k"


# ---------------------------------------------------------------------------------------------------------------
# timm protocol
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (70, 45)])
def test_features_only(size: tuple[int, int]) -> None:
    model = _model("m0", features_only=True, out_indices=(0, 1, 3)).eval()
    assert model.feature_info.channels() == [40, 80, 320]
    assert model.feature_info.reduction() == [4, 8, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))

    def down(n: int, times: int) -> int:
        for _ in range(times):
            n = (n - 1) // 2 + 1
        return n

    expected = [(1, c, down(size[0], t), down(size[1], t)) for c, t in zip([40, 80, 320], [2, 3, 5], strict=True)]
    assert [tuple(f.shape) for f in feats] == expected


def test_forward_intermediates_and_head() -> None:
    torch.manual_seed(0)
    model = _model("m0").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert [t.shape[1] for t in inter] == [40, 80, 160, 320]
        torch.testing.assert_close(final, model.forward_features(x))
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last2[1], inter[3])
        pre = model.forward_head(final, pre_logits=True)
        assert pre.shape == (2, 320)
        torch.testing.assert_close(pre, final.mean((2, 3)))
        torch.testing.assert_close(model(x), model.forward_head(final))
    taken = model.prune_intermediate_layers(indices=(1,))
    assert taken == [1] and len(model.stages) == 2 and model.num_features == 80


def test_reset_classifier_and_distillation_head() -> None:
    torch.manual_seed(0)
    model = _model("m0", distillation=True)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2  # (head, head_dist) in distilled training
    model.set_distilled_training(False)
    assert model(x).shape == (2, 1000)
    model.eval()
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = (model.head.head(feats) + model.head.head_dist(feats)) / 2
        torch.testing.assert_close(model(x), expected)
    model.reset_classifier(10)
    assert model.get_classifier().head.linear.out_features == 10 and model(x).shape == (2, 10)
    model.reset_classifier(0)
    assert model(x).shape == (2, 320)
    fused = _model("m0").fuse()
    fused.reset_classifier(7)
    assert isinstance(fused.head, nn.Linear) and fused.eval()(x).shape == (2, 7)


@pytest.mark.parametrize("size", [(32, 32), (33, 47)])
def test_forward_backward_batch1_train(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = _model("m0").train()
    out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["stem.stem.0.conv.weight"].abs().sum() > 0
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, *size)).shape == (1, 1000)


def test_grad_checkpointing_same_gradients() -> None:
    torch.manual_seed(0)
    model = _model("m0").train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for a, b in zip(ref, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
