"""Nothing silently wrong, nothing lost (issue 20b): run folders, locks, outputs, caches and checks of meaning.

Each test is one case of the "silent wrong results and lost files" list: the user's files survive (sentinels), a
refusal exits 2 with one line before any model is built (the work is replaced by a tripwire, as in
``test_bad_input.py``), a second live run on a folder is refused naming the first, the SAM teacher cache follows the
teacher's weights, ``det eval`` matches classes by name, and settings that mean nothing are refused.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from regla.cli import main
from regla.dense import cli_det, cli_seg
from regla.dense import evaluate as dense_evaluate
from regla.deploy import export
from regla.errors import UsageError
from regla.eval import knn, loop
from regla.runs import cli_plot, harness
from regla.sam import build as sam_build
from regla.train import trainer

DENSE_CLI = {"det": cli_det, "seg": cli_seg}
SENTINEL = "# the user's own recipe: it must survive\nepochs: 2\nwarmup_epochs: 1\n"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """A two-class image folder (data/train, data/val) and an image."""
    root = tmp_path_factory.mktemp("lost")
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / "data" / split / cls).mkdir(parents=True)
            Image.new("RGB", (32, 32), (255, 0, 0) if cls == "a" else (0, 0, 255)).save(
                root / "data" / split / cls / "0.png")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(root / "photo.png")
    # a one-image val set of each kind over photo.png: the COCO file, and an ADE-style label map
    (root / "val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "photo.png", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
                         "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}],
        "categories": [{"id": 1, "name": "thing"}]}))
    for sub in ("seg_images", "seg_labels"):
        (root / sub).mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(root / "seg_images" / "photo.png")
    Image.new("L", (40, 30), 1).save(root / "seg_labels" / "photo.png")
    import timm
    from safetensors.torch import save_file

    state = timm.create_model("regla_t", num_classes=2).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "w.safetensors"))
    return root


TRAIN = ["train", "--model", "regla_t", "--device", "cpu"]
DISTILL = ["distill", "--model", "regla_t", "--device", "cpu"]


# --- run folders: the user's files are never replaced ----------------------------------------------------------

def test_distill_refuses_a_folder_holding_the_users_recipe(folders, tmp_path, refused, tripwire):
    """``mkdir exp1; cp recipe.yaml exp1/config.yaml; regla distill -c exp1/config.yaml --output exp1``."""
    tripwire((harness, "run"))
    exp = tmp_path / "exp1"
    exp.mkdir()
    (exp / "config.yaml").write_text(SENTINEL)
    refused([*DISTILL, "--data", str(folders / "data"), "-c", str(exp / "config.yaml"), "--output", str(exp)],
            "holds files no run wrote there (config.yaml)")
    assert (exp / "config.yaml").read_text() == SENTINEL


def test_train_refuses_a_folder_holding_the_users_metrics(folders, tmp_path, refused, tripwire):
    tripwire((trainer, "train"), (harness, "run"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch,mine\n1,2\n")
    refused([*TRAIN, "--data", str(folders / "data"), "--output", str(out)], "metrics.csv")
    assert (out / "metrics.csv").read_text() == "epoch,mine\n1,2\n"


def test_the_harness_itself_refuses_the_users_files(tmp_path):
    """Programmatic callers of the harness get the same rule (not only the command line)."""
    from regla.runs.harness import run
    from test_runs import Regression, recipe

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds files no run wrote there \\(notes.txt\\)"):
        run(Regression(), recipe(tmp_path / "run"), show_bar=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


def test_a_run_folder_is_reused_only_by_its_own_command(tmp_path):
    """A run folder left without a checkpoint may be reused by the command that made it; a resume must be of the
    command that made the folder."""
    from regla.runs.folder import LOCK, RunLock, check_run_dir

    run_dir = tmp_path / "run"
    with RunLock(run_dir, "regla det train"):
        pass
    (run_dir / "config.yaml").write_text("epochs: 1\n")  # as the run wrote it
    check_run_dir(run_dir, "regla det train", resume=False)
    with pytest.raises(UsageError, match="is a run folder of regla det train, not of regla seg train"):
        check_run_dir(run_dir, "regla seg train", resume=True)
    (run_dir / LOCK).unlink()  # a folder no run locked: its config.yaml is the user's
    with pytest.raises(UsageError, match="holds files no run wrote"):
        check_run_dir(run_dir, "regla det train", resume=False)


# --- two runs on one folder ------------------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys, time
    from regla.runs.folder import RunLock
    with RunLock(sys.argv[1], "regla train"):
        print("held", flush=True)
        time.sleep(120)
""")


def test_a_second_run_on_a_live_runs_folder_is_refused_naming_it(folders, tmp_path, refused, tripwire):
    tripwire((trainer, "train"), (harness, "run"))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = refused([*TRAIN, "--data", str(folders / "data"), "--output", str(out)],
                       f"is in use by another run: process {holder.pid} (regla train)")
        assert "wait for that run to end" in line
    finally:
        holder.kill()
        holder.wait()
    from regla.runs.folder import check_run_dir

    check_run_dir(out, "regla train", resume=False)  # a dead process holds nothing


def test_the_harness_holds_the_lock_for_the_runs_life(tmp_path):
    """A run started while another (here: this process, through a second lock) holds the folder is refused before
    it writes anything; the lock of a finished run is released."""
    from regla.runs.folder import RunLock
    from regla.runs.harness import run
    from test_runs import Regression, recipe

    with RunLock(tmp_path / "run", "regla toy"), pytest.raises(UsageError, match=f"process {os.getpid()}"):
        run(Regression(), recipe(tmp_path / "run"), show_bar=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".regla-run.lock"]
    result = run(Regression(), recipe(tmp_path / "run", epochs=1), show_bar=False)
    assert (result.run_dir / "last.pth").is_file()
    with RunLock(result.run_dir, "regla toy"):  # released when the run ended
        pass


# --- det / seg eval: --output and the reports beside the weights ------------------------------------------------

def _weights_with_recipe(folder: Path, kind: str, data: Path, **recipe) -> Path:
    """A (never read) weights file with a recipe beside it (val set included): enough for the checks made before
    the model is built."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "best.safetensors").write_bytes(b"not read before the output is checked")
    base = {"backbone": "regla_t", "device": "cpu"}
    if kind == "seg":
        base.update(num_classes=21, crop_size=128, val_images=str(data / "seg_images"),
                    val_labels=str(data / "seg_labels"))
    else:
        base.update(val_images=str(data), val_ann=str(data / "val.json"))
    (folder / "config.yaml").write_text(yaml.safe_dump({**base, **recipe}))
    return folder / "best.safetensors"


@pytest.mark.parametrize("kind", ["det", "seg"])
def test_eval_output_naming_a_file_is_refused_before_the_model(kind, folders, tmp_path, refused, tripwire):
    tripwire((DENSE_CLI[kind], "_trained_model"))
    weights = _weights_with_recipe(tmp_path / "run", kind, folders)
    (tmp_path / "taken.json").write_text("{}")
    refused([kind, "eval", "--weights", str(weights), "--output", str(tmp_path / "taken.json")],
            f"--output {tmp_path / 'taken.json'}: is a file; expected a folder for")
    assert (tmp_path / "taken.json").read_text() == "{}"


@pytest.mark.parametrize(("kind", "name"), [("det", "results.json"), ("det", "scores.json"), ("seg", "scores.json")])
def test_eval_never_replaces_a_report_it_did_not_write(kind, name, folders, tmp_path, refused, tripwire):
    """A ``regla bench`` folder's ``results.json`` (beside the weights, or in ``--output``) survives ``det eval``."""
    tripwire((DENSE_CLI[kind], "_trained_model"))
    weights = _weights_with_recipe(tmp_path / "run", kind, folders)
    bench = json.dumps({"machine": {}, "results": []})
    for folder, extra in ((tmp_path / "run", []), (tmp_path / "out", ["--output", str(tmp_path / "out")])):
        folder.mkdir(exist_ok=True)
        (folder / name).write_text(bench)
        refused([kind, "eval", "--weights", str(weights), *extra],
                f"{folder / name} exists and is not a report of regla {kind} eval")
        assert (folder / name).read_text() == bench


def test_eval_reports_are_replaced_by_the_next_eval_only_while_unchanged(tmp_path):
    """``scores.json`` names its writer and the SHA-256 of ``results.json``: a rerun replaces both; an edited
    ``results.json`` is the user's and is kept."""
    from argparse import Namespace

    from regla.dense.commands import eval_outputs, write_reports

    args = Namespace(output=str(tmp_path), weights=str(tmp_path / "w.pth"))
    files, writer = ("results.json", "scores.json"), "regla det eval"
    assert eval_outputs(args, files, writer) == tmp_path
    write_reports(tmp_path, writer, {"bbox_AP": 1.0}, {"results.json": "[]"})
    assert json.loads((tmp_path / "scores.json").read_text())["written_by"] == writer
    eval_outputs(args, files, writer)  # ours: may be replaced
    (tmp_path / "results.json").write_text('[{"image_id": 1}]')
    with pytest.raises(UsageError, match="results.json exists and is not a report of regla det eval"):
        eval_outputs(args, files, writer)
    with pytest.raises(UsageError, match="is not a report of regla seg eval"):
        eval_outputs(args, ("scores.json",), "regla seg eval")


# --- predict: never the input, never a file of another kind -----------------------------------------------------

@pytest.mark.parametrize("kind", ["det", "seg"])
def test_dense_predict_refuses_to_write_over_its_input_image(kind, folders, tmp_path, refused, tripwire):
    tripwire((DENSE_CLI[kind], "_trained_model"))
    weights = _weights_with_recipe(tmp_path / "run", kind, folders)
    image = tmp_path / "photo.png"
    image.write_bytes((folders / "photo.png").read_bytes())
    refused([kind, "predict", str(image), "--weights", str(weights), "--output", str(image)],
            "is an input of this command")
    assert image.read_bytes() == (folders / "photo.png").read_bytes()
    other = tmp_path / "mine.png"
    other.write_bytes((folders / "photo.png").read_bytes())  # a PNG regla did not draw
    refused([kind, "predict", str(image), "--weights", str(weights), "--output", str(other)],
            f"is not a PNG drawn by regla {kind} predict")


def test_sam_predict_refuses_to_write_over_its_input_image(folders, tmp_path, refused, tripwire):
    tripwire((sam_build, "build_sam"))
    image = tmp_path / "photo.png"
    image.write_bytes((folders / "photo.png").read_bytes())
    refused(["sam", "predict", str(image), "--box", "2,2,20,20", "-e", "regla_t_sam", "--img-size", "64",
             "-o", str(image)], "is an input of this command")
    assert image.read_bytes() == (folders / "photo.png").read_bytes()


def test_a_png_drawn_by_regla_is_known_by_content(tmp_path):
    from regla.dense.predict import write_png
    from regla.outputs import png_written_by

    write_png(torch.zeros(3, 4, 5, dtype=torch.uint8), tmp_path / "a.png", "regla det predict")
    assert png_written_by(tmp_path / "a.png", "regla det predict")
    assert not png_written_by(tmp_path / "a.png", "regla seg predict")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    (tmp_path / "c.png").write_text("text")
    assert not png_written_by(tmp_path / "b.png") and not png_written_by(tmp_path / "c.png")


# --- export: kind by content, side files, names inside -o -------------------------------------------------------

def test_export_refuses_a_text_file_named_onnx(tmp_path, refused, tripwire):
    tripwire((export, "export_model"))
    (tmp_path / "x.onnx").write_text("my notes, not a model\n")
    refused(["export", "regla_t", "-o", str(tmp_path / "x.onnx")], "exists (a file of another kind)")
    assert (tmp_path / "x.onnx").read_text() == "my notes, not a model\n"


@pytest.mark.parametrize("side", [".failed", ".agreement.json"])
def test_export_never_replaces_a_side_file_it_did_not_write(side, tmp_path, refused, tripwire):
    tripwire((export, "export_model"))
    (tmp_path / f"m.onnx{side}").write_text("{}")
    refused(["export", "regla_t", "-o", str(tmp_path / "m.onnx")], f"m.onnx{side} exists and is not")
    assert (tmp_path / f"m.onnx{side}").read_text() == "{}"


def test_export_file_kinds_are_read_from_content(tmp_path):
    from regla.deploy.files import is_agreement, is_onnx, is_pte

    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(onnx_path), dynamo=False)
    (tmp_path / "t.onnx").write_text("text")
    assert is_onnx(onnx_path) and not is_onnx(tmp_path / "t.onnx")
    (tmp_path / "p.pte").write_bytes(b"\x1c\x00\x00\x00ET12" + bytes(24))
    assert is_pte(tmp_path / "p.pte") and not is_pte(tmp_path / "t.onnx")
    (tmp_path / "a.json").write_text(json.dumps({"written_by": "regla export", "top1_agreement": 1.0}))
    assert is_agreement(tmp_path / "a.json") and not is_agreement(tmp_path / "t.onnx")


def test_sam_export_keeps_its_files_inside_the_output_folder(tmp_path, refused, tripwire):
    tripwire((sam_build, "build_sam"))
    out = tmp_path / "out"
    refused(["sam", "export", "-e", "regla_t_sam", "--img-size", "64", "-o", str(out), "--name", "../x"],
            "--name '../x': expected a plain file name stem")
    out.mkdir()
    (out / "x_encoder.onnx").write_text("not a model")
    refused(["sam", "export", "-e", "regla_t_sam", "--img-size", "64", "-o", str(out), "--name", "x"],
            "x_encoder.onnx exists and is not an ONNX model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- the SAM teacher cache follows the teacher's weights; same seed, same student, cache or not -----------------

@pytest.fixture(scope="module")
def sam_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sam_images")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / f"sa_{i}.jpg")
    return root


def _sam_recipe(data, out, **kw):
    from regla.sam.embedding_distill import SCHEMA

    values = {"data_dir": data, "output": out, "student": "regla_t_sam", "last_stage": "fuse", "teacher": "tiny",
              "img_size": 64, "shard_size": 2, "val_images": 1, "epochs": 1, "batch_size": 2, "workers": 0,
              "lr": 3e-3, **kw}
    return SCHEMA.build(None, [f"{k}={v}" for k, v in values.items()])


def _teacher(seed: int) -> torch.nn.Module:
    from regla.sam.build import build_image_encoder

    torch.manual_seed(seed)
    return build_image_encoder("regla_t_sam", 64).eval()


def _losses(run_dir: Path) -> list[str]:
    return [row["train_loss"] for row in csv.DictReader(open(run_dir / "metrics.csv"))]


def test_other_teacher_weights_get_their_own_cache(sam_images, tmp_path):
    from regla.runs.harness import run
    from regla.sam.embedding_distill import SamDistillTask

    a = run(SamDistillTask(_teacher(1)), _sam_recipe(sam_images, tmp_path / "a"), show_bar=False)
    b = run(SamDistillTask(_teacher(2)), _sam_recipe(sam_images, tmp_path / "b"), show_bar=False)
    assert _losses(a.run_dir) != _losses(b.run_dir)  # the second teacher's embeddings, not the first's cache
    assert len(list((sam_images / ".regla_sam_cache").iterdir())) == 2
    with pytest.raises(UsageError, match="made with another teacher weights"):  # a named cache is refused
        run(SamDistillTask(_teacher(1)), _sam_recipe(sam_images, tmp_path / "c", cache_dir=tmp_path / "cache"),
            show_bar=False)
        run(SamDistillTask(_teacher(2)), _sam_recipe(sam_images, tmp_path / "d", cache_dir=tmp_path / "cache"),
            show_bar=False)


def test_same_seed_same_student_whether_or_not_the_run_filled_the_cache(sam_images, tmp_path, capsys):
    """The teacher is built (random weights: no checkpoint) only by the run that fills the cache; its draws must
    not move the student's."""
    from regla.runs.checkpoint_sets import load_checkpoint

    argv = ["sam", "distill", "--data", str(sam_images), "--teacher", "regla_t_sam", "--student", "regla_t_sam",
            "--img-size", "64", "--cache", str(tmp_path / "cache"), "--no-progress", "--set", "epochs=1",
            "--set", "batch_size=2", "--set", "workers=0", "--set", "val_images=1"]
    assert main([*argv, "-o", str(tmp_path / "filled")]) == 0
    assert main([*argv, "-o", str(tmp_path / "reused")]) == 0
    a, b = (load_checkpoint(tmp_path / n / "last.pth")["model"] for n in ("filled", "reused"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- det eval matches classes by name ---------------------------------------------------------------------------

def test_classes_are_matched_by_name_not_by_id(capsys):
    from regla.dense.cli_det import map_classes

    # the weights learned [cat, dog]; the val set numbers them the other way round
    assert map_classes(["cat", "dog"], ["dog", "cat"], [1, 2], "w", "val.json") == [2, 1]
    assert "cat" in capsys.readouterr().out  # the table is printed
    assert map_classes(["cat", "dog"], ["cat", "dog"], [1, 2], "w", "val.json") == [1, 2]
    assert capsys.readouterr().out == ""  # the identity is not
    assert map_classes(["cat", "dog", "cow"], ["dog"], [7], "w", "val.json") == [None, 7, None]  # fewer: mapped
    with pytest.raises(UsageError, match="val.json has categories the weights w were not trained on: 'bird'"):
        map_classes(["cat", "dog"], ["dog", "bird"], [1, 2], "w", "val.json")


def test_results_of_classes_the_data_lacks_are_dropped_not_an_index_error():
    from regla.eval.metrics import coco_results

    out = {"boxes": torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]]), "labels": torch.tensor([1, 2, 3]),
           "scores": torch.tensor([0.9, 0.8, 0.7])}
    results = coco_results([(5, out)], [None, 7], masks=False)
    assert [r["category_id"] for r in results] == [7]


def test_det_eval_maps_a_permuted_val_set_by_name(folders, tmp_path, capsys, patch):
    """The command line: class names from the weights, category ids of the val set matched by name, passed to the
    evaluation (the model is replaced: only the wiring is under test here)."""
    from regla.checkpoints import WeightsInfo, safetensors_bytes

    ann = {"images": [{"id": 1, "file_name": "photo.png", "width": 40, "height": 30}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [2, 2, 10, 10], "area": 100,
                            "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}],
           "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]}
    (tmp_path / "val.json").write_text(json.dumps(ann))
    run = tmp_path / "run"
    run.mkdir()
    weights = run / "best.safetensors"
    weights.write_bytes(safetensors_bytes({"x": torch.zeros(1)}, WeightsInfo(class_names=["cat", "dog"])))
    (run / "config.yaml").write_text(yaml.safe_dump({"backbone": "regla_t", "device": "cpu",
                                                     "val_ann": str(tmp_path / "val.json"),
                                                     "val_images": str(folders)}))
    seen = {}

    def fake_eval(model, dataset, limit=None, show_bar=False, cat_ids=None):
        seen["cat_ids"] = cat_ids
        return {"bbox_AP": 0.0}, {"bbox_AP50": {}}, []

    patch(cli_det, "_trained_model", lambda cfg, w, names=None: (None, names))
    patch(dense_evaluate, "evaluate_detector", fake_eval)
    assert main(["det", "eval", "--weights", str(weights), "--no-progress"]) == 0
    assert seen["cat_ids"] == [2, 1]  # label 1 (cat) -> id 2, label 2 (dog) -> id 1
    assert "classes matched by name" in capsys.readouterr().out


# --- settings that mean nothing --------------------------------------------------------------------------------

def test_seg_slide_stride_larger_than_the_crop_is_refused(folders, tmp_path, refused, tripwire):
    tripwire((cli_seg, "_trained_model"))
    weights = _weights_with_recipe(tmp_path / "run", "seg", folders)
    refused(["seg", "eval", "--weights", str(weights), "--set", "test_mode=slide", "--set", "test_stride=1000"],
            "test_stride = 1000 > crop_size = 128")
    from regla.dense.segmenter import infer_logits

    with pytest.raises(ValueError, match="stride 9 > crop 8"):
        infer_logits(torch.nn.Conv2d(3, 2, 1), torch.zeros(1, 3, 16, 16), (16, 16), "slide", 8, 9)


@pytest.mark.parametrize("value", ["nan", "-5", "5"])
def test_det_predict_score_threshold_must_be_a_probability(value, tmp_path, refused):
    refused(["det", "predict", "x.png", "--weights", "w", "--score-thresh", value],
            "--score-thresh")


def test_det_train_batch_larger_than_the_data_is_refused_before_the_run(tmp_path, monkeypatch, refused, tripwire):
    monkeypatch.setenv("REGLA_CACHE", str(tmp_path / "cache"))
    tripwire((harness, "run"))
    refused(["det", "train", "--demo", "--batch-size", "100000", "--output", str(tmp_path / "run")],
            "batch_size = 100000 is larger than the training set (1 samples)")
    assert not (tmp_path / "run").exists()


def test_every_trainer_refuses_a_batch_larger_than_its_data(tmp_path):
    """The harness's own check, for every task (the toy task has 96 samples)."""
    from regla.runs.harness import RunError, run
    from test_runs import Regression, recipe

    with pytest.raises(RunError, match="batch_size = 97 is larger than the training set \\(96 samples\\)"):
        run(Regression(), recipe(tmp_path / "run", batch_size=97), show_bar=False)


# --- the other writers: sam eval's reports, eval/knn --json, plot -o ---------------------------------------------

def test_sam_eval_never_replaces_a_file_it_did_not_write(folders, tmp_path, refused, tripwire):
    tripwire((sam_build, "build_sam"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("[]")  # another tool's results
    refused(["sam", "eval", "--val-images", str(folders), "--val-ann", str(folders / "val.json"), "-o", str(out),
             "-e", "regla_t_sam", "--img-size", "64", "--device", "cpu"],
            "results.json exists and is not a report of regla sam eval")
    assert (out / "results.json").read_text() == "[]"


@pytest.mark.parametrize("command", ["eval", "knn"])
def test_eval_and_knn_json_never_replace_the_users_file(command, folders, tmp_path, refused, tripwire):
    tripwire((loop, "evaluate"), (knn, "extract_features"))
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "numbers"}')
    data = folders / "data"
    argv = (["eval", "--data", str(data), "--model", "regla_t", "--num-classes", "2", "--checkpoint",
             str(folders / "w.safetensors")] if command == "eval" else
            ["knn", "--bank", str(data / "train"), "--queries", str(data / "val"), "--model", "regla_t"])
    refused([*argv, "--device", "cpu", "--json", str(mine)], f"is not a report of regla {command}")
    assert mine.read_text() == '{"my": "numbers"}'


def test_plot_never_replaces_a_png_it_did_not_draw(folders, tmp_path, refused, tripwire):
    tripwire((cli_plot, "plot_runs"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0, "lr": 0.1}\n')
    mine = tmp_path / "mine.png"
    mine.write_bytes((folders / "photo.png").read_bytes())
    refused(["plot", str(run), "-o", str(mine)], "is not a PNG drawn by regla plot")
    assert mine.read_bytes() == (folders / "photo.png").read_bytes()


def test_a_teacher_file_that_is_not_a_sam_is_refused_even_when_a_cache_exists(sam_images, tmp_path, capsys):
    """A cache filled by one teacher says nothing about another file: a Mask R-CNN checkpoint given as the teacher
    is read (and refused), whether the cache is the default one or named."""
    import shutil

    from safetensors.torch import save_file

    data = tmp_path / "images"
    shutil.copytree(sam_images, data, ignore=shutil.ignore_patterns(".regla_sam_cache"))
    maskrcnn = tmp_path / "maskrcnn.safetensors"
    save_file({"backbone.body.conv1.weight": torch.zeros(4, 3, 3, 3), "roi_heads.box_predictor.cls_score.weight":
               torch.zeros(3, 8)}, str(maskrcnn))
    base = ["sam", "distill", "--data", str(data), "--teacher", "regla_t_sam", "--student", "regla_t_sam",
            "--img-size", "64", "--no-progress", "--set", "epochs=1", "--set", "batch_size=2", "--set", "workers=0",
            "--set", "val_images=1"]
    for cache in ([], ["--cache", str(tmp_path / "cache")]):
        assert main([*base, *cache, "-o", str(tmp_path / f"first{len(cache)}")]) == 0  # fills the cache
        capsys.readouterr()
        code = main([*base, *cache, "--teacher-checkpoint", str(maskrcnn), "-o", str(tmp_path / f"again{len(cache)}")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert ("another teacher weights" in err) if cache else (str(maskrcnn) in err), err
