"""``regla sam predict`` and ``regla sam export``: outputs, the checks inside them, and the exit codes of bad input.

A tiny ReGLA-T-SAM at 256 px keeps this fast. The exported pair is run end to end in ONNX Runtime on an image with
a box prompt and compared with ``SamPredictor`` in PyTorch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from regla.cli import main
from regla.sam.build import build_sam, load_sam_weights

SMALL = ["--encoder", "regla_t_sam", "--img-size", "256"]


@pytest.fixture()
def image_file(tmp_path):
    rgb = np.full((120, 160, 3), 30, np.uint8)
    rgb[30:90, 40:120] = (220, 80, 60)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A whole-SAM weights file for ReGLA-T-SAM at 256 px (random, fixed), so that CLI runs are reproducible."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "regla_t_sam.pth"
    torch.save(build_sam("regla_t_sam", img_size=256).state_dict(), path)
    return path


def test_predict_writes_the_image_with_the_mask_drawn(image_file, weights_file, tmp_path, capsys):
    out = tmp_path / "drawn.png"
    rc = main(["sam", "predict", str(image_file), "--box", "40,30,120,90", "-o", str(out), "-c", str(weights_file),
               *SMALL])
    assert rc == 0
    drawn = np.asarray(Image.open(out).convert("RGB"))
    original = np.asarray(Image.open(image_file).convert("RGB"))
    assert drawn.shape == original.shape
    assert (drawn != original).any(axis=2).sum() > 0  # mask blended and/or the box outline drawn
    assert "mask of" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_predict_converts_grayscale_and_rgba_files(image_file, weights_file, tmp_path, mode):
    path = tmp_path / f"photo_{mode}.png"
    Image.open(image_file).convert(mode).save(path)
    rc = main(["sam", "predict", str(path), "--point", "60,50", "-o", str(tmp_path), "-c", str(weights_file), *SMALL])
    assert rc == 0
    assert np.asarray(Image.open(tmp_path / f"photo_{mode}_mask.png")).shape[:2] == (120, 160)


@pytest.mark.parametrize("args, message", [
    (["--box", "50,30,40,90"], "empty box"),
    (["--box", "200,130,300,200"], "outside the 160x120 image"),
    (["--point", "160,10"], "outside the 160x120 image"),
    (["--box", "1,2,3"], "--box expects 4"),
    ([], "give a prompt"),
    (["--point", "5,5", "--encoder", "regla_q_sam"], "--encoder 'regla_q_sam'"),
    (["--point", "5,5", "--img-size", "250"], "multiple of 16"),
    (["--point", "5,5", "-o", "x.jpg"], "expected a .png"),
    (["--point", "5,5", "-c", "missing.pth"], "missing.pth"),
])
def test_predict_refuses_bad_input_with_exit_2(image_file, args, message, capsys):
    assert main(["sam", "predict", str(image_file), *args]) == 2
    assert message in capsys.readouterr().err


def test_export_writes_two_checked_files_that_segment_as_pytorch_does(weights_file, tmp_path, capsys):
    from segment_anything import SamPredictor

    from regla.checkpoints import read_weights
    from regla.deploy.export import ort_session

    rc = main(["sam", "export", "-o", str(tmp_path), "-c", str(weights_file), "--name", "tiny", *SMALL])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "tiny_encoder.onnx" in printed and "tiny_decoder.onnx" in printed

    sam = build_sam("regla_t_sam", img_size=256)
    load_sam_weights(sam, read_weights(weights_file))
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    box = np.array([20.0, 15.0, 150.0, 100.0])
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(box=box, multimask_output=True)
    expected = masks[int(np.argmax(scores))]  # SamOnnxModel's choice for a box alone (SAM's ONNX notebook)

    resized = predictor.transform.apply_image(image)
    x = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float()).numpy()
    embedding = ort_session(tmp_path / "tiny_encoder.onnx").run(None, {"image": x})[0]
    np.testing.assert_allclose(embedding, predictor.features.numpy(), atol=1e-4, rtol=1e-4)
    coords = predictor.transform.apply_coords(box.reshape(1, 2, 2), image.shape[:2]).astype(np.float32)
    decoded = ort_session(tmp_path / "tiny_decoder.onnx").run(None, {
        "image_embeddings": embedding, "point_coords": coords, "point_labels": np.array([[2, 3]], np.float32),
        "mask_input": np.zeros((1, 1, 64, 64), np.float32), "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(image.shape[:2], np.float32)})
    masks_onnx = decoded[0][0, 0] > sam.mask_threshold
    assert masks_onnx.shape == (120, 200)
    assert (masks_onnx != expected).mean() < 1e-3  # equal up to pixels whose logit is ~0


def test_export_mismatch_is_a_failure_and_leaves_no_file(tmp_path, monkeypatch):
    from regla.deploy.export import ExportError
    from regla.sam import export as sam_export

    sam = build_sam("regla_t_sam", img_size=256)
    real = sam_export.ort_session

    def corrupted(path, threads=1):  # ONNX Runtime that returns something else than the exported graph
        sess = real(path, threads)

        class Wrong:
            def run(self, names, feeds):
                return [o + 1.0 for o in sess.run(names, feeds)]
        return Wrong()

    monkeypatch.setattr(sam_export, "ort_session", corrupted)
    with pytest.raises(ExportError, match="does not match PyTorch"):
        sam_export.export_decoder_onnx(sam, tmp_path / "d.onnx")
    assert not (tmp_path / "d.onnx").exists()


def test_bench_task_sam_times_encoders_and_decoder(tmp_path, capsys):
    rc = main(["bench", "--task", "sam", "--sam-encoders", "regla_t_sam", "regla_t_sam:stride1", "--resolutions", "64",
               "--rounds", "1", "--sam-eager", "-o", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "sam_results.json").read_text())
    assert doc["img_size"] == 64 and doc["threads"] == 1
    labels = [(r["label"], r["backend"]) for r in doc["results"]]
    assert labels == [("regla_t_sam:fuse", "ort"), ("regla_t_sam:fuse [eager]", "eager"),
                      ("regla_t_sam:stride1", "ort"), ("regla_t_sam:stride1 [eager]", "eager"), ("mask_decoder", "ort")]
    assert all(r["latency"]["median_ms"] > 0 and r["params"] > 0 for r in doc["results"])
    assert "| regla_t_sam:fuse | ort |" in capsys.readouterr().out
    assert (tmp_path / "sam_latency.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("spec, message", [("repvit_sam:fuse", "applies to regla_"), ("regla_q_sam", "unknown"),
                                           ("regla_m_sam:stride2", "applies to regla_")])
def test_bench_task_sam_refuses_unknown_encoders(tmp_path, spec, message, capsys):
    assert main(["bench", "--task", "sam", "--sam-encoders", spec, "-o", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_export_coreml_writes_the_encoder_package(tmp_path, capsys):
    pytest.importorskip("coremltools")
    rc = main(["sam", "export", "-o", str(tmp_path), "--coreml", "--name", "t", "--encoder", "regla_t_sam",
               "--img-size", "64"])
    assert rc == 0
    package = tmp_path / "t_encoder_64x64.mlpackage"
    assert (package / "Manifest.json").is_file() and (tmp_path / "t_encoder.onnx").is_file()
    assert "Core ML" in capsys.readouterr().out
