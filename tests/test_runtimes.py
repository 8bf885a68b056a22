"""The runtimes of issue 10: ONNX Runtime int8, torch.compile, ExecuTorch fp32/int8, in export and in bench.

Small models (a ReGLA, a RepNeXt and a timm peer, RepViT, cut to one block per stage) keep lowering and compiling
fast; every check compares the runtime's output with the fp32 PyTorch model on the same inputs. No timing
thresholds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import regla  # noqa: F401  (registers regla_* and repnext_*)
from regla import checkpoints
from regla.cli import main
from regla.deploy import fuse
from regla.deploy.calib import ImageSet, agreement, calibration_set, check_folder, check_set
from regla.errors import UsageError

#: one small model per family, 10 classes
TINY = {
    "regla_t": dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 4, 3), attn_groups=(0, 0, 1, 1), head_hidden_size=64),
    "repnext_m1": dict(embed_dim=(16, 32, 64, 128), depth=(1, 1, 1, 1)),
    "repvit_m0_9": dict(embed_dim=(16, 32, 64, 128), depth=(1, 1, 1, 1)),
}
SQUARE, NON_SQUARE = (64, 64), (64, 96)
#: int8 vs fp32 on the generated images, for these perturbed small models (measured margins are wide: see the test)
INT8_MIN_COSINE = 0.97


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """A fused small ``name`` with every parameter moved away from its init (logits of order one, no ties)."""
    model = timm.create_model(name, num_classes=10, **TINY[name]).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = max(float(p.std()) if p.numel() > 1 else 0.0, 0.1)
            p.add_(torch.randn(p.shape, generator=gen) * 0.3 * scale)
    return fuse(model)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """24 generated images (smooth colour gradients with blobs and noise) in two class folders, plus a stray file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:40] / 48.0
    for i in range(24):
        folder = root / f"class{i % 2}"
        folder.mkdir(exist_ok=True)
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(0.01, 0.05))
        img = np.stack([yy * rng.uniform(0, 1), xx * rng.uniform(0, 1), blob], -1) + rng.normal(0, 0.05, (48, 40, 3))
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_calibration_folder_checks(tmp_path, image_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no image file"):
        check_folder(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match="1 image file.*none readable"):
        check_folder(broken, "--calib")
    with pytest.raises(UsageError, match="does not exist"):
        check_folder(tmp_path / "missing")
    cal = calibration_set(image_folder, NON_SQUARE, limit=8)
    assert cal.images.shape == (8, 3, *NON_SQUARE) and cal.images.dtype == np.float32
    assert {f.parent.name for f in cal.files} == {"class0", "class1"}  # spread over the folder, not the first 8
    chk = check_set(image_folder, NON_SQUARE, exclude=cal.files)
    assert len(chk) == 16 and not set(chk.files) & set(cal.files)


def test_agreement_statistics():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    assert agreement(ref, ref)["top1_agreement"] == 1.0 and agreement(ref, 2 * ref)["cosine_min"] == pytest.approx(1.0)
    out = ref.copy()
    out[0] = [0.0, 1.0, 0.0]  # image 0 now disagrees and is orthogonal to its reference
    a = agreement(ref, out)
    assert a["top1_agreement"] == 0.75 and a["cosine_min"] == pytest.approx(0.0) and a["images"] == 4
    assert a["cosine_mean"] == pytest.approx(0.75)


def test_export_with_unreadable_calib_folder_is_exit_2_before_building(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(checkpoints, "create_fused_model", never)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    argv = ["export", "regla_t", "--int8", "--calib", str(tmp_path / "empty"), "-o", str(tmp_path / "m.onnx")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--calib" in err and "no image file" in err
    assert main(["export", "regla_t", "--format", "torchscript", "--int8", "-o", str(tmp_path / "m.pt")]) == 2
    assert "--int8 goes with --format onnx or executorch" in capsys.readouterr().err
    assert not list(tmp_path.glob("m.*"))


@pytest.mark.parametrize("name", list(TINY))
def test_onnx_int8_roundtrip(name, tmp_path, image_folder):
    from regla.deploy import export_model
    from regla.deploy.export import ort_session

    model = tiny(name)
    res = export_model(model, "onnx", tmp_path / f"{name}_int8.onnx", img_size=SQUARE, int8=True,
                       calib=image_folder, calib_images=8)
    assert res.path.is_file() and res.int8
    doc = json.loads(res.agreement_path.read_text())
    assert res.agreement_path.name == f"{name}_int8.onnx.agreement.json" and doc["images"] == 16
    assert doc["calibration_images"] == 8 and doc["cosine_mean"] >= INT8_MIN_COSINE, doc
    ops = {n.op_type for n in __import__("onnx").load(str(res.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantized (QDQ)
    # the int8 file keeps dynamic axes: run it at the non-square size too, against fp32 PyTorch
    images = check_set(image_folder, NON_SQUARE)
    with torch.inference_mode():
        ref = model(torch.from_numpy(images.images)).numpy()
    out = ort_session(res.path).run(None, {"input": images.images})[0]
    assert agreement(ref, out)["cosine_mean"] >= INT8_MIN_COSINE


@pytest.mark.slow
@pytest.mark.parametrize("name,hw", [("regla_t", NON_SQUARE), ("repnext_m1", NON_SQUARE), ("repvit_m0_9", SQUARE)])
def test_executorch_roundtrip(name, hw):
    """Each family lowered and run by ExecuTorch's runtime (~10 s a lowering: one size per family here; ReGLA's
    square program is the int8 export test's)."""
    from regla.deploy.executorch import lower, runner

    model = tiny(name)
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    lowered = lower(model, x[:1])
    assert lowered.partitions >= 1  # XNNPACK took part of the graph
    out = runner(lowered.buffer)(x.numpy())  # two images through the batch-1 program
    with torch.inference_mode():
        ref = model(x).numpy()
    assert out.shape == ref.shape and np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.slow
def test_executorch_int8_export_command(tmp_path, image_folder, capsys):
    """``regla export --format executorch --int8`` of a ReGLA: program, agreement JSON, printed figures."""
    from regla.deploy import export_model

    model = tiny("regla_t")
    res = export_model(model, "executorch", tmp_path, img_size=SQUARE, int8=True, calib=image_folder,
                       calib_images=8)
    assert res.path.name == "regla_64x64_int8.pte" and res.path.is_file()
    doc = json.loads(res.agreement_path.read_text())
    assert doc["img_size"] == [64, 64] and doc["int8"] and doc["cosine_mean"] >= INT8_MIN_COSINE, doc
    assert doc["images"] == 16 and doc["top1_agreement"] >= 0.75, doc


@pytest.mark.slow
def test_compile_matches_eager():
    from regla.deploy.compiled import compile_for

    for name, hw in (("regla_t", NON_SQUARE), ("repvit_m0_9", SQUARE)):  # ~25 s a compile: one size per model
        model = tiny(name)
        x = torch.randn(1, 3, *hw)
        compiled, seconds = compile_for(model, x)
        with torch.inference_mode():
            assert torch.allclose(compiled(x), model(x), atol=1e-4, rtol=1e-4) and seconds > 0


def test_compile_freezes_weights_and_prepacks_convolutions():
    """inductor's freezing is on: the convolutions' weights are pre-packed for oneDNN and the ReLU fused into them
    (with ``torch.compile(options={"freezing": True})`` torch 2.15 froze nothing and both counters stayed 0)."""
    from torch._dynamo.utils import counters

    from regla.deploy.compiled import compile_for

    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not in this torch build")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 5, padding=2, groups=8)).eval()
    x = torch.randn(1, 3, 16, 16)
    counters.clear()
    compiled, _ = compile_for(model, x)
    assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] == 2, dict(counters["inductor"])
    assert counters["inductor"]["mkldnn_unary_fusion_matcher_count"] >= 1, dict(counters["inductor"])
    with torch.inference_mode():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


class Unlowerable(torch.nn.Module):
    """Data-dependent control flow: torch.export (and so ExecuTorch) refuses it; eager runs it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # a Python branch on a tensor's value
            y = y * 2
        return y.mean((2, 3))


def test_bench_reports_a_model_a_backend_cannot_lower_and_goes_on(tmp_path):
    from regla.bench.report import summary_table, text_table
    from regla.bench.runner import BenchConfig, ModelResult, measure_resolution, result_to_json

    cfg = BenchConfig(models=["unlowerable", "small"], resolutions=[64], threads=1, warmup=1, min_runs=2,
                      max_runs=2, rounds=1, memory=False, backends=("eager", "executorch"))
    small = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    prepared = {"unlowerable": (Unlowerable().eval(), {}), "small": (small, {})}
    results = {n: ModelResult(name=n, label=n, family=n, params=1) for n in prepared}
    measure_resolution(64, prepared, results, cfg)
    bad, good = results["unlowerable"], results["small"]
    assert "executorch" in bad.backend_errors and "at 64px" in bad.backend_errors["executorch"]
    assert "ExecuTorch" in bad.backend_errors["executorch"]  # names the runtime that refused it
    assert bad.latency["eager"][64]["n"] == 2 and "executorch" not in bad.latency  # the other backend still ran
    assert good.latency["executorch"][64]["median_ms"] > 0 and not good.backend_errors
    doc = {"config": {"resolutions": [64], "backends": list(cfg.backends)}, "machine": {"threads": 1},
           "results": [result_to_json(r) for r in results.values()]}
    table = text_table(doc)
    assert "failed [1]" in table and "[1] unlowerable, executorch: at 64px: ExecuTorchError" in table
    assert "- [1] unlowerable, executorch" in summary_table(doc)


def test_bench_backend_choices_match_the_runner():
    from regla.bench.backends import BACKENDS
    from regla.bench.cli import BACKEND_CHOICES

    assert BACKEND_CHOICES == BACKENDS


def test_image_set_batches():
    images = ImageSet(np.zeros((5, 3, 8, 8), np.float32), [])
    assert [b.shape[0] for b in images.batches(2)] == [2, 2, 1]


def test_layout_trials_time_both_layouts_and_apply_layout_converts():
    from regla.deploy.layout import apply_layout, faster, layout_trials

    model = tiny("regla_t")
    trials = layout_trials(model, (1, 3, *SQUARE), runs=2)
    assert set(trials) == {False, True} and all(len(t) == 2 and min(t) > 0 for t in trials.values())
    assert faster({False: [2.0, 2.0], True: [1.0, 2.5]}) is True and faster({False: [1.0], True: [1.0]}) is False
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert apply_layout(model, "channels-last", (1, 3, *SQUARE)) is True
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert apply_layout(model, "contiguous", (1, 3, *SQUARE)) is False and conv.weight.is_contiguous()
    with pytest.raises(ValueError, match="layout must be one of"):
        apply_layout(model, "nhwc", (1, 3, *SQUARE))
