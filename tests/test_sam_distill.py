"""Decoupled distillation on the run harness: the teacher runs once (cached, sharded, resumable), the loss falls,
a stop and resume give the same weights, and the exported file is a whole SAM with the student's encoder.

A few generated 64 px images, a tiny random ReGLA-T-SAM as the teacher and another as the student keep it fast.
"""

from __future__ import annotations

import csv
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from regla.errors import Stopped, UsageError
from regla.runs import engine
from regla.runs.checkpoint_sets import load_checkpoint
from regla.runs.harness import run
from regla.sam.build import build_image_encoder, build_sam, load_sam_weights
from regla.sam.embedding_distill import SCHEMA, EmbeddingCache, SamDistillTask, list_images

SIZE = 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Six images in SA-1B's layout (sa_N.jpg + sa_N.json) and one PNG in a subfolder."""
    root = tmp_path_factory.mktemp("sa1b")
    rng = np.random.default_rng(0)
    for i in range(6):
        img = np.zeros((48, 64, 3), np.uint8) + rng.integers(0, 60, 3).astype(np.uint8)
        y, x = rng.integers(0, 30), rng.integers(0, 40)
        img[y:y + 16, x:x + 20] = rng.integers(100, 255, 3)
        Image.fromarray(img).save(root / f"sa_{i}.jpg")
        (root / f"sa_{i}.json").write_text("{}")
    (root / "more").mkdir()
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(root / "more" / "gray.png")
    return root


class CountingTeacher(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.encoder = build_image_encoder("regla_t_sam", SIZE).eval()
        self.img_size = SIZE
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.encoder(x)


def recipe(data, out, cache, **kw):
    values = {"data_dir": data, "output": out, "cache_dir": cache, "student": "regla_t_sam", "last_stage": "fuse",
              "teacher": "tiny", "img_size": SIZE, "shard_size": 3, "val_images": 2, "epochs": 3, "batch_size": 2,
              "workers": 0, "lr": 3e-3, **kw}
    return SCHEMA.build(None, [f"{k}={v}" for k, v in values.items()])


def test_images_of_sa1b_layout_and_plain_folders(data_dir):
    images = list_images(data_dir)
    assert [str(p) for p in images] == ["more/gray.png", *(f"sa_{i}.jpg" for i in range(6))]  # JSON skipped
    empty = data_dir.parent / "empty_folder"
    empty.mkdir(exist_ok=True)
    with pytest.raises(UsageError, match="no images"):
        list_images(empty)
    with pytest.raises(UsageError, match="not a folder"):
        list_images(data_dir / "sa_0.jpg")


def test_teacher_runs_once_loss_falls_and_the_export_is_a_whole_sam(data_dir, tmp_path):
    teacher = CountingTeacher()
    result = run(SamDistillTask(teacher), recipe(data_dir, tmp_path / "a", tmp_path / "cache"), show_bar=False)
    assert teacher.images == 7  # every image once
    rows = list(csv.DictReader(open(result.run_dir / "metrics.csv")))
    assert float(rows[-1]["train_mse"]) < float(rows[0]["train_mse"])  # it learns
    assert float(rows[-1]["val_mse"]) == pytest.approx(-float(rows[-1]["neg_mse"]))
    # a second run with the same cache: the teacher does not run again
    again = CountingTeacher()
    run(SamDistillTask(again), recipe(data_dir, tmp_path / "b", tmp_path / "cache", epochs=1), show_bar=False)
    assert again.images == 0
    # the exported weights are the student's encoder under image_encoder.*, loadable into a SAM
    exported = load_file(result.run_dir / "last.safetensors")
    assert all(k.startswith("image_encoder.") for k in exported)
    sam = build_sam("regla_t_sam", SIZE, last_stage="fuse")
    report = load_sam_weights(sam, exported, strict=False)
    assert not report.unused and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in report.missing)


def test_a_killed_fill_resumes_with_the_missing_shards_only(data_dir, tmp_path):
    images = list_images(data_dir)
    cache = EmbeddingCache(tmp_path / "c", data_dir, images, "tiny", SIZE, shard_size=3)
    teacher = CountingTeacher()
    assert cache.fill(teacher, torch.device("cpu")) == 7 and cache.num_shards == 3
    first = cache.get(4).clone()
    cache.shard_path(1).unlink()  # as if killed while writing shard 1
    again = EmbeddingCache(tmp_path / "c", data_dir, images, "tiny", SIZE, shard_size=3)
    assert again.missing_shards() == [1]
    assert again.fill(teacher, torch.device("cpu")) == 3
    torch.testing.assert_close(again.get(4), first)
    with pytest.raises(UsageError, match="another teacher 'tiny'"):
        EmbeddingCache(tmp_path / "c", data_dir, images, "sam_vit_h", SIZE, shard_size=3)
    with pytest.raises(UsageError, match="another image list"):
        EmbeddingCache(tmp_path / "c", data_dir, images[:-1], "tiny", SIZE, shard_size=3)


def test_stop_and_resume_give_the_same_weights(data_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    full = run(SamDistillTask(CountingTeacher()), recipe(data_dir, tmp_path / "full", cache, epochs=2),
               show_bar=False)
    real, calls = engine.forward_loss, [0]

    def stop_at_fifth(ctx, batch):
        calls[0] += 1
        if calls[0] == 5:  # epoch 2 (3 batches an epoch), second batch
            os.kill(os.getpid(), signal.SIGTERM)
        return real(ctx, batch)

    monkeypatch.setattr(engine, "forward_loss", stop_at_fifth)
    with pytest.raises(Stopped, match="regla sam distill --resume"):
        run(SamDistillTask(CountingTeacher()), recipe(data_dir, tmp_path / "cut", cache, epochs=2), show_bar=False)
    monkeypatch.setattr(engine, "forward_loss", real)
    resumed = run(SamDistillTask(CountingTeacher()), recipe(data_dir, tmp_path / "cut", cache, epochs=2),
                  resume=tmp_path / "cut", show_bar=False)
    a, b = load_checkpoint(full.run_dir / "last.pth"), load_checkpoint(resumed.run_dir / "last.pth")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_cli_checks_the_recipe_before_work(data_dir, tmp_path, capsys):
    from regla.cli import main

    assert main(["sam", "distill", "--student", "regla_t_sam"]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert main(["sam", "distill", "--data", str(data_dir), "--teacher", "sam_vit_q", "-o", str(tmp_path)]) == 2
    assert "teacher 'sam_vit_q'" in capsys.readouterr().err
    assert main(["sam", "distill", "--data", str(data_dir), "--teacher-checkpoint", "nope.pth"]) == 2
    assert "nope.pth" in capsys.readouterr().err
    assert main(["sam", "distill", "--data", str(data_dir), "--print-config", "--set", "epochs=3"]) == 0
    printed = capsys.readouterr().out
    assert "epochs: 3" in printed and "teacher: sam_vit_h" in printed and "img_size: 1024" in printed


def test_cli_runs_a_distillation_end_to_end(data_dir, tmp_path, capsys):
    from regla.cli import main

    out = tmp_path / "run"
    rc = main(["sam", "distill", "--data", str(data_dir), "--teacher", "regla_t_sam", "--student", "regla_t_sam",
               "--img-size", "64", "--cache", str(tmp_path / "cache"), "-o", str(out), "--no-progress",
               "--set", "epochs=1", "--set", "batch_size=2", "--set", "workers=0", "--set", "val_images=2"])
    assert rc == 0
    assert "held-out MSE" in capsys.readouterr().out
    assert (out / "last.safetensors").is_file() and (tmp_path / "cache" / "manifest.json").is_file()
