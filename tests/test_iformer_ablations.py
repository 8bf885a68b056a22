"""iFormer's ablation rows (Tables 1, 2, 6, 7) as models on timm's IFormer, and their recipes (Tables 1, 2, 6-8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import yaml
from timm.layers import LayerNorm2d
from timm.models.iformer import SHMA, ConvBlock, RepCPE, SHMABlock
from timm.utils import reparameterize_model
from torch import nn

import regla  # noqa: F401  (registers the variants)
from regla.models import iformer_variants as V
from regla.train.config import build_config
from train_helpers import randomize_norms

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PEERS = CONFIGS / "peers" / "iformer"
NAMES = list(V.MODEL_ARGS)
PARAMS = [n for n in NAMES if V.PAPER_FIGURES[n].get("params_m")]
TABLE7 = [n for n in NAMES if V.PAPER_FIGURES[n]["table"].startswith("7")]


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **kwargs)


def _mixers(model: nn.Module) -> list[nn.Module]:
    return [b.mixer.module for b in model.modules() if isinstance(b, SHMABlock)]


# --- every variant builds, fuses and keeps its output -----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_variant_fuses_exactly(name: str) -> None:
    model = randomize_norms(_model(name)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        out = fused(x)
    assert ref.shape == (2, 10) and ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() < 1e-4
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # fusion did something


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_learns(name: str) -> None:
    """A training step reaches every parameter with a finite gradient (none left over by a swap: DDP needs that)."""
    model = _model(name, drop_path_rate=0.1).train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_variants_are_timm_iformer_with_registered_defaults() -> None:
    assert set(NAMES) <= set(timm.list_models(module="iformer_variants"))
    for name in NAMES:
        assert V.PAPER_FIGURES[name]["table"]
        assert timm.get_pretrained_cfg(name).first_conv == "stem.conv1.c"
    assert issubclass(V.IFormerAblation, timm.models.iformer.IFormer)


# --- each switch does what its row says ---------------------------------------------------------------------------


def _kernels(model: nn.Module) -> set[int]:
    return {b.mixer.module[0].c.kernel_size[0] for b in model.modules() if isinstance(b, ConvBlock)}


def test_kernel_and_stem_switches() -> None:
    k3, k7, base = _model("iformer_m_conv_k3"), _model("iformer_m_conv_k7"), _model("iformer_m_conv")
    assert _kernels(k3) == {3} and _kernels(k7) == {7} == _kernels(base)
    assert k3.stem.conv1.c.kernel_size == k7.stem.conv1.c.kernel_size == (3, 3) == k7.stem.conv2.c.kernel_size
    assert base.stem.conv1.c.kernel_size == (5, 5) and base.stem.conv1.c.padding == (2, 2)
    assert k3.stem.conv2.c.stride == (2, 2) and k3.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert not _mixers(base) and [len(s.blocks) for s in base.stages] == [2, 2, 18, 2]
    # rebuilt modules get timm's IFormer init (truncated normal, std 0.02), not PyTorch's default (std ~0.11 here)
    assert k3.stem.conv1.c.weight.std() < 0.03 and k3.stages[2].blocks[0].mixer.module[0].c.weight.std() < 0.03


def test_features_only_and_dtype_reach_the_swapped_modules() -> None:
    feats = timm.create_model("iformer_m_sha_baseline", features_only=True).eval()
    assert [tuple(t.shape) for t in feats(torch.randn(1, 3, 64, 64))] == \
           [(1, 48, 16, 16), (1, 96, 8, 8), (1, 192, 4, 4), (1, 384, 2, 2)]
    model = timm.create_model("iformer_m_shma_silu_preln", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}


@pytest.mark.parametrize("pct,groups,convs", [(22, 2, 14), (50, 4, 10), (78, 7, 4), (100, 9, 0)])
def test_table7_replaces_two_conv_blocks_per_group(pct: int, groups: int, convs: int) -> None:
    for attn in ("sha", "shma"):
        stage3 = _model(f"iformer_m_{attn}_{pct}").stages[2].blocks
        assert sum(isinstance(b, ConvBlock) for b in stage3) == convs
        assert sum(isinstance(b, SHMABlock) for b in stage3) == groups
        assert not any(isinstance(b, RepCPE) for b in stage3)  # CPE comes after this step of the roadmap
        plain = [isinstance(b.mixer.module, V.PlainAttention) for b in stage3 if isinstance(b, SHMABlock)]
        assert all(plain) if attn == "sha" else not any(plain)


def test_table1_heads_and_modulation() -> None:
    mha, sha, shma = (_model(f"iformer_m_{a}_baseline") for a in ("mha", "sha", "shma"))
    assert [m.num_heads for m in _mixers(mha)] == [6] * 4 + [12] * 2  # 192 / 32 and 384 / 32
    assert [m.num_heads for m in _mixers(sha)] == [1] * 6
    assert all(type(m) is SHMA and isinstance(m.gate_act, nn.Sigmoid) for m in _mixers(shma))
    assert all(not hasattr(m, "v_gate") and m.v.c.out_channels == m.proj.c.in_channels for m in _mixers(sha))
    kept = [sum(not isinstance(b, nn.Identity) for b in s.blocks) for s in sha.stages]
    assert kept == [2, 2, 18, 4]  # CPE-less groups of attention + FFN: 9 + 4 x 2 + 1 and 2 x 2 blocks


def test_table6_gate_and_pre_ln() -> None:
    silu, preln, ref = _model("iformer_m_shma_silu"), _model("iformer_m_shma_silu_preln"), _model("iformer_m")
    assert all(isinstance(m.gate_act, nn.SiLU) for m in _mixers(silu) + _mixers(preln))
    assert all(isinstance(m.gate_act, nn.Sigmoid) for m in _mixers(ref))
    assert all(isinstance(m, V.PreNormSHMA) and isinstance(m.norm, LayerNorm2d) and type(m.q) is nn.Conv2d
               and m.q.bias is not None for m in _mixers(preln))
    shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in silu.state_dict().items()} == shapes  # only the activation differs


def test_pre_ln_normalizes_before_the_projections() -> None:
    torch.manual_seed(0)
    attn = V.PreNormSHMA(16, 1, 2).eval()
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():  # a per-pixel shift and scale of the input leaves a LayerNorm-first module unchanged
        shift = torch.randn(1, 1, 4, 4)
        assert torch.allclose(attn(x), attn(3 * x + shift), atol=1e-4)
        post_bn = SHMA(16, 1, 2).eval()  # timm's: BN after the projections, not invariant
        assert not torch.allclose(post_bn(x), post_bn(3 * x + shift), atol=1e-2)


@pytest.mark.parametrize("heads", [1, 4])
def test_plain_attention_is_softmax_attention_per_head(heads: int) -> None:
    torch.manual_seed(0)
    attn = randomize_norms(V.PlainAttention(16, 1, 2, heads)).eval()
    x = torch.randn(2, 16, 3, 5)
    with torch.no_grad():
        q, k, v = (m(x).flatten(2) for m in (attn.q, attn.k, attn.v))  # (B, C, N)
        outs = []
        for h in range(heads):
            qh, kh, vh = (t.chunk(heads, 1)[h] for t in (q, k, v))
            a = (qh.transpose(1, 2) @ kh / qh.shape[1] ** 0.5).softmax(-1)  # (B, N, N)
            outs.append(vh @ a.transpose(1, 2))
        ref = attn.proj(torch.cat(outs, 1).reshape(2, -1, 3, 5))
        assert torch.allclose(attn(x), ref, atol=1e-5)


# --- arguments are validated --------------------------------------------------------------------------------------


def test_unknown_argument_is_an_error() -> None:
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['kernel'\]"):
        timm.create_model("iformer_m_sha_50", kernel=5)
    from regla.train.modeling import create_student

    cfg = build_config(str(PEERS / "table7_row4_sha50.yaml"), ["model_kwargs={nope: 1}"])
    with pytest.raises(ValueError, match="nope"):
        create_student(cfg, num_classes=3)


@pytest.mark.parametrize("kwargs,says", [
    (dict(kernel_size=4), "kernel_size must be an odd"),
    (dict(stem_kernel=0), "stem_kernel must be an odd"),
    (dict(attn="linear"), "attn must be one of"),
    (dict(gate_act="relu"), "gate_act must be one of"),
    (dict(shma_norm="pre_bn"), "shma_norm must be one of"),
    (dict(attn="sha", gate_act="silu"), "has no gate"),
    (dict(mha_head_dim=0), "mha_head_dim"),
])
def test_bad_switch_values_say_what_is_allowed(kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        timm.create_model("iformer_m_conv", **kwargs)


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(ValueError, match="num_heads must divide"):
        V.PlainAttention(48, 1, 1, num_heads=5)


# --- counts against the paper ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARAMS)
def test_params_match_the_paper(name: str) -> None:
    params = sum(p.numel() for p in timm.create_model(name).parameters()) / 1e6
    paper = V.PAPER_FIGURES[name]["params_m"]
    if name == "iformer_m_shma_baseline":  # Table 7's last row: 10.37 M here for 10.0 (its MACs match exactly)
        assert params == pytest.approx(10.37, abs=0.01)
    else:
        assert round(params, 1) == paper  # the table's one decimal


@pytest.mark.parametrize("name", TABLE7)
def test_table7_macs_match_the_paper(name: str) -> None:
    from regla.utils import count_macs

    gmacs = count_macs(timm.create_model(name, num_classes=1000)) / 1e9
    tol = 0.006 if name == "iformer_m_shma_50" else 0.001  # row 5: 1717.6 M here for 1712 M; the others within 1 M
    assert gmacs == pytest.approx(V.PAPER_FIGURES[name]["gmacs"], abs=tol)


def test_regla_models_lists_the_rows_beside_the_paper() -> None:
    from regla.models.cli import format_rows, model_rows

    rows = {r["model"]: r for r in model_rows(("iformer_variants",), img_size=32)}
    assert set(rows) == set(NAMES) | {"iformer_h"}
    assert rows["iformer_m_sha_22"]["paper_params_m"] == 9.1 and rows["iformer_m_sha_22"]["paper_top1"] == 79.5
    assert rows["iformer_h"]["paper_params_m"] == 99 and rows["iformer_h"]["params_m"] == pytest.approx(99.6, abs=0.05)
    assert "iformer_m_shma_silu_preln" in format_rows(list(rows.values()), 32, markdown=True)


# --- recipes: one per row, each its base but for the row's keys ---------------------------------------------------

ROWS = {  # recipe -> its model; model and output are the only keys that differ from configs/iformer_m.yaml
    "table1_row1_mha": "iformer_m_mha_baseline",
    "table1_row2_sha": "iformer_m_sha_baseline",
    "table2_row1_k3": "iformer_m_conv_k3",
    "table2_row2_k7": "iformer_m_conv_k7",
    "table6_row1_silu_postbn": "iformer_m_shma_silu",
    "table6_row2_silu_preln": "iformer_m_shma_silu_preln",
    "table6_row3_sigmoid_postbn": "iformer_m",
    "table7_row1_baseline": "iformer_m_conv",
    **{f"table7_row{2 + 2 * i + j}_{a}{pct}": f"iformer_m_{a}_{pct}"
       for i, pct in enumerate((22, 50, 78, 100)) for j, a in enumerate(("sha", "shma"))},
    "table7_row10_shma50_stage4": "iformer_m_shma_baseline",
}


def _print_config(path: Path, capsys) -> dict:
    from regla.cli import main

    assert main(["train", "-c", str(path), "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_one_recipe_per_row() -> None:
    assert {p.stem for p in PEERS.glob("*.yaml")} == set(ROWS)
    assert set(ROWS.values()) - {"iformer_m"} == set(NAMES)


@pytest.mark.parametrize("row,model", ROWS.items())
def test_row_recipe_differs_from_iformer_m_only_in_model_and_output(row: str, model: str, capsys) -> None:
    path = PEERS / f"{row}.yaml"
    cfg, base = _print_config(path, capsys), build_config("iformer_m").flat()
    changed = {k for k in cfg if cfg[k] != base[k]}
    assert changed == ({"model", "output"} if model != "iformer_m" else {"output"})
    assert cfg["model"] == model and cfg["output"] == f"runs/peers/iformer/{row}"
    head = path.read_text().split("base:")[0]
    assert f"Table {row[5]}, row {row.split('_')[1][3:]}" in head and "Published" in head
    assert f"-c configs/peers/iformer/{row}.yaml" in head


def test_iformer_h_recipe_table8(capsys) -> None:
    cfg, base = _print_config(CONFIGS / "iformer_h.yaml", capsys), build_config("iformer_m").flat()
    changed = {k: cfg[k] for k in cfg if cfg[k] != base[k]}
    assert changed == dict(model="iformer_h", batch_size=128, lr_base=8e-3, lr_base_batch=1024, drop_path=0.6,
                           model_ema=True, output="runs/iformer_h")
    assert "84.8" in (CONFIGS / "iformer_h.yaml").read_text().split("\nmodel:")[0]
    assert timm.is_model("iformer_h")
