"""The peers' own ablations (issue 23): RepNeXt Table 5 switches, RepViT Tables 6-7 variants on timm's RepViT, and one
recipe per paper row. Every switch combination builds, fuses exactly, and each recipe differs from its ``base:`` only in
what its row changes. Small inputs (64 px) and small widths keep it to seconds."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import timm
import torch
import yaml
from timm.models.repvit import RepVggDw, RepVit
from timm.utils import reparameterize_model
from torch import nn

import regla  # noqa: F401  (registers regla's models)
from regla.cli import main
from regla.models import repnext as R
from regla.models import repvit_variants as V
from regla.utils import count_params
from train_helpers import randomize_norms

torch.set_num_threads(1)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEACHER = "/nonexistent/regnety_160-a5fe301d.pth"  # distilled recipes need a path to resolve; nothing is read
TINY = dict(embed_dim=(16, 32, 64, 128), depth=(1, 1, 1, 1))


def _fused_matches(model: nn.Module, size: int = 64) -> tuple[nn.Module, float]:
    """``(fused copy, max |fused - unfused|)`` on a random batch, after checking the output is not degenerate."""
    model = randomize_norms(model).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        out = fused(x)
    assert ref.abs().max() > 0.1  # a degenerate output would make the comparison vacuous
    return fused, (out - ref).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------
# RepNeXt Table 5 switches
# ---------------------------------------------------------------------------------------------------------------

COMBOS = list(itertools.product(R.DOWNSAMPLES, R.SMALL_KERNELS, R.MEDIUM_KERNELS))
BRANCH_SETS = [("medium", "large"), ("small", "large"), ("small", "medium"), ("large",), ()]


@pytest.mark.parametrize("downsample,small,medium", COMBOS)
def test_every_switch_combination_fuses_exactly(downsample: str, small: str, medium: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model("repnext_m1", downsample=downsample, small_kernel=small, medium_kernel=medium, **TINY)
    fused, err = _fused_matches(model)
    assert fused.is_fused and err < 1e-4
    chunk = fused.stages[1].blocks[0].token_mixer
    assert chunk.conv_s.kernel_size == (3, 3) and chunk.conv_m.kernel_size == (7, 7)  # one kernel per branch
    assert isinstance(fused.stages[1].downsample, nn.Conv2d) == (downsample == "conv3x3")


@pytest.mark.parametrize("branches", BRANCH_SETS)
@pytest.mark.parametrize("srp", [dict(small_kernel="plain", medium_kernel="plain"), {}])
def test_removed_branches_are_identities_and_fuse_exactly(branches: tuple[str, ...], srp: dict) -> None:
    torch.manual_seed(0)
    model = timm.create_model("repnext_m1", kernel_branches=branches, **srp, **TINY)
    fused, err = _fused_matches(model)
    assert fused.is_fused and err < 1e-4
    chunk = model.stages[0].blocks[0].token_mixer
    for name, attr in (("small", "conv_s"), ("medium", "conv_m"), ("large", "conv_l")):
        assert isinstance(getattr(chunk, attr), nn.Identity) == (name not in branches), name


PER_BRANCH = {  # the training-time branches of each new setting; serial strip pairs form one branch
    (R.RepDWConvS, "serial", 1): [["conv_3_3"], ["conv_3_w", "conv_3_h"], ["conv_2_2"]],
    (R.RepDWConvS, "plain", 2): [["conv_3_3"]],
    (R.RepDWConvM, "square", 1): [["conv_7_7"], ["conv_5_5"], ["conv_3_3"]],
    (R.RepDWConvM, "square", 2): [["conv_7_7"], ["conv_5_5"], ["conv_3_3"]],
    (R.RepDWConvM, "asymmetric", 1): [["conv_7_7"], ["conv_5_3"], ["conv_3_5"]],
    (R.RepDWConvM, "plain", 1): [["conv_7_7"]],
}


@pytest.mark.parametrize("cls,rep,stride", list(PER_BRANCH))
def test_new_kernel_settings_fuse_exactly_per_branch(cls: type, rep: str, stride: int) -> None:
    """Each branch alone is merged exactly, so a wrong offset or kernel pattern cannot hide in the sum."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 13, 11)
    mod = cls(8, stride=stride, rep=rep).eval()
    assert sorted(n for n, _ in mod.named_children()) == sorted(sum(PER_BRANCH[(cls, rep, stride)], []))
    for branch in PER_BRANCH[(cls, rep, stride)]:
        with torch.no_grad():
            for name, conv in mod.named_children():
                conv.weight.normal_() if name in branch else conv.weight.zero_()
                if conv.bias is not None:
                    conv.bias.normal_() if name in branch else conv.bias.zero_()
            ref, out = mod(x), mod.fuse()(x)
        assert ref.abs().max() > 0.1, branch
        assert (out - ref).abs().max().item() < 1e-5, branch


def test_ablation_model_scripts() -> None:
    """Absent branches are ``None`` attributes that TorchScript refines away; the scripted model equals eager."""
    model = timm.create_model("repnext_m1", small_kernel="plain", medium_kernel="square",
                              kernel_branches=("small", "medium"), **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-6)


@pytest.mark.parametrize("row", sorted(R.ABLATIONS))
def test_table5_rows_build_and_fuse_at_full_width(row: str) -> None:
    spec = R.ABLATIONS[row]
    torch.manual_seed(0)
    fused, err = _fused_matches(timm.create_model(spec["model"], **spec["kwargs"]))
    assert err < 1e-4


def test_table5_params_match_the_paper_and_the_release() -> None:
    """Deploy-form params within 1% of Table 5 and every row's difference from the baseline within 0.006 M of the
    table's (which rounds to 0.01 M; measured: at most 0.0055 M off): a wrong or missing branch (the small chunk's
    3x3 kernels are 0.010 M, the medium's 7x7 0.051 M) cannot pass. Training-form counts equal the
    release's ablation logs (``n_parameters`` of logs/ablation/repnext_m1_120e_7534.txt and _7597.txt)."""
    measured = {row: count_params(reparameterize_model(timm.create_model(s["model"], **s["kwargs"]).eval())) / 1e6
                for row, s in R.ABLATIONS.items()}
    base, paper_base = measured["table5_row1_baseline"], R.ABLATIONS["table5_row1_baseline"]["params_m"]
    for row, params in measured.items():
        paper = R.ABLATIONS[row]["params_m"]
        assert abs(params / paper - 1) <= 0.01, (row, params, paper)
        if R.ABLATIONS[row]["model"] == "repnext_m1":
            assert abs((params - base) - (paper - paper_base)) <= 0.006, (row, params - base)
    assert count_params(timm.create_model("repnext_m1", small_kernel="plain", medium_kernel="plain")) == 5_230_424
    assert count_params(timm.create_model("repnext_m1")) == 5_323_316


def test_default_switches_are_the_published_model() -> None:
    """The defaults change nothing: same state-dict keys and shapes as before the switches (the official fixture)."""
    explicit = timm.create_model("repnext_m1", downsample="copy", kernel_branches=["large", "small", "medium"],
                                 small_kernel="parallel", medium_kernel="strips")
    plain = timm.create_model("repnext_m1")
    assert {k: v.shape for k, v in explicit.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


@pytest.mark.parametrize("kwargs,match", [
    (dict(small_kernel="dilated"), r"small_kernel must be one of \('plain', 'serial', 'parallel'\), got 'dilated'"),
    (dict(medium_kernel="5x5"), r"medium_kernel must be one of \('plain', 'square', 'asymmetric', 'strips'\)"),
    (dict(downsample="pool"), r"downsample must be one of \('copy', 'conv3x3'\), got 'pool'"),
    (dict(kernel_branches=["small", "tiny"]), r"kernel_branches entry must be one of .*got 'tiny'"),
    (dict(kernel_branches=["small", "small"]), r"repeats a branch"),
    (dict(kernel_branches="small"), r"must be a list"),
    (dict(drop_path_rate=0.1), r"no stochastic depth: drop_path_rate must be 0"),
])
def test_bad_switch_values_are_errors_naming_the_allowed_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        timm.create_model("repnext_m1", **kwargs)


def test_unknown_constructor_argument_is_an_error() -> None:
    with pytest.raises(TypeError, match="small_kernels"):
        timm.create_model("repnext_m1", small_kernels="plain")
    timm.create_model("repnext_m0", drop_path_rate=0.0)  # timm's generic callers pass 0: accepted
    from regla.errors import UsageError
    from regla.train.config import build_config
    from regla.train.modeling import create_student

    cfg = build_config(None, base=dict(model="repnext_m1", model_kwargs={"bogus": 1}, drop_path=0.0))
    with pytest.raises(UsageError, match=r"repnext_m1 does not accept \['bogus', 'num_classes'\]"):
        create_student(cfg, num_classes=3)
    cfg = cfg.replace(model_kwargs={"small_kernel": "dilated"})  # a recipe's bad switch value: bad input, exit 2
    with pytest.raises(UsageError, match=r"model_kwargs .*small_kernel must be one of \('plain'") as err:
        create_student(cfg, num_classes=3)
    assert err.value.exit_code == 2


# ---------------------------------------------------------------------------------------------------------------
# RepViT variants (timm's RepVit, regla's switches)
# ---------------------------------------------------------------------------------------------------------------

VARIANTS = timm.list_models(module="repvit_variants")


def test_every_paper_row_variant_is_registered() -> None:
    assert sorted(VARIANTS) == sorted(V.PAPER_FIGURES)
    assert len(VARIANTS) == 8


@pytest.mark.parametrize("name", VARIANTS)
def test_repvit_variant_builds_and_fuses_exactly(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name)
    assert isinstance(model, RepVit)
    fused, err = _fused_matches(model)
    assert err < 1e-4
    assert not any(isinstance(m, (RepVggDw, nn.BatchNorm1d)) for m in fused.modules())


@pytest.mark.parametrize("size", sorted(V._SIZES))
def test_default_switches_are_timms_model(size: str) -> None:
    """``RepVitVariant`` with its defaults is timm's ``repvit_<size>`` (same keys and shapes)."""
    embed_dim, depth = V._SIZES[size]
    ours = V.RepVitVariant(embed_dim=embed_dim, depth=depth)
    timms = timm.create_model(f"repvit_{size}")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in timms.state_dict().items()}


def _count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


def test_repvit_variants_change_what_their_row_says() -> None:
    from timm.layers import SqueezeExcite

    base = timm.create_model("repvit_m0_9")
    blocks = sum(len(s.blocks) for s in base.stages)  # 20 stage blocks, 3 downsampling pre-blocks
    assert _count(base, SqueezeExcite) == sum((d + 1) // 2 for d in V._SIZES["m0_9"][1])  # 1st, 3rd, ... block
    assert _count(timm.create_model("repvit_m0_9_nose"), SqueezeExcite) == 0
    assert _count(timm.create_model("repvit_m0_9_se_per_block"), SqueezeExcite) == blocks
    noreparam = timm.create_model("repvit_m0_9_noreparam")
    assert _count(noreparam, RepVggDw) == 0 and _count(base, RepVggDw) == blocks + 3
    ds = timm.create_model("repvit_m0_9_repnext_ds")
    assert _count(ds, R.CopyConv) == 3 and _count(ds, RepVggDw) == blocks + 3  # pre-blocks and FFNs stay RepViT's
    # deploy-form params: M0.9 and the RepNeXt-downsample row as RepNeXt Table 5 prints them (5.07, 4.99)
    for name, paper in (("repvit_m0_9", 5.07), ("repvit_m0_9_repnext_ds", 4.99)):
        params = count_params(reparameterize_model(timm.create_model(name).eval())) / 1e6
        assert abs(params / paper - 1) <= 0.01, (name, params)


def test_repvit_variant_bad_input_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"se_layout must be one of \('cross_block', 'per_block', 'none'\)"):
        timm.create_model("repvit_m0_9_nose", se_layout="every")
    with pytest.raises(ValueError, match=r"downsample must be one of \('repvit', 'repnext'\)"):
        V.RepVitVariant(downsample="copy", embed_dim=(16, 32), depth=(1, 1))
    with pytest.raises(ValueError, match="reparam must be true or false"):
        V.RepVitVariant(reparam="no", embed_dim=(16, 32), depth=(1, 1))
    with pytest.raises(ValueError, match="doubles channels"):
        V.RepVitVariant(downsample="repnext", embed_dim=(16, 24), depth=(1, 1))
    with pytest.raises(TypeError):
        timm.create_model("repvit_m0_9_nose", bogus=1)
    with pytest.raises(ValueError, match="no weights are published"):
        timm.create_model("repvit_m1_5_noreparam", pretrained=True)


def test_regla_models_prints_ablation_rows_beside_the_paper() -> None:
    from regla.models.cli import FAMILIES, format_rows, model_rows

    assert "repvit_variants" in FAMILIES
    rows = model_rows(("repvit_variants",), img_size=64, deploy=True)
    by_name = {r["model"]: r for r in rows}
    assert set(VARIANTS) <= set(by_name)
    assert by_name["repvit_m0_9_repnext_ds"]["paper_params_m"] == 4.99
    assert by_name["repvit_m0_9_nose"]["paper_top1"] == 77.92
    text = format_rows(rows, 64, markdown=True)
    assert "| repvit_m2_3_noreparam |" in text and "83.1" in text


# ---------------------------------------------------------------------------------------------------------------
# Recipes: one per paper row
# ---------------------------------------------------------------------------------------------------------------

_NO_DISTILL_120E = {"epochs": 120, "distillation_type": "none"}
# recipe -> the keys (besides ``output``) it changes from its ``base:`` with their values, and the published figure
# its header must quote.
RECIPES: dict[str, tuple[dict, str]] = {
    **{f"peers/repnext/{row}.yaml": (
        {**_NO_DISTILL_120E, **({"model_kwargs": spec["kwargs"]} if spec["kwargs"] else {}),
         **({"model": spec["model"]} if spec["model"] == "repvit_m0_9_repnext_ds" else {})},
        f"top-1 {spec['top1']}%") for row, spec in R.ABLATIONS.items()},
    **{f"peers/repvit/table1_{s}_450e.yaml": ({"epochs": 450}, f"{t}% top-1") for s, t in
       (("m0_9", 79.1), ("m1_0", 80.3), ("m1_1", 81.2), ("m1_5", 82.5), ("m2_3", 83.7))},
    **{f"peers/repvit/table2_{s}_no_distill.yaml": ({"distillation_type": "none"}, f"{t}% top-1") for s, t in
       (("m0_9", 77.4), ("m1_0", 78.6), ("m1_1", 79.4), ("m1_5", 81.2), ("m2_3", 82.5))},
    **{f"peers/repvit/table6_{s}_no_reparam.yaml": ({"model": f"repvit_{s}_noreparam"}, f"{t}% top-1") for s, t in
       (("m0_9", "78.47"), ("m1_5", "82.09"), ("m2_3", "83.10"))},
    **{f"peers/repvit/table6_{s}_reparam.yaml": ({}, f"{t}% top-1") for s, t in
       (("m0_9", "78.74"), ("m1_5", "82.29"), ("m2_3", "83.30"))},
    **{f"peers/repvit/table7_{s}_{tag}.yaml": ({"model": f"repvit_{s}_{model}"} if model else {}, f"{t}% top-1")
       for s, rows in (("m0_9", ("77.92", "78.75", "78.74")), ("m1_5", ("81.86", "82.29", "82.29")))
       for (tag, model), t in zip((("no_se", "nose"), ("se_per_block", "se_per_block"), ("se_cross_block", None)),
                                  rows, strict=True)},
    "peers/repvit/roadmap_step0_mobilenetv3_large.yaml": (
        {"model": "mobilenetv3_large_100", "model_kwargs": {"act_layer": "gelu"}, "distillation_type": "none"},
        "71.5% top-1"),
    "peers/repvit/roadmap_step8_cross_block_se.yaml": ({"distillation_type": "none"}, "77.4% top-1"),
}


def test_every_peer_recipe_is_listed() -> None:
    on_disk = {str(p.relative_to(CONFIGS)) for p in (CONFIGS / "peers").rglob("*.yaml")
               if "iformer" not in p.parts}  # iFormer rows: tests/test_iformer_ablations.py
    assert on_disk == set(RECIPES)


def _print_config(path: Path, capsys: pytest.CaptureFixture) -> dict:
    assert main(["train", "-c", str(path), "--teacher-path", TEACHER, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_differs_from_its_base_only_in_its_row(recipe: str, capsys: pytest.CaptureFixture) -> None:
    path = CONFIGS / recipe
    changes, figure = RECIPES[recipe]
    text = path.read_text()
    base = path.parent / re.search(r"^base: (\S+)$", text, re.M).group(1)
    header = "".join(line for line in text.splitlines() if line.startswith("#"))
    assert figure in header, f"{recipe}: header does not quote {figure}"
    cfg, parent = _print_config(path, capsys), _print_config(base, capsys)
    changed = {k for k in cfg if cfg[k] != parent[k]}
    assert changed == set(changes) | {"output"}, recipe
    assert {k: cfg[k] for k in changes} == changes
    assert cfg["output"] == f"runs/{recipe.removesuffix('.yaml')}"
    assert timm.is_model(cfg["model"])


@pytest.mark.parametrize("recipe", sorted(r for r, (ch, _) in RECIPES.items() if "model" in ch or "model_kwargs" in ch))
def test_recipe_model_builds_through_the_trainer(recipe: str, capsys: pytest.CaptureFixture) -> None:
    from regla.train.config import build_config
    from regla.train.modeling import create_student

    cfg = _print_config(CONFIGS / recipe, capsys)
    model = create_student(build_config(None, base=cfg), num_classes=3)
    want = timm.create_model(cfg["model"], num_classes=3, **cfg["model_kwargs"])
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in want.state_dict().items()}


@pytest.mark.parametrize("size,row", [("m0_9", 78.7), ("m2_3", 83.3), ("m1_0", 80.0), ("m1_1", 80.7), ("m1_5", 82.3)])
def test_repvit_recipes_name_their_distilled_row(size: str, row: float, capsys: pytest.CaptureFixture) -> None:
    """configs/repvit_*.yaml are RepViT Table 1's distilled 300-epoch rows and say so (not ReGLA Table 2's figures)."""
    path = CONFIGS / f"repvit_{size}.yaml"
    first = path.read_text().splitlines()[0]
    assert "RepViT Table 1" in first and f"{row}% top-1" in first
    cfg = _print_config(path, capsys)
    assert (cfg["model"], cfg["epochs"], cfg["distillation_type"]) == (f"repvit_{size}", 300, "hard")
