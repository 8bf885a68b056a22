"""Recipes, command-line overrides, LR scaling and the CLI wiring of `regla train` / `regla eval` / `regla plot`."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import yaml

import regla  # noqa: F401  (registers regla_* and repnext_*)
from regla.train.config import DEFAULTS, ConfigError, build_config, parse_override, scaled_lr

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_table2_recipe_exists_and_loads():
    names = [f"regla_{v}" for v in "tsmlx"] + [f"iformer_{v}" for v in "tsml"] + \
            ["repvit_m1_0", "repvit_m1_1", "repvit_m1_5"] + [f"repnext_m{i}" for i in range(1, 6)]
    for name in names:
        cfg = build_config(str(CONFIGS / f"{name}.yaml"), ["teacher_path=/nonexistent/regnety_160.pth"])
        assert cfg.task.model == name
        assert cfg.run.epochs == 300 and cfg.task.img_size == 224 and cfg.run.opt == "adamw"
        assert cfg.run.sched == "cosine" and cfg.task.mixup == 0.8 and cfg.task.cutmix == 1.0
        assert cfg.task.smoothing == 0.1 and cfg.task.reprob == 0.25 and cfg.task.aa.startswith("rand-m9")
        assert timm.is_model(name), f"{name} is not registered in timm"


def test_regla_recipes_follow_section_4_1_and_iformer():
    for v in "tsmlx":
        cfg = build_config(f"regla_{v}")
        assert cfg.run.warmup_epochs == 20  # ReGLA §4.1
        assert cfg.run.lr_base == 4e-3 and cfg.run.lr_base_batch == 4096 and cfg.run.weight_decay == 0.05
        assert cfg.run.model_ema is True and cfg.task.distillation_type == "none"
    assert build_config("regla_l").task.drop_path == 0.1 and build_config("regla_t").task.drop_path == 0.0


def test_peer_recipes_distill_from_regnety160():
    cfg = build_config("repvit_m1_1", ["teacher_path=/x.pth"])
    t = cfg.task
    assert (t.distillation_type, t.teacher_model, t.distillation_alpha) == ("hard", "regnety_160", 0.5)
    assert cfg.run.lr_base == 1e-3 and cfg.run.lr_base_batch == 512 and cfg.run.warmup_epochs == 5
    assert build_config("repnext_m5", ["teacher_path=/x.pth"]).run.weight_decay == 0.03
    with pytest.raises(ConfigError, match="teacher_path"):
        build_config("repvit_m1_1")


def test_lr_scales_with_global_batch():
    cfg = build_config("regla_t")
    assert scaled_lr(cfg.run, world_size=8) == pytest.approx(4e-3)  # 8 x 512 = 4096: the published point
    assert scaled_lr(cfg.run, world_size=1) == pytest.approx(4e-3 * 512 / 4096)
    cfg2 = build_config("regla_t", ["batch_size=128", "grad_accum=4"])
    assert scaled_lr(cfg2.run, world_size=2) == pytest.approx(4e-3 * 1024 / 4096)
    rv = build_config("repvit_m1_0", ["teacher_path=/x"])
    assert scaled_lr(rv.run, world_size=8) == pytest.approx(4e-3)  # 1e-3 * 2048 / 512
    assert scaled_lr(build_config("regla_t", ["lr=1e-3"]).run, world_size=8) == 1e-3  # absolute lr wins


def test_set_overrides_parse_yaml_values_and_reject_unknown_keys():
    cfg = build_config("regla_t", ["scale=[0.5, 1.0]", "aa=null", "lr_base=2e-3", "sync-bn=true", "epochs=7",
                                   "warmup_epochs=2"])
    assert cfg.task.scale == [0.5, 1.0] and cfg.task.aa is None and cfg.run.lr_base == 2e-3
    assert cfg.run.sync_bn is True and cfg.run.epochs == 7
    assert parse_override("lr=1e-3") == ("lr", 1e-3)
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        build_config("regla_t", ["learning_rate=1"])
    with pytest.raises(ConfigError, match="amp_dtype"):
        build_config(None, ["amp_dtype=int8"])
    with pytest.raises(ConfigError, match="key=value"):
        build_config(None, ["epochs"])
    with pytest.raises(ConfigError, match="not found"):
        build_config("no_such_recipe")


def test_every_recipe_key_is_known():
    for path in CONFIGS.glob("*.yaml"):
        unknown = set(yaml.safe_load(path.read_text())) - set(DEFAULTS)
        assert not unknown, f"{path.name}: {unknown}"


def test_cli_registers_subcommands_and_resolves_flags(capsys):
    from regla.cli import main

    assert main(["train", "-c", "regla_s", "--lr", "1e-3", "--set", "epochs=5", "--set", "warmup_epochs=1",
                 "--amp", "bf16", "--sync-bn", "--print-config"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["model"] == "regla_s" and out["lr"] == 1e-3 and out["epochs"] == 5
    assert out["amp"] is True and out["amp_dtype"] == "bfloat16" and out["sync_bn"] is True
    assert main(["train", "--demo", "--print-config"]) == 0
    demo = yaml.safe_load(capsys.readouterr().out)
    assert demo["model"] == "regla_t" and demo["img_size"] == 32
    assert main(["train", "--set", "nope=1", "--print-config"]) == 2
    assert "unknown option 'nope'" in capsys.readouterr().err


ABLATIONS = {  # Tables 5-7 of the ReGLA paper: the switches each row changes from ReGLA-M
    "table5_row1_conv9": {"early_block": "dw9", "gating": "decoupled"},
    "table5_row2_conv7": {"early_block": "dw7", "gating": "decoupled"},
    "table5_row3_elrf": {"gating": "decoupled"},
    "table6_row1_nogate": {"gating": "none"},
    "table7_row1_ffn": {"post_attn": "ffn"},
    "table7_row2_mib": {"post_attn": "mib"},
}


@pytest.mark.parametrize("row,switches", ABLATIONS.items())
def test_ablation_recipes_inherit_regla_m_and_set_switches(row, switches):
    from regla.train.modeling import create_student

    cfg = build_config(str(CONFIGS / "ablations" / f"{row}.yaml"))
    base = build_config("regla_m")
    assert cfg.task.model == "regla_m" and cfg.task.model_kwargs == switches
    assert {k: v for k, v in cfg.flat().items() if k not in ("model_kwargs", "output")} == \
           {k: v for k, v in base.flat().items() if k not in ("model_kwargs", "output")}
    model = create_student(cfg, num_classes=3)
    want = {k: v.shape for k, v in timm.create_model("regla_m", num_classes=3, **switches).state_dict().items()}
    plain = {k: v.shape for k, v in timm.create_model("regla_m", num_classes=3).state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == want
    if set(switches) - {"gating"} or switches.get("gating") == "none":  # gate* has gate's shapes
        assert want != plain


def test_recipe_base_loop_and_bad_model_kwargs(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        build_config(str(tmp_path / "a.yaml"))
    with pytest.raises(ConfigError, match="model_kwargs = 'dw7' .*expected a mapping"):
        build_config("regla_t", ["model_kwargs=dw7"])


# --- the typed schema (regla.config) ---------------------------------------------------------------------------------

BAD_VALUES = {  # overrides -> what the one-line error must say
    ("eval_every=0",): ["eval_every = 0", "an integer >= 1"],
    ("batch_size=0",): ["batch_size = 0", ">= 1"],
    ("weight_decay=-0.1",): ["weight_decay = -0.1", ">= 0"],
    ("lr=0",): ["lr = 0", "> 0"],
    ("lr=-1e-3",): ["lr = -0.001", "> 0"],
    ("hflip=1.5",): ["hflip = 1.5", "<= 1"],
    ("reprob=-0.1",): ["reprob = -0.1", ">= 0"],
    ("workers=-1",): ["workers = -1", ">= 0"],
    ("epochs=abc",): ["epochs = 'abc' (a string)", "an integer"],
    ("epochs=2.5",): ["epochs = 2.5", "an integer"],
    ("lr=fast",): ["lr = 'fast' (a string)", "null or a number > 0"],
    ("amp=1",): ["amp = 1", "true or false"],
    ("scale=[0.5]",): ["scale = [0.5]", "1 items", "a list of 2 numbers"],
    ("ratio=[2.0, 1.0]",): ["ratio = [2.0, 1.0]", "low <= high"],
    ("device=tpu",): ["device = 'tpu'", "not a device name"],
    ("interpolation=cubic",): ["interpolation = 'cubic'", "one of 'bicubic'"],
    ("epochs=5", "warmup_epochs=10"): ["warmup_epochs = 10 > epochs = 5"],
    ("lr=1e-4", "min_lr=1e-3"): ["min_lr = 0.001 > lr = 0.0001"],
    ("lr_bse=1",): ["unknown option 'lr_bse'", "did you mean 'lr_base'"],
    ("epochs.x=1",): ["epochs is not a mapping"],
    ("model_kwargs=dw7",): ["model_kwargs = 'dw7'", "a mapping"],
    ("in_chans=1",): ["one value per input channel"],
}


@pytest.mark.parametrize("overrides,expected", BAD_VALUES.items(), ids=[" ".join(k) for k in BAD_VALUES])
def test_bad_values_are_one_line_errors_naming_key_value_and_rule(overrides, expected):
    with pytest.raises(ConfigError) as err:
        build_config("regla_t", list(overrides))
    msg = str(err.value)
    assert "\n" not in msg
    for part in expected:
        assert part in msg, (part, msg)
    assert err.value.exit_code == 2


def test_yaml_1_1_floats_and_recipe_errors_name_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: regla_t\nlr: 4e-3\nmin_lr: 1e-6\nscale: [1e-1, 1]\nwarmup_epochs: 2e1\n")
    cfg = build_config(str(recipe), ["weight_decay=5e-2"])
    assert cfg.run.lr == 4e-3 and cfg.run.min_lr == 1e-6 and cfg.run.weight_decay == 0.05
    assert cfg.task.scale == [0.1, 1.0] and cfg.run.warmup_epochs == 20 and isinstance(cfg.run.warmup_epochs, int)
    recipe.write_text("weight_decay: lots\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: weight_decay = 'lots'"):
        build_config(str(recipe))


def test_set_reads_mappings_in_every_form():
    for overrides in (["model_kwargs={early_block:dw7,gating:none}"], ["model_kwargs={early_block: dw7, gating: none}"],
                      ["model_kwargs.early_block=dw7", "model_kwargs.gating=none"]):
        assert build_config(None, overrides).task.model_kwargs == {"early_block": "dw7", "gating": "none"}, overrides
    cfg = build_config(str(CONFIGS / "ablations" / "table5_row1_conv9.yaml"), ["model_kwargs.early_block=dw7"])
    assert cfg.task.model_kwargs == {"early_block": "dw7", "gating": "decoupled"}  # one entry changed, the rest kept
    assert build_config(None, ["model_kwargs={layer_scale:1e-6}"]).task.model_kwargs == {"layer_scale": 1e-6}
    assert parse_override("model_kwargs.x={a:[1,2]}") == ("model_kwargs.x", {"a": [1, 2]})
    with pytest.raises(ConfigError, match="has no value"):
        build_config(None, ["model_kwargs={'early_block:dw7': null}"])  # quoted: a real key, loudly refused


def test_schema_covers_every_default_and_returns_a_typed_recipe():
    import dataclasses

    from regla.runs.config import RUN_FIELDS
    from regla.train.config import FIELDS, SCHEMA

    assert set(FIELDS) | set(RUN_FIELDS) == set(DEFAULTS) and not set(FIELDS) & set(RUN_FIELDS)
    SCHEMA.validate(DEFAULTS)  # the defaults are valid
    cfg = build_config("regla_t")
    assert {f.name for f in dataclasses.fields(cfg.run)} == set(RUN_FIELDS)  # the run section: the harness's keys
    from regla.distill.config import SCHEMA as DISTILL
    from regla.runs.config import RunSection

    assert type(cfg.run) is RunSection and type(DISTILL.build(None).run) is RunSection  # one type for every trainer
    assert {f.name for f in dataclasses.fields(cfg.task)} == set(FIELDS)  # the classification section
    assert list(cfg.flat()) == list(DEFAULTS)  # one flat form, in the schema's order
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.epochs = 3  # a resolved recipe is read-only: changes go through the schema (replace)
    assert yaml.safe_load(dump_roundtrip(cfg)) == cfg.flat()  # what is saved in a run folder reads back the same
    assert SCHEMA.build(None, base=yaml.safe_load(dump_roundtrip(cfg))) == cfg


def test_replace_checks_the_new_values_and_renamed_keys_name_the_new_one():
    from regla.config import Field, Schema
    from regla.runs.config import RUN_FIELDS

    cfg = build_config("regla_t")
    assert cfg.replace(epochs=30).run.epochs == 30 and cfg.run.epochs == 300  # a new recipe; the old one unchanged
    with pytest.raises(ConfigError, match="warmup_epochs = 20 > epochs = 3"):  # the rules run again
        cfg.replace(epochs=3, warmup_epochs=20)
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        cfg.replace(epoch=3)
    schema = Schema({"model": Field(str, "m")}, RUN_FIELDS, renamed={"arch": "model"})
    with pytest.raises(ConfigError, match="option 'arch' is now called 'model'"):
        schema.build(None, ["arch=regla_t"])


def dump_roundtrip(cfg):
    from regla.train.config import dump

    return dump(cfg)
