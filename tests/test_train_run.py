"""A tiny finished run, then: its checkpoints and safetensors, bad checkpoints, `regla eval` against a direct
computation of top-1 (plain and fused, other resolution/crop), and `regla plot`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from regla.runs.checkpoint_sets import CheckpointError, load_checkpoint
from regla.runs.harness import RunError
from regla.train.trainer import train
from train_helpers import MODEL, SIZE, eval_args, make_folder, tiny_recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    data = make_folder(root / "data", classes=3, train_per_class=8, val_per_class=5)
    cfg = tiny_recipe(data, root / "out", epochs=2, model_ema=True, model_ema_decay=0.5)
    result = train(cfg, show_bar=False)
    return data, result, cfg


def test_run_writes_checkpoints_metrics_and_tensorboard(run):
    _, result, _ = run
    d = result.run_dir
    for name in ("last.pth", "best.pth", "last.safetensors", "best.safetensors", "metrics.csv", "metrics.jsonl",
                 "config.yaml"):
        assert (d / name).is_file(), name
    assert list((d / "tb").glob("events.out.tfevents.*"))
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["top1"] is not None and r["top1_ema"] is not None and r["lr"] > 0 for r in rows)
    assert len((d / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    ck = load_checkpoint(d / "last.pth")
    assert ck["epoch"] == 2 and ck["arch"]["model"] == MODEL and ck["model_ema"] is not None
    assert {"optimizer", "scheduler", "rng", "best", "class_map"} <= set(ck)


def test_safetensors_loads_with_timm_pretrained_cfg_overlay(run):
    import timm

    _, result, _ = run
    path = result.run_dir / "last.safetensors"
    model = timm.create_model(MODEL, pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=3))
    ema = load_checkpoint(result.run_dir / "last.pth")["model_ema"]
    own = model.state_dict()
    assert set(own) == set(ema)
    for k, v in ema.items():
        assert torch.equal(own[k], v), k


def test_new_run_refuses_to_overwrite_a_finished_run(run):
    data, result, cfg = run
    before = (result.run_dir / "last.pth").read_bytes()
    with pytest.raises(RunError, match="already holds a run"):
        train(cfg, show_bar=False)
    assert (result.run_dir / "last.pth").read_bytes() == before


def test_corrupt_checkpoint_is_reported_and_nothing_is_overwritten(run, tmp_path, capsys):
    from regla.cli import main

    data, result, _ = run
    bad = tmp_path / "bad"
    shutil.copytree(result.run_dir, bad, ignore=shutil.ignore_patterns("tb"))
    good = (bad / "last.pth").read_bytes()
    (bad / "last.pth").write_bytes(good[: len(good) // 2])  # truncated, as by a full disk
    (bad / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad / "last.pth")
    with pytest.raises(CheckpointError, match="not a weights file"):
        load_checkpoint(bad / "garbage.pth")
    best = (bad / "best.pth").read_bytes()
    assert main(["train", "--resume", str(bad), "--data", str(data)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert (bad / "best.pth").read_bytes() == best and not (bad / "metrics.jsonl.tmp").exists()
    assert main(["eval", "--data", str(data), "--checkpoint", str(bad / "last.pth")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_checkpoint_from_another_architecture_is_refused(run, tmp_path, capsys):
    from regla.checkpoints import load_weights
    from regla.cli import main
    from regla.train.modeling import create_student

    data, result, cfg = run
    before = (result.run_dir / "last.pth").read_bytes()
    other = "repvit_m0_9" if MODEL != "repvit_m0_9" else "regla_t"
    assert main(["train", "--resume", str(result.run_dir), "--model", other, "--set", "epochs=3"]) == 2
    err = capsys.readouterr().err
    assert f"trained as '{MODEL}'" in err and other in err
    assert (result.run_dir / "last.pth").read_bytes() == before
    foreign = create_student(cfg.replace(model=other), 3)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(foreign, load_checkpoint(result.run_dir / "last.pth")["model"], source="last.pth")
    assert main(["eval", "--data", str(data), "--checkpoint", str(result.run_dir / "last.pth"),
                 "--model", other]) == 2
    err = capsys.readouterr().err
    assert f"model='{MODEL}'" in err and other in err


def direct_top1(model: torch.nn.Module, val_dir: Path, class_map: dict, size: int, crop_pct: float) -> float:
    """Top-1 computed image by image, with timm's evaluation transform, outside `regla eval`."""
    from timm.data import create_transform

    tf = create_transform(size, is_training=False, crop_pct=crop_pct, interpolation="bicubic")
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for cls_dir in sorted(val_dir.iterdir()):
            for f in sorted(cls_dir.iterdir()):
                x = tf(Image.open(f).convert("RGB"))[None]
                correct += int(model(x).argmax(1).item() == class_map[cls_dir.name])
                total += 1
    return 100.0 * correct / total


@pytest.mark.parametrize("size,crop,fuse", [(SIZE, 1.0, False), (40, 0.9, True)])
def test_eval_matches_direct_top1(run, size, crop, fuse):
    import timm

    from regla.eval.cli import evaluate_cli

    data, result, _ = run
    ck = load_checkpoint(result.run_dir / "last.pth")
    model = timm.create_model(MODEL, num_classes=3)
    model.load_state_dict(ck["model_ema"])
    expected = direct_top1(model, data / "val", ck["class_map"], size, crop)
    kw = dict(img_size=size, crop_pct=crop) | ({"fuse": True} if fuse else {})
    m = evaluate_cli(eval_args(data, result.run_dir / "last.pth", **kw))
    assert m["n"] == 15 and m["img_s"] > 0 and m["fused"] is fuse
    assert m["top1"] == pytest.approx(expected, abs=1e-6)
    assert 0 <= m["top1"] <= m["top5"] <= 100
    model.load_state_dict(ck["model"])  # --no-ema evaluates the raw weights
    raw = evaluate_cli(eval_args(data, result.run_dir / "last.pth", img_size=size, crop_pct=crop, no_ema=True))
    assert raw["top1"] == pytest.approx(direct_top1(model, data / "val", ck["class_map"], size, crop), abs=1e-6)


def test_eval_of_a_safetensors_file_on_a_class_folder(run):
    from regla.eval.cli import evaluate_cli

    data, result, _ = run
    a = evaluate_cli(eval_args(data / "val", result.run_dir / "last.safetensors"))  # it records model and settings
    b = evaluate_cli(eval_args(data, result.run_dir / "last.pth"))
    keys = ("n", "top1", "top5", "model", "img_size", "crop_pct", "interpolation", "mean", "std")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys} and a["img_size"] == SIZE


def test_plot_draws_png(run, tmp_path):
    from regla.cli import main

    _, result, _ = run
    out = tmp_path / "curves.png"
    assert main(["plot", str(result.run_dir), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert main(["plot", str(tmp_path)]) == 2


def test_systems_options_run_together(tmp_path):
    """The GPU data path (prefetcher + FastCollateMixup), bf16 autocast, channels-last, gradient accumulation,
    gradient checkpointing, AGC clipping and a per-epoch schedule, in one short CPU run."""
    data = make_folder(tmp_path / "data", classes=2, train_per_class=8, val_per_class=2)
    cfg = tiny_recipe(data, tmp_path / "run", epochs=2, batch_size=4, grad_accum=2, prefetcher=True, mixup=0.8,
                      cutmix=1.0, reprob=0.25, aa="rand-m9-mstd0.5-inc1", amp=True, amp_dtype="bfloat16",
                      channels_last=True, grad_checkpointing=True, clip_grad=0.02, clip_mode="agc",
                      sched_on_updates=False, warmup_epochs=1, model_ema=True, deterministic=False)
    result = train(cfg, show_bar=False)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["train_loss"] == r["train_loss"] for r in rows)
    r = cfg.run
    assert rows[0]["lr"] == pytest.approx(r.warmup_lr)  # per-epoch schedule: the warm-up epoch ...
    assert rows[1]["lr"] == pytest.approx(r.min_lr + 0.5 * (r.lr - r.min_lr))  # ... mid-cosine


def test_eval_under_torchrun_counts_each_image_once(run, tmp_path):
    import os
    import subprocess
    import sys

    from regla.eval.cli import evaluate_cli
    from train_helpers import free_port

    data, result, _ = run
    single = evaluate_cli(eval_args(data, result.run_dir / "last.pth"))
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "regla.cli", "eval", "--data", str(data), "--checkpoint", str(result.run_dir / "last.pth"),
           "--device", "cpu", "--workers", "0", "--batch-size", "4", "--json", str(out)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    two = json.loads(out.read_text())
    assert two["processes"] == 2 and two["n"] == single["n"] == 15  # 15 images: 8 + 7, no padding
    assert two["top1"] == pytest.approx(single["top1"]) and two["top5"] == pytest.approx(single["top5"])


def test_eval_of_weights_saved_from_a_fused_model(run, tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm.utils import reparameterize_model

    data, result, _ = run
    model = timm.create_model(MODEL, num_classes=3)
    model.load_state_dict(load_checkpoint(result.run_dir / "last.pth")["model_ema"])
    fused = reparameterize_model(model)
    assert set(fused.state_dict()) != set(model.state_dict())  # fusion changes the parameter layout
    path = tmp_path / "fused.safetensors"
    save_file({k: v.contiguous() for k, v in fused.state_dict().items()}, str(path))
    from regla.eval.cli import evaluate_cli

    a = evaluate_cli(eval_args(data, path, model=MODEL, img_size=SIZE, crop_pct=1.0))
    b = evaluate_cli(eval_args(data, result.run_dir / "last.pth", fuse=True))
    assert a["fused"] and (a["n"], a["top1"], a["top5"]) == (b["n"], b["top1"], b["top5"])
