"""`regla eval` (regla.eval): weights read through regla.checkpoints with the settings and classes they record,
only readable images counted, transform errors told apart, and bad input refused before any work."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from train_helpers import MODEL, SIZE, eval_args, make_folder, tiny_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained run (100% on its 12 validation images at 32 px): its .pth, its .safetensors (with our
    metadata) and the same weights without any metadata."""
    from regla.checkpoints import read_weights, save_weights
    from regla.train.trainer import train

    root = tmp_path_factory.mktemp("eval")
    data = make_folder(root / "data", classes=3, train_per_class=8, val_per_class=4)
    result = train(tiny_recipe(data, root / "out", epochs=4, lr=1e-2, drop_path=0.0), show_bar=False)
    pth = result.run_dir / "best.pth"
    weights = read_weights(pth)
    with_meta = result.run_dir / "best.safetensors"  # regla train records model, classes and settings in it
    assert read_weights(with_meta).info.input_size == weights.info.input_size == (3, SIZE, SIZE)
    bare = save_weights(root / "bare.safetensors", weights.state)  # no model, classes or input size recorded
    return data, pth, with_meta, bare


def cli_argv(data: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["eval", "--data", str(data), "--checkpoint", str(ckpt), "--device", "cpu", "--workers", "0",
            "--batch-size", "4", *extra]


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """``regla.cli.main(argv)``'s exit code and what it wrote to stderr."""
    from regla.cli import main

    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The one line of the error message (progress-bar lines, which tqdm clears, aside)."""
    lines = [x for x in re.split(r"[\r\n]", err) if x.strip() and not x.startswith("eval:")]
    assert len(lines) == 1, err
    return lines[0]


SETTINGS = ("n", "top1", "top5", "img_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "classes")


def test_safetensors_with_metadata_evaluates_like_its_pth(trained, capsys):
    from regla.eval.cli import evaluate_cli

    data, pth, with_meta, bare = trained
    b = evaluate_cli(eval_args(data, pth))
    a = evaluate_cli(eval_args(data, with_meta))  # no --model: the file records it
    assert b["top1"] == 100.0 and b["img_size"] == SIZE and b["crop_pct"] == 1.0  # the run's own settings
    assert {k: a[k] for k in SETTINGS} == {k: b[k] for k in SETTINGS}
    assert a["model"] == MODEL and a["settings_from"]["input_size"] == "file" == a["settings_from"]["crop_pct"]
    # without metadata: the model's pretrained_cfg (regla_t: 224 px, crop 0.875), not the run's 32 px / crop 1.0
    c = evaluate_cli(eval_args(data, bare, model=MODEL))
    assert (c["img_size"], c["crop_pct"], c["settings_from"]["input_size"]) == (224, 0.875, "model")
    assert c["settings_from"]["crop_pct"] == "model"
    d = evaluate_cli(eval_args(data, bare, model=MODEL, img_size=SIZE, crop_pct=1.0))
    assert d["settings_from"]["input_size"] == "flag" and (d["n"], d["top1"]) == (b["n"], b["top1"])
    code, err = run_cli(capsys, cli_argv(data, bare))
    assert code == 2  # records no model and none given
    assert "--model" in one_line(err)


def test_layout_is_timed_on_cpu_or_as_asked_and_does_not_change_the_figures(trained, monkeypatch):
    """``--layout auto`` (default) keeps the faster layout of a timed trial; the figures are the same in each."""
    from regla.deploy import layout as layout_mod
    from regla.eval.cli import evaluate_cli

    data, pth, _, _ = trained
    fixed = {"contiguous": evaluate_cli(eval_args(data, pth, layout="contiguous")),
             "channels-last": evaluate_cli(eval_args(data, pth, channels_last=True))}
    assert {k: v["layout"] for k, v in fixed.items()} == {"contiguous": "contiguous", "channels-last": "channels-last"}
    assert fixed["contiguous"]["top1"] == fixed["channels-last"]["top1"]
    for winner in (False, True):  # whichever layout the trial finds faster is the one used
        monkeypatch.setattr(layout_mod, "layout_trials", lambda *a, w=winner, **k: {w: [1.0], not w: [2.0]})
        auto = evaluate_cli(eval_args(data, pth))
        assert auto["layout"] == ("channels-last" if winner else "contiguous")
        assert {k: auto[k] for k in SETTINGS} == {k: fixed["contiguous"][k] for k in SETTINGS}


def predicted(ckpt: Path, images: list[Path]) -> list[int]:
    """The model's class index for each image, with timm's eval transform at the run's settings."""
    from timm.data import create_transform

    from regla.checkpoints import create_model_from_weights

    model, _, _ = create_model_from_weights(ckpt)
    tf = create_transform(SIZE, is_training=False, crop_pct=1.0, interpolation="bicubic")
    with torch.no_grad():
        return [int(model(tf(Image.open(f).convert("RGB"))[None]).argmax(1)) for f in images]


def test_folder_classes_are_mapped_by_name(trained, tmp_path, capsys):
    from regla.eval.cli import evaluate_cli

    data, pth, with_meta, bare = trained
    sub = tmp_path / "sub"
    shutil.copytree(data / "val" / "class_2", sub / "class_2")  # one class of three: index 2, not 0
    hits = sum(p == 2 for p in predicted(pth, sorted((sub / "class_2").iterdir())))
    assert hits == 4  # the model knows class_2, so a folder-order mapping (class_2 -> 0) would score 0
    for ckpt in (pth, with_meta):
        m = evaluate_cli(eval_args(sub, ckpt))
        assert (m["n"], m["top1"], m["classes"]) == (4, 100.0 * hits / 4, 1)
    code, err = run_cli(capsys, cli_argv(sub, bare, "--model", MODEL))
    assert code == 2  # no names to match a subset by
    assert "record no class names" in one_line(err)
    (sub / "class_9").mkdir()
    shutil.copy(data / "val" / "class_0" / "000.png", sub / "class_9" / "000.png")
    code, err = run_cli(capsys, cli_argv(sub, with_meta))
    assert code == 2
    err = one_line(err)
    assert "not trained on: class_9" in err and "class_2" not in err.split("not trained on:")[1].split("(")[0]


def corrupt_copy(data: Path, root: Path) -> tuple[Path, list[Path], Path]:
    """A copy of ``data/val`` with 3 of its 12 images broken, and a copy without them."""
    bad, clean = root / "bad", root / "clean"
    shutil.copytree(data / "val", bad)
    shutil.copytree(data / "val", clean)
    broken = [bad / "class_0" / "001.png", bad / "class_1" / "000.png", bad / "class_2" / "003.png"]
    broken[0].write_bytes(b"this is not a png")
    png = broken[1].read_bytes()
    broken[1].write_bytes(png[: len(png) // 2])  # truncated
    broken[2].write_bytes(b"")
    for f in broken:
        (clean / f.relative_to(bad)).unlink()
    return bad, broken, clean


def test_unreadable_images_are_skipped_named_and_not_counted(trained, tmp_path, capsys):
    from regla.cli import main
    from regla.eval.cli import evaluate_cli

    data, pth, _, _ = trained
    bad, broken, clean = corrupt_copy(data, tmp_path)
    out = tmp_path / "res" / "eval.json"
    assert main(cli_argv(bad, pth, "--workers", "2", "--json", str(out))) == 0  # markers cross worker processes
    err = capsys.readouterr().err
    assert "skipped 3 unreadable" in err and all(str(f) in err for f in broken)
    res = json.loads(out.read_text())
    assert (res["n"], res["skipped"], res["skipped_files"]) == (9, 3, sorted(str(f) for f in broken))
    expected = evaluate_cli(eval_args(clean, pth))
    assert (res["top1"], res["top5"], res["val_loss"]) == pytest.approx(
        (expected["top1"], expected["top5"], expected["val_loss"]))
    assert not list(out.parent.glob("*.tmp"))  # written atomically
    code, err = run_cli(capsys, cli_argv(bad, pth, "--strict"))
    assert code == 2
    err = one_line(err)
    assert str(broken[0]) in err and "unreadable" in err and str(broken[1]) not in err


def test_transform_error_is_reported_as_such_with_the_image(trained, tmp_path, capsys, monkeypatch):
    import timm.data.loader


    data, pth, _, _ = trained
    make = timm.data.loader.create_transform

    def failing_on_8px(*args, **kwargs):
        tf = make(*args, **kwargs)

        def apply(img):
            if img.size == (8, 8):
                raise ValueError("cannot crop this")
            return tf(img)
        return apply

    monkeypatch.setattr(timm.data.loader, "create_transform", failing_on_8px)
    folder = tmp_path / "val"
    shutil.copytree(data / "val", folder)
    odd = folder / "class_1" / "002.png"
    Image.new("RGB", (8, 8)).save(odd)
    code, err = run_cli(capsys, cli_argv(folder, pth))
    assert code == 1
    err = one_line(err)
    assert "transform error" in err and str(odd) in err and "cannot crop this" in err and "unreadable" not in err


def test_shards_read_and_count_each_image_once(trained, tmp_path):
    from timm.data import create_dataset

    from regla.eval.samples import CountingBatches, build_loader, wrap_dataset

    data, _, _, _ = trained
    bad, broken, _ = corrupt_copy(data, tmp_path)
    config = dict(input_size=(3, SIZE, SIZE), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3,
                  crop_pct=1.0, crop_mode="center")
    seen, skipped = 0, []
    for rank in range(2):
        ds = wrap_dataset(create_dataset("", root=str(bad), search_split=False))
        batches = CountingBatches(build_loader(ds, config, batch_size=4, workers=0, device=torch.device("cpu"),
                                               rank=rank, world=2))
        seen += sum(len(t) for _, t in batches)
        skipped += list(batches.skipped)
    assert seen == 9 and sorted(skipped) == sorted(str(f) for f in broken)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("small"), classes=2, train_per_class=1, val_per_class=1)


def _no_gpu_device() -> str:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{n}" if n else "cuda"


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--batch-size", "-2"), ("--img-size", "0"),
                                        ("--crop-pct", "0"), ("--crop-pct", "1.5"), ("--workers", "-1"),
                                        ("--device", _no_gpu_device())])
def test_bad_flags_exit_2_naming_the_flag_before_any_work(small_folder, tmp_path, capsys, flag, value):

    argv = cli_argv(small_folder, tmp_path / "missing.pth") + [flag, value]  # the flag is checked before the path
    code, err = run_cli(capsys, argv)
    assert code == 2
    line = one_line(err)
    assert line.startswith("regla eval: error: ") and flag in line


def test_bad_checkpoint_paths_exit_2_in_one_line(small_folder, tmp_path, capsys):

    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    for path, expected in ((tmp_path / "missing.pth", "not found"), (tmp_path, "is a folder"),
                           (text, "not a weights file")):
        code, err = run_cli(capsys, cli_argv(small_folder, path))
        assert code == 2
        assert expected in one_line(err)
    code, err = run_cli(capsys, cli_argv(tmp_path / "no_data", text))
    assert code == 2
    assert "does not exist" in one_line(err)
