"""Export equivalence (ONNX Runtime / TorchScript vs PyTorch), Core ML conversion, checkpoints, ``regla export``."""

from __future__ import annotations

import pytest
import timm
import torch

import regla  # noqa: F401  (registers regla_* and repnext_*)
from regla.cli import main
from regla.deploy import CheckpointError, ExportError, create_fused_model, export_model, fuse

# one size of each family: ours first, then timm's peers
FAMILY_MODELS = ["regla_t", "repnext_m1", "repvit_m0_9", "iformer_t", "mobilenetv4_conv_small"]
OURS = ["regla_t", "repnext_m1"]
ATOL = 1e-4


def perturbed(name: str, seed: int = 0) -> torch.nn.Module:
    """An unfused model with every parameter randomly moved away from its init.

    Fresh models can have zero-initialised heads or tiny layer scales, whose near-zero logits would make any
    export look equivalent; perturbing gives logits of order one and a meaningful comparison.
    """
    model = timm.create_model(name, pretrained=False).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = max(float(p.std()) if p.numel() > 1 else 0.0, 0.1)
            p.add_(torch.randn(p.shape, generator=gen) * 0.1 * scale)
    return model


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_onnx_matches_torch_square_and_non_square(name, tmp_path):
    model = fuse(perturbed(name))
    with torch.inference_mode():
        scale = float(model(torch.randn(1, 3, 64, 64)).abs().max())
    assert scale > 1e-2, f"{name}: logits too small ({scale:g}) for a meaningful check"
    # export_model checks one file (dynamic axes) in ONNX Runtime at 1x3x64x64 and at 2x3x96x128 (non-square)
    result = export_model(model, "onnx", tmp_path / f"{name}.onnx", img_size=64, atol=ATOL)
    assert result.path.is_file()
    assert result.checked_shapes == [(1, 3, 64, 64), (2, 3, 96, 128)]
    assert result.max_abs_diff is not None and result.max_abs_diff <= ATOL * max(1.0, scale)


@pytest.mark.slow
@pytest.mark.parametrize("name", OURS)
def test_torchscript_and_coreml(name, tmp_path):
    model = fuse(perturbed(name))
    ts = export_model(model, "torchscript", tmp_path / f"{name}.pt", img_size=(96, 128))
    assert ts.max_abs_diff is not None and ts.max_abs_diff <= ATOL
    # the weights are saved in the layout the export timed faster, and load in it
    fmt = {"channels-last": torch.channels_last, "contiguous": torch.contiguous_format}[ts.layout]
    w = next(p for p in torch.jit.load(str(ts.path)).parameters() if p.ndim == 4 and min(p.shape[1:]) > 1)
    assert w.is_contiguous(memory_format=fmt)
    ml = export_model(model, "coreml", tmp_path / f"{name}.mlpackage", img_size=64)
    assert ml.path.is_dir() and (ml.path / "Manifest.json").is_file()


def test_checkpoint_roundtrip_safetensors_and_pth(tmp_path):
    from safetensors.torch import save_file

    model = perturbed("repvit_m0_9")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"model": state}, tmp_path / "w.pth")  # wrapped like a training checkpoint
    torch.save(fuse(perturbed("repvit_m0_9")).state_dict(), tmp_path / "fused.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = fuse(model)(x)
        for f in ("w.safetensors", "w.pth"):
            torch.testing.assert_close(create_fused_model("repvit_m0_9", tmp_path / f)(x), ref, rtol=1e-4,
                                       atol=1e-4)
        create_fused_model("repvit_m0_9", tmp_path / "fused.pth")  # fused-form checkpoints load too


def test_checkpoint_mismatch_names_keys(tmp_path):
    state = timm.create_model("repvit_m0_9").state_dict()
    dropped = next(iter(state))
    del state[dropped]
    state["head.head.l.weight"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        create_fused_model("repvit_m0_9", tmp_path / "bad.pth")
    msg = str(err.value)
    assert dropped in msg and "extra.weight" in msg and "head.head.l.weight" in msg
    with pytest.raises(CheckpointError, match="not found"):
        create_fused_model("repvit_m0_9", tmp_path / "missing.safetensors")


def test_verification_fails_loudly(tmp_path, monkeypatch):
    import regla.deploy.export as ex

    monkeypatch.setattr(ex, "_tolerance", lambda ref, atol: -1.0)  # nothing can pass
    with pytest.raises(ExportError, match="does not match PyTorch"):
        export_model("shvit_s1", "onnx", tmp_path / "m.onnx", img_size=64)
    assert not (tmp_path / "m.onnx").exists() and (tmp_path / "m.onnx.failed").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.failed"]  # no temporary left behind


def test_cli_export_and_errors(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "shvit_s1", "--format", "onnx", "--output", str(out), "--img-size", "64", "96"]) == 0
    assert out.is_file() and "max abs diff" in capsys.readouterr().out
    assert main(["export", "shvit_s11", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "did you mean: shvit_s1" in capsys.readouterr().err
    assert main(["export", "shvit_s1", "-o", str(tmp_path / "x.onnx"), "-c", str(tmp_path / "nope.pth")]) == 2
    assert "--checkpoint" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


# --- safe outputs: the folder rule, no clobbering, nothing left behind by a failure ---------------------------------

FAST = ["--img-size", "32", "--no-verify"]


def test_export_into_an_existing_folder_keeps_its_files(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "sentinel.txt").write_text("keep me")
    assert main(["export", "regla_t", "-o", str(folder), *FAST]) == 0, capsys.readouterr().err
    monkeypatch.chdir(folder)
    assert main(["export", "regla_t", "-f", "torchscript", "-o", ".", *FAST]) == 0  # `-o .` never empties "."
    for name in ("regla_t.onnx", "regla_t.pt"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 1000
    pkg = folder / "data.mlpackage"  # a folder named like a Core ML package, but not one: refused before work
    pkg.mkdir()
    assert main(["export", "regla_t", "-f", "coreml", "-o", str(pkg), *FAST]) == 2
    assert "not a Core ML package" in capsys.readouterr().err
    pkg.rmdir()
    assert (folder / "sentinel.txt").read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == ["regla_t.onnx", "regla_t.pt", "sentinel.txt"]


def test_export_refuses_to_replace_a_file_of_another_kind(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"a state dict, not a TorchScript archive")
    assert main(["export", "regla_t", "-f", "torchscript", "-o", str(weights), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and str(weights) in err
    assert weights.read_bytes() == b"a state dict, not a TorchScript archive"
    assert main(["export", "regla_t", "-o", str(weights), "-c", str(weights), *FAST]) == 2
    assert "is the --checkpoint file" in capsys.readouterr().err


@pytest.mark.parametrize("failure", ["crash", "enospc"])
def test_failed_export_leaves_nothing_at_the_name(tmp_path, capsys, monkeypatch, failure):
    import errno

    import regla.deploy.export as ex

    previous = tmp_path / "m.onnx"  # an earlier export: an ONNX model by content (a text file would be refused)
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(previous), dynamo=False)
    earlier = previous.read_bytes()

    def broken(model, x, path, dynamic, opset):
        path.write_bytes(b"half a model")  # the writer got some way before failing
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("exporter bug\nwith a second line\nand a third")

    monkeypatch.setattr(ex, "_export_onnx_legacy", broken)
    assert main(["export", "regla_t", "-o", str(previous), *FAST]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert ("no space left" in err and str(previous) in err) if failure == "enospc" else "ONNX export" in err
    assert previous.read_bytes() == earlier  # the old output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left


def test_num_classes_for_weights_without_metadata(tmp_path, capsys):
    from safetensors.torch import save_file

    state = timm.create_model("regla_t", num_classes=10).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "demo.safetensors"))
    argv = ["export", "regla_t", "-c", str(tmp_path / "demo.safetensors"), "-o", str(tmp_path), *FAST]
    assert main([*argv, "--num-classes", "5"]) == 2  # passed through to the model: a 5-class head does not fit
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "demo.safetensors" in err and not (tmp_path / "regla_t.onnx").exists()
    assert main([*argv, "--num-classes", "10"]) == 0
    import onnxruntime as ort

    out = ort.InferenceSession(str(tmp_path / "regla_t.onnx")).get_outputs()[0]
    assert out.shape[-1] == 10


def test_ort_session_stops_spinning_only_when_asked(tmp_path):
    """``spin=False`` (sessions timed in turn) sets ONNX Runtime's no-spinning entry; the default leaves it unset."""
    from regla.deploy.export import ort_session

    path = tmp_path / "conv.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False)
    key = "session.intra_op.allow_spinning"
    assert ort_session(path, 1, spin=False).get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(Exception, match="does not have configuration with key"):
        ort_session(path, 1).get_session_options().get_session_config_entry(key)
