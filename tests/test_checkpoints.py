"""The one weights layer (regla.checkpoints): every file layout a user has gives the same tensors through every
loader of the project: the Python API, timm.create_model(pretrained_cfg_overlay=dict(file=...)), regla export,
regla eval and regla train --initial-checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import regla  # noqa: F401
from regla.checkpoints import (
    CheckpointError,
    WeightsInfo,
    create_model_from_weights,
    load_into,
    load_weights,
    read_weights,
    save_weights,
)
from regla.runs.checkpoint_sets import TRAIN_FORMAT
from train_helpers import make_folder

NAME, CLASSES, SIZE = "regla_t", 3, 64


def _randomised(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(NAME, num_classes=CLASSES).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[dict[str, Path], torch.nn.Module, torch.nn.Module]:
    """Every layout, holding the weights of ``ref`` (raw) and, where a file has two, ``ema`` as the EMA."""
    root = tmp_path_factory.mktemp("layouts")
    ref, ema = _randomised(0), _randomised(1)
    sd, sd_ema = ref.state_dict(), ema.state_dict()
    fused = timm.utils.reparameterize_model(ema)
    out: dict[str, Path] = {}

    def put(name: str, obj) -> None:
        out[name] = root / name
        torch.save(obj, out[name])

    put("plain.pth", sd_ema)
    put("model.pth", {"model": sd_ema, "epoch": 3})
    put("state_dict.pt", {"state_dict": {f"module.{k}": v for k, v in sd_ema.items()}})
    put("model_ema.pth", {"model": sd, "model_ema": sd_ema})
    put("state_dict_ema.bin", {"state_dict": sd, "state_dict_ema": sd_ema, "optimizer": {}})
    put("train.pth", {"format": TRAIN_FORMAT, "arch": {"model": NAME, "num_classes": CLASSES,
                                                        "distillation": False, "in_chans": 3},
                      "model": sd, "model_ema": sd_ema, "cfg": {"img_size": SIZE}, "class_map": None, "epoch": 1})
    out["plain.safetensors"] = root / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in sd_ema.items()}, out["plain.safetensors"])
    out["meta.safetensors"] = save_weights(root / "meta.safetensors", sd_ema,
                                           WeightsInfo(model=NAME, num_classes=CLASSES, input_size=(3, SIZE, SIZE)))
    out["fused.safetensors"] = save_weights(root / "fused.safetensors", fused.state_dict(),
                                            WeightsInfo(model=NAME, num_classes=CLASSES, fused=True))
    return out, ref, ema


LAYOUTS = ["plain.pth", "model.pth", "state_dict.pt", "model_ema.pth", "state_dict_ema.bin", "train.pth",
           "plain.safetensors", "meta.safetensors", "fused.safetensors"]


def _x() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_the_ema_weights(files, layout):
    paths, _, ema = files
    weights = read_weights(paths[layout])
    model, report = load_into(timm.create_model(NAME, num_classes=CLASSES).eval(), weights)
    assert report.ok and report.fused == layout.startswith("fused")
    torch.testing.assert_close(model(_x()), ema(_x()), rtol=1e-4, atol=1e-4)


def test_raw_weights_on_request(files):
    paths, ref, _ = files
    for layout in ("model_ema.pth", "state_dict_ema.bin", "train.pth"):
        weights = read_weights(paths[layout], prefer_ema=False)
        assert not weights.ema
        assert all(torch.equal(weights.state[k], v) for k, v in ref.state_dict().items())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_timm_create_model_with_a_local_file(files, layout):
    paths, _, ema = files
    model = timm.create_model(NAME, pretrained=True, num_classes=CLASSES,
                              pretrained_cfg_overlay=dict(file=str(paths[layout]), num_classes=CLASSES)).eval()
    torch.testing.assert_close(model(_x()), ema(_x()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_create_model_from_weights_and_export_use_the_same_tensors(files, layout, tmp_path):
    from regla.cli import main

    paths, _, ema = files
    model_name = None if layout in ("meta.safetensors", "fused.safetensors", "train.pth") else NAME
    model, _, report = create_model_from_weights(paths[layout], model_name, fuse=True)
    torch.testing.assert_close(model(_x()), ema(_x()), rtol=1e-4, atol=1e-4)
    out = tmp_path / "m.pt"
    argv = ["export", NAME, "-f", "torchscript", "-c", str(paths[layout]), "-o", str(out), "--img-size", str(SIZE)]
    assert main(argv) == 0
    scripted = torch.jit.load(str(out))
    torch.testing.assert_close(scripted(_x()), ema(_x()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", [x for x in LAYOUTS if not x.startswith("fused")])
def test_train_initial_checkpoint_uses_the_same_tensors(files, layout):
    paths, _, ema = files
    model = timm.create_model(NAME, num_classes=CLASSES)
    load_weights(model, read_weights(str(paths[layout])).state, source=paths[layout])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.state_dict().items())


def test_fused_weights_cannot_start_training(files):
    paths, _, _ = files
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(timm.create_model(NAME, num_classes=CLASSES),
                     read_weights(str(paths["fused.safetensors"])).state, source="fused.safetensors")


def test_report_lists_loaded_missing_and_unused(files):
    paths, _, _ = files
    backbone = timm.create_model(NAME, num_classes=0)
    model, report = load_into(backbone, read_weights(paths["plain.pth"]), strict=False)
    assert report.unused and all(k.startswith("head") for k in report.unused)
    assert not report.missing and len(report.loaded) == len(backbone.state_dict())
    assert "unused" in report.summary()
    with pytest.raises(CheckpointError, match="unused"):
        load_into(timm.create_model(NAME, num_classes=0), read_weights(paths["plain.pth"]))


def test_errors_name_the_file_what_was_found_and_expected(files, tmp_path):
    paths, _, _ = files
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes.txt.*not a weights file.*expected"):
        read_weights(text)
    with pytest.raises(CheckpointError, match="is a folder"):
        read_weights(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        read_weights(tmp_path / "missing.pth")
    torch.save({"epoch": 3, "args": "x"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match=r"holds no tensors.*'args', 'epoch'"):
        read_weights(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="model='regla_t'.*'regla_s'"):
        create_model_from_weights(paths["meta.safetensors"], "regla_s")
    with pytest.raises(CheckpointError, match="10 classes"):
        create_model_from_weights(paths["plain.pth"], NAME, num_classes=10)


def test_metadata_round_trip(tmp_path):
    info = WeightsInfo(model=NAME, num_classes=2, class_names=["a", "b"], input_size=(3, 32, 32),
                       mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2), interpolation="bilinear", crop_pct=0.9,
                       distillation=False, fused=False)
    path = save_weights(tmp_path / "w.safetensors", {"x": torch.ones(2)}, info)
    assert read_weights(path).info == info
    assert json.loads(json.dumps(info.pretrained_cfg_overlay()))["crop_pct"] == 0.9


def test_eval_reads_every_layout_alike(files, tmp_path):
    from regla.cli import main

    paths, _, _ = files
    data = make_folder(tmp_path / "data", classes=CLASSES, train_per_class=1, val_per_class=3, size=SIZE)
    results = {}
    for layout in ("plain.pth", "model_ema.pth", "train.pth", "meta.safetensors", "fused.safetensors"):
        out = tmp_path / f"{layout}.json"
        argv = ["eval", "--data", str(data), "--checkpoint", str(paths[layout]), "--model", NAME,
                "--num-classes", str(CLASSES), "--img-size", str(SIZE), "--crop-pct", "1.0", "--workers", "0",
                "--device", "cpu", "--json", str(out)]
        assert main(argv) == 0, layout
        results[layout] = json.loads(out.read_text())
    losses = {k: round(v["val_loss"], 5) for k, v in results.items()}
    assert len(set(losses.values())) == 1, losses
