"""The bad-input matrix: every flag of every subcommand, given a wrong type, an out-of-range value, a missing path or a
path of the wrong kind, exits 2 with one line on stderr (never a traceback), before any long work starts.

Each case runs ``regla.cli.main`` in-process; the command's long work (training, benchmarking, exporting, drawing,
evaluating) is replaced by a function that fails the case if it is ever called. Cases that still fail because of
files outside the CLI layer are marked ``xfail(strict=True)`` with the owner and the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from types import ModuleType

import pytest
import torch

from regla.bench import dense as bench_dense
from regla.bench import paper_figures, runner
from regla.cli import main
from regla.deploy import export
from regla.eval import knn, loop
from regla.models import cli as models_cli
from regla.runs import cli_plot, harness
from regla.sam import build as sam_build
from regla.train import trainer

# what each command's long work is (one or more functions); a case whose check must happen before it replaces
# them with a tripwire
WORK: dict[str, tuple[tuple[ModuleType, str], ...]] = {
    "train": ((trainer, "train"), (harness, "run")),
    "export": ((export, "export_model"),),
    "bench": ((runner, "run_bench"), (bench_dense, "run_dense_bench")),
    "plot": ((cli_plot, "plot_runs"), (paper_figures, "draw")),
    "models": ((models_cli, "model_rows"),),
    "eval": ((loop, "evaluate"),),
    "sam": ((harness, "run"), (sam_build, "build_sam")),
    "knn": ((knn, "extract_features"),),
    "distill": ((harness, "run"),),
    "det": ((harness, "run"),),
    "seg": ((harness, "run"),),
}


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # {data}, {file}, {folder}, {weights}, {run}, {missing}, {out} are filled in
    says: str  # a part of the one-line message
    before_work: bool = True  # False: the check may run inside the work (reading a weights file, say)
    lead: str = ""  # why it still fails, for the owner of the file at fault (xfail, strict)


def case(*argv: str, says: str, before_work: bool = True, lead: str = "") -> Case:
    return Case(tuple(argv), says, before_work, lead)


TRAIN = ("train", "--data", "{data}", "--output", "{out}", "--model", "regla_t", "--device", "cpu")
EXPORT = ("export", "regla_t", "-o", "{out}/m.onnx")
BENCH = ("bench", "--models", "regla_t", "--resolutions", "64", "-o", "{out}")
EVAL = ("eval", "--data", "{data}", "--checkpoint", "{weights}", "--model", "regla_t", "--num-classes", "2",
        "--device", "cpu", "--workers", "0")
KNN = ("knn", "--bank", "{data}/train", "--queries", "{data}/val", "--model", "regla_t", "--device", "cpu",
       "--workers", "0")
SAM_EVAL = ("sam", "eval", "--val-images", "{data}", "--val-ann", "{coco}", "-o", "{out}", "-e", "regla_t_sam",
            "--img-size", "64", "--device", "cpu")
DISTILL = ("distill", "--data", "{data}", "--output", "{out}", "--model", "regla_t", "--device", "cpu")
NO_GPU = "--device cuda needs a machine without a GPU"

CASES: dict[str, Case] = {
    # regla models
    "models --family bad": case("models", "--family", "vit", says="invalid choice"),
    "models --img-size abc": case("models", "--img-size", "abc", says="invalid integer"),
    "models --img-size 0": case("models", "--img-size", "0", says="img-size"),
    # regla train: recipe and flags
    "train -c missing": case(*TRAIN, "-c", "no_such_recipe", says="not found"),
    "train -c folder": case(*TRAIN, "-c", "{folder}", says="not found"),
    "train -c text": case(*TRAIN, "-c", "{file}", says="a recipe must be a mapping"),
    "train --data missing": case(*TRAIN, "--data", "{missing}", says="folder does not exist"),
    "train --data file": case(*TRAIN, "--data", "{file}", says="is a file"),
    "train --output file": case(*TRAIN, "--output", "{file}", says="is a file"),
    "train --output under a file": case(*TRAIN, "--output", "{file}/run", says="is a file, not a folder"),
    "train --model unknown": case(*TRAIN, "--model", "regla_q", says="unknown model 'regla_q'"),
    "train --epochs abc": case(*TRAIN, "--epochs", "abc", says="invalid int value"),
    "train --epochs 0": case(*TRAIN, "--epochs", "0", says="epochs = 0"),
    "train --batch-size 0": case(*TRAIN, "--batch-size", "0", says="batch_size = 0"),
    "train --batch-size abc": case(*TRAIN, "--batch-size", "abc", says="invalid int value"),
    "train --lr abc": case(*TRAIN, "--lr", "abc", says="invalid float value"),
    "train --lr 0": case(*TRAIN, "--lr", "0", says="lr = 0.0"),
    "train --lr -1": case(*TRAIN, "--lr", "-1", says="lr = -1.0"),
    "train --lr nan": case(*TRAIN, "--lr", "nan", says="not a finite number"),
    "train --img-size 0": case(*TRAIN, "--img-size", "0", says="img_size = 0"),
    "train --device tpu": case(*TRAIN, "--device", "tpu", says="device = 'tpu'"),
    "train --device cuda:99": case(*TRAIN, "--device", "cuda:99", says="cuda:99"),
    "train --device cuda": case(*TRAIN, "--device", "cuda", says="no CUDA GPU"),
    "train --seed -1": case(*TRAIN, "--seed", "-1", says="seed = -1"),
    "train --workers -1": case(*TRAIN, "--workers", "-1", says="workers = -1"),
    "train --grad-accum 0": case(*TRAIN, "--grad-accum", "0", says="grad_accum = 0"),
    "train --teacher-path missing": case(*TRAIN, "--set", "distillation_type=hard", "--teacher-path", "{missing}",
                                         says="--teacher-path"),
    "train --amp bad": case(*TRAIN, "--amp", "fp8", says="invalid choice"),
    "train --set no =": case(*TRAIN, "--set", "epochs", says="key=value"),
    "train --set unknown": case(*TRAIN, "--set", "epohcs=3", says="did you mean 'epochs'"),
    "train --set bad value": case(*TRAIN, "--set", "mixup_prob=2", says="mixup_prob = 2"),
    "train --set initial_checkpoint missing": case(*TRAIN, "--set", "initial_checkpoint={missing}",
                                                   says="initial_checkpoint"),
    "train --resume missing": case(*TRAIN, "--resume", "{missing}", says="no such file or folder"),
    "train --resume folder": case(*TRAIN, "--resume", "{folder}", says="last.pth"),
    "train --resume text": case(*TRAIN, "--resume", "{file}", says="checkpoint"),
    # regla export
    "export model unknown": case("export", "regla_q", "-o", "{out}/m.onnx", says="unknown model"),
    "export --format bad": case(*EXPORT, "--format", "tflite", says="invalid choice"),
    "export --output under a file": case("export", "regla_t", "-o", "{file}/m.onnx", says="is a file, not a folder"),
    "export --output other kind": case("export", "regla_t", "-o", "{file}", says="--force"),
    "export --checkpoint missing": case(*EXPORT, "-c", "{missing}", says="file does not exist"),
    "export --checkpoint folder": case(*EXPORT, "-c", "{folder}", says="is a folder"),
    "export --checkpoint text": case(*EXPORT, "-c", "{file}", says="cannot read checkpoint", before_work=False),
    "export --num-classes 0": case(*EXPORT, "--num-classes", "0", says="out of range"),
    "export --num-classes abc": case(*EXPORT, "--num-classes", "abc", says="invalid integer"),
    "export --img-size 8": case(*EXPORT, "--img-size", "8", says="out of range"),
    "export --img-size abc": case(*EXPORT, "--img-size", "abc", says="invalid integer"),
    "export --img-size 3 numbers": case(*EXPORT, "--img-size", "64", "64", "64", says="N or H W"),
    "export --atol -1": case(*EXPORT, "--atol", "-1", says="out of range"),
    "export --atol abc": case(*EXPORT, "--atol", "abc", says="invalid number"),
    "export --opset 3": case(*EXPORT, "--opset", "3", says="out of range"),
    "export --exporter bad": case(*EXPORT, "--exporter", "fx", says="invalid choice"),
    "export --coreml-precision bad": case(*EXPORT, "--coreml-precision", "int8", says="invalid choice"),
    "export --int8 torchscript": case("export", "regla_t", "-f", "torchscript", "--int8", "-o", "{out}/m.pt",
                                      says="--int8 goes with --format onnx or executorch"),
    "export --calib missing": case(*EXPORT, "--int8", "--calib", "{missing}", says="does not exist"),
    "export --calib no image": case(*EXPORT, "--int8", "--calib", "{folder}", says="no image file"),
    "export --calib-images 0": case(*EXPORT, "--int8", "--calib-images", "0", says="out of range"),
    "export --check-images abc": case(*EXPORT, "--check-images", "abc", says="invalid integer"),
    "export --min-agreement 2": case(*EXPORT, "--int8", "--min-agreement", "2", says="out of range"),
    "export --min-cosine abc": case(*EXPORT, "--int8", "--min-cosine", "abc", says="invalid number"),
    # regla bench
    "bench --models unknown": case(*BENCH, "--models", "regla_q", says="unknown model 'regla_q'"),
    "bench --tables missing": case(*BENCH, "--tables", "{missing}", says="no results.json there"),
    "bench --tables not results": case(*BENCH, "--tables", "{file}", says="is not a `regla bench` results.json"),
    "bench --models glob": case(*BENCH, "--models", "nothing_*", says="matches no registered model"),
    "bench --resolutions abc": case(*BENCH, "--resolutions", "abc", says="invalid integer"),
    "bench --resolutions 16": case(*BENCH, "--resolutions", "16", says="out of range"),
    "bench --resolutions 2048": case(*BENCH, "--resolutions", "2048", says="out of range"),
    "bench --threads -1": case(*BENCH, "--threads", "-1", says="out of range"),
    "bench --warmup 0": case(*BENCH, "--warmup", "0", says="out of range"),
    "bench --min-runs 0": case(*BENCH, "--min-runs", "0", says="out of range"),
    "bench --max-runs 0": case(*BENCH, "--max-runs", "0", says="out of range"),
    "bench --min-runs > --max-runs": case(*BENCH, "--min-runs", "5", "--max-runs", "2", says="min_runs 5"),
    "bench --target-time 0": case(*BENCH, "--target-time", "0", says="out of range"),
    "bench --rounds 0": case(*BENCH, "--rounds", "0", says="out of range"),
    "bench --backends bad": case(*BENCH, "--backends", "tensorrt", says="invalid choice"),
    "bench --calib no image": case(*BENCH, "--backends", "ort-int8", "--calib", "{folder}", says="no image file"),
    "bench --calib-images 0": case(*BENCH, "--calib-images", "0", says="out of range"),
    "bench --task bad": case(*BENCH, "--task", "detect", says="invalid choice"),
    "bench --sam-encoders unknown": case(*BENCH, "--task", "sam", "--sam-encoders", "regla_q_sam", says="unknown"),
    "bench --reference other": case(*BENCH, "--reference", "regla_m", says="not among the benchmarked models"),
    "bench --dense-backbones unknown": case("bench", "--task", "det", "--dense-backbones", "regla_q", "-o", "{out}",
                                            says="unknown model 'regla_q'"),
    "bench --sizes malformed": case("bench", "--task", "seg", "--sizes", "512", "-o", "{out}", says="WIDTHxHEIGHT"),
    "bench --sizes out of range": case("bench", "--task", "det", "--sizes", "512x8", "-o", "{out}", says="32..4096"),
    "bench --sizes with classify": case(*BENCH, "--sizes", "64x64", says="apply to --task det|seg only"),
    "bench --output file": case(*BENCH, "-o", "{file}", says="is a file"),
    "bench --output under a file": case(*BENCH, "-o", "{file}/b", says="is a file, not a folder"),
    "sam --demo -o file": case("sam", "--demo", "-o", "{file}", says="is a file"),
    "sam --demo --resume missing": case("sam", "--demo", "--resume", "{missing}", says="no such file or folder"),
    "sam --demo --set unknown": case("sam", "--demo", "--set", "bogus=1", says="unknown option 'bogus'"),
    # regla det --demo, regla seg --demo (the demo form every trainer shares)
    "det --demo -o file": case("det", "--demo", "-o", "{file}", says="is a file"),
    "det --demo --resume missing": case("det", "--demo", "--resume", "{missing}", says="no such file or folder"),
    "det --demo --set unknown": case("det", "--demo", "--set", "bogus=1", says="unknown option 'bogus'"),
    "det --demo with an action": case("det", "--demo", "train", says="--demo runs on its own"),
    "seg --demo -o file": case("seg", "--demo", "-o", "{file}", says="is a file"),
    "seg --demo --resume missing": case("seg", "--demo", "--resume", "{missing}", says="no such file or folder"),
    "seg --demo --set unknown": case("seg", "--demo", "--set", "bogus=1", says="unknown option 'bogus'"),
    "seg no action": case("seg", says="needs an action"),
    "bench --sam-encoders bad mode": case(*BENCH, "--task", "sam", "--sam-encoders", "repvit_sam:fuse",
                                          says="applies to regla_*_sam only"),
    # regla sam eval
    "sam eval no --val-ann": case(*SAM_EVAL[:4], says="--val-ann FILE are required"),
    "sam eval --val-images missing": case(*SAM_EVAL, "--val-images", "{missing}", says="folder does not exist"),
    "sam eval --val-images file": case(*SAM_EVAL, "--val-images", "{file}", says="is a file, expected a folder"),
    "sam eval --val-ann missing": case(*SAM_EVAL, "--val-ann", "{missing}", says="file does not exist"),
    "sam eval --val-ann not JSON": case(*SAM_EVAL, "--val-ann", "{file}", says="is not valid JSON"),
    "sam eval --val-ann other images": case(*SAM_EVAL, "--val-images", "{folder}", says="are not in {folder}"),
    "sam eval --val-ann other sizes": case(*SAM_EVAL, "--val-ann", "{coco_wrong_size}", says="is 32x32, not 40x32"),
    "sam eval --boxes missing": case(*SAM_EVAL, "--boxes", "{missing}", says="--boxes"),
    "sam eval --boxes not JSON": case(*SAM_EVAL, "--boxes", "{file}", says="not valid JSON"),
    "sam eval --boxes not a list": case(*SAM_EVAL, "--boxes", "{coco}", says="expected a COCO results list"),
    "sam eval --boxes bad entry": case(*SAM_EVAL, "--boxes", "{dets_bad}", says="entry 0"),
    "sam eval --boxes other images": case(*SAM_EVAL, "--boxes", "{dets_other}",
                                          says="image ids not in the annotations: 7"),
    "sam eval --score-thr 2": case(*SAM_EVAL, "--score-thr", "2", says="out of range"),
    "sam eval --score-thr alone": case(*SAM_EVAL, "--score-thr", "0.5", says="give --boxes FILE too"),
    "sam eval --prompts none": case(*SAM_EVAL, "--prompts", says="no prompt selected"),
    "sam eval --prompts bad": case(*SAM_EVAL, "--prompts", "mask", says="invalid choice"),
    "sam eval --boxes without box": case(*SAM_EVAL, "--boxes", "{dets_other}", "--prompts", "point",
                                         says="leaves out box"),
    "sam eval --max-images 0": case(*SAM_EVAL, "--max-images", "0", says="out of range"),
    "sam eval --output file": case(*SAM_EVAL, "-o", "{file}", says="is a file; expected a folder"),
    "sam eval --encoder unknown": case(*SAM_EVAL, "--encoder", "regla_q_sam", says="expected one of"),
    "sam eval --img-size 100": case(*SAM_EVAL, "--img-size", "100", says="multiple of 16"),
    "sam eval --last-stage bad": case(*SAM_EVAL, "--last-stage", "stride2", says="invalid choice"),
    "sam eval --checkpoint missing": case(*SAM_EVAL, "--checkpoint", "{missing}", says="file does not exist"),
    "sam eval --device tpu": case(*SAM_EVAL, "--device", "tpu", says="tpu"),
    # regla plot
    "plot RUN_DIR missing": case("plot", "{missing}", says="folder does not exist"),
    "plot RUN_DIR file": case("plot", "{file}", says="is a file"),
    "plot RUN_DIR not a run": case("plot", "{folder}", says="no metrics.jsonl"),
    "plot -o not png": case("plot", "{run}", "-o", "{out}/curves.pdf", says=".png"),
    "plot -o under a file": case("plot", "{run}", "-o", "{file}/c.png", says="is a file, not a folder"),
    "plot no RUN_DIR": case("plot", says="give one or more RUN_DIR"),
    "plot --paper bad": case("plot", "--paper", "fig2", says="invalid choice"),
    "plot --paper with RUN_DIR": case("plot", "--paper", "fig1", "{run}", says="not from run folders"),
    "plot --results missing": case("plot", "--paper", "fig1", "--results", "{missing}", says="file does not exist"),
    "plot --results folder": case("plot", "--paper", "fig1", "--results", "{folder}", says="is a folder"),
    "plot --results text": case("plot", "--paper", "fig4", "--results", "{file}", says="expected a mapping"),
    "plot --results no --paper": case("plot", "{run}", "--results", "{file}", says="go with --paper"),
    # regla eval
    "eval --data missing": case(*EVAL[:1], "--data", "{missing}", *EVAL[3:], says="does not exist"),
    "eval --data file": case(*EVAL[:1], "--data", "{file}", *EVAL[3:], says="{file}"),
    "eval --split missing": case(*EVAL, "--split", "test", says="test"),
    "eval --dataset unknown": case(*EVAL, "--dataset", "nosuch/set", says="nosuch"),
    "eval --checkpoint missing": case(*EVAL, "--checkpoint", "{missing}", says="not found"),
    "eval --checkpoint folder": case(*EVAL, "--checkpoint", "{folder}", says="{folder}"),
    "eval --checkpoint text": case(*EVAL, "--checkpoint", "{file}", says="checkpoint"),
    "eval --model unknown": case(*EVAL, "--model", "regla_q", says="unknown model"),
    "eval --num-classes 0": case(*EVAL, "--num-classes", "0", says="num-classes"),
    "eval --img-size abc": case(*EVAL, "--img-size", "abc", says="invalid integer"),
    "eval --img-size 0": case(*EVAL, "--img-size", "0", says="img-size"),
    "eval --crop-pct 2": case(*EVAL, "--crop-pct", "2", says="crop-pct"),
    "eval --interpolation bad": case(*EVAL, "--interpolation", "cubic", says="interpolation"),
    "eval --batch-size 0": case(*EVAL, "--batch-size", "0", says="batch"),
    "eval --workers -1": case(*EVAL, "--workers", "-1", says="workers"),
    "eval --device tpu": case(*EVAL, "--device", "tpu", says="tpu"),
    "eval --device cuda:99": case(*EVAL, "--device", "cuda:99", says="cuda:99"),
    "eval --amp bad": case(*EVAL, "--amp", "fp8", says="invalid choice"),
    "eval --layout nhwc": case(*EVAL, "--layout", "nhwc", says="invalid choice"),
    "eval --json under a file": case(*EVAL, "--json", "{file}/m.json", says="{file}"),
    # regla knn
    "knn --bank missing": case(*KNN, "--bank", "{missing}", says="folder does not exist"),
    "knn --queries file": case(*KNN, "--queries", "{file}", says="is a file, expected a folder"),
    "knn --queries other classes": case(*KNN, "--queries", "{folder}", says="no class folders"),
    "knn no model": case(*KNN[:5], says="--model NAME"),
    "knn --model unknown": case(*KNN, "--model", "regla_q", says="unknown model"),
    "knn --checkpoint missing": case(*KNN, "--checkpoint", "{missing}", says="file does not exist"),
    "knn --checkpoint text": case(*KNN, "--checkpoint", "{file}", says="cannot read checkpoint"),
    "knn --k 0": case(*KNN, "--k", "20", "0", says="out of range"),
    "knn --temperature 0": case(*KNN, "--temperature", "0", says="out of range"),
    "knn --pool bad": case(*KNN, "--pool", "cls", says="invalid choice"),
    "knn --img-size 0": case(*KNN, "--img-size", "0", says="out of range"),
    "knn --crop-pct 2": case(*KNN, "--crop-pct", "2", says="out of range"),
    "knn --interpolation bad": case(*KNN, "--interpolation", "cubic", says="invalid choice"),
    "knn --batch-size 0": case(*KNN, "--batch-size", "0", says="out of range"),
    "knn --workers -1": case(*KNN, "--workers", "-1", says="out of range"),
    "knn --query-chunk 0": case(*KNN, "--query-chunk", "0", says="out of range"),
    "knn --bank-chunk 0": case(*KNN, "--bank-chunk", "0", says="out of range"),
    "knn --bank-per-class 0": case(*KNN, "--bank-per-class", "0", says="out of range"),
    "knn --seed abc": case(*KNN, "--seed", "abc", says="invalid int value"),
    "knn --device tpu": case(*KNN, "--device", "tpu", says="tpu"),
    "knn --amp bad": case(*KNN, "--amp", "fp8", says="invalid choice"),
    "knn --json under a file": case(*KNN, "--json", "{file}/m.json", says="{file}"),
    # regla distill
    "distill -c missing": case(*DISTILL, "-c", "no_such_recipe", says="not found"),
    "distill --data missing": case(*DISTILL, "--data", "{missing}", says="folder does not exist"),
    "distill --model unknown": case(*DISTILL, "--model", "regla_q", says="unknown model 'regla_q'"),
    "distill --teachers unknown": case(*DISTILL, "--teachers", "4tea,dinov3", says="teacher 'dinov3'"),
    "distill no teacher checkpoint": case(*DISTILL, "--teachers", "dinov2", says="teacher dinov2: no checkpoint"),
    "distill --teacher-checkpoint missing": case(*DISTILL, "--teachers", "dinov2", "--teacher-checkpoint",
                                                 "dinov2={missing}", says="teacher dinov2: checkpoint"),
    "distill --teacher-checkpoint no =": case(*DISTILL, "--teacher-checkpoint", "dinov2", says="NAME=PATH"),
    "distill --knn-bank alone": case(*DISTILL, "--knn-bank", "{data}/train", says="knn_queries go together"),
    "distill --knn-queries missing": case(*DISTILL, "--knn-bank", "{data}/train", "--knn-queries", "{missing}",
                                          says="knn_queries"),
    "distill --output file": case(*DISTILL, "--output", "{file}", says="is a file"),
    "distill --epochs 0": case(*DISTILL, "--epochs", "0", says="epochs = 0"),
    "distill --batch-size 0": case(*DISTILL, "--batch-size", "0", says="batch_size = 0"),
    "distill --lr 0": case(*DISTILL, "--lr", "0", says="lr = 0.0"),
    "distill --img-size 0": case(*DISTILL, "--img-size", "0", says="img_size = 0"),
    "distill --device tpu": case(*DISTILL, "--device", "tpu", says="device = 'tpu'"),
    "distill --seed -1": case(*DISTILL, "--seed", "-1", says="seed = -1"),
    "distill --workers -1": case(*DISTILL, "--workers", "-1", says="workers = -1"),
    "distill --amp bad": case(*DISTILL, "--amp", "fp8", says="invalid choice"),
    "distill --set unknown": case(*DISTILL, "--set", "onlycoss=true", says="did you mean 'onlycos'"),
    "distill --set bad switch": case(*DISTILL, "--set", "onlycos_tokens=cls", says="onlycos_tokens"),
    "distill --resume missing": case(*DISTILL, "--resume", "{missing}", says="no such file or folder"),
}

#: Cases that still fail, with the owner of the file at fault (xfail, strict): empty when every case holds.
XFAIL: dict[str, tuple[str, bool]] = {}


def _params() -> list:
    params = []
    for name, c in CASES.items():
        reason, failing = (c.lead, True) if c.lead else XFAIL.get(name, ("", False))
        marks = [pytest.mark.xfail(failing, strict=True, reason=reason)] if reason else []
        if name == "train --device cuda":
            marks.append(pytest.mark.skipif(torch.cuda.is_available(), reason=NO_GPU))
        params.append(pytest.param(c, id=name, marks=marks))
    return params


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """A tiny image-folder dataset, a weights file for it, a run folder, a text file, a folder, a missing path."""
    import timm
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("inputs")
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / "data" / split / cls).mkdir(parents=True)
            Image.new("RGB", (32, 32), (255, 0, 0) if cls == "a" else (0, 0, 255)).save(
                root / "data" / split / cls / "0.png")
    state = timm.create_model("regla_t", num_classes=2).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "w.safetensors"))
    (root / "run").mkdir()
    (root / "run" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0, "lr": 0.1}\n')
    (root / "notes.txt").write_text("not a recipe, not a checkpoint\n")
    (root / "folder").mkdir()
    # a one-image COCO set over data/ (the 32 x 32 train/a/0.png), and detector results that do not fit it
    box = [4.0, 4.0, 10.0, 10.0]
    (root / "coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "train/a/0.png", "width": 32, "height": 32}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 100.0, "iscrowd": 0,
                         "segmentation": [[4, 4, 14, 4, 14, 14, 4, 14]]}],
        "categories": [{"id": 1, "name": "thing"}]}))
    wrong = json.loads((root / "coco.json").read_text())
    wrong["images"][0]["width"] = 40
    (root / "coco_wrong_size.json").write_text(json.dumps(wrong))
    (root / "dets_other.json").write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": box, "score": 1}]))
    (root / "dets_bad.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": box[:3]}]))
    return {"data": str(root / "data"), "weights": str(root / "w.safetensors"), "run": str(root / "run"),
            "file": str(root / "notes.txt"), "folder": str(root / "folder"), "missing": str(root / "nowhere"),
            "coco": str(root / "coco.json"), "coco_wrong_size": str(root / "coco_wrong_size.json"),
            "dets_other": str(root / "dets_other.json"),
            "dets_bad": str(root / "dets_bad.json")}


@pytest.mark.parametrize("c", _params())
def test_bad_input_exits_2_with_one_line(c: Case, paths, tmp_path, capsys, tripwire):
    fill = dict(paths, out=str(tmp_path / "out"))
    argv = [a.format(**fill) for a in c.argv]
    if c.before_work:
        tripwire(*WORK[argv[0]], message="the long work started before the input was checked")
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    # "regla CMD: error: ...", or "regla CMD SUB: error: ..." from argparse inside a subcommand's subcommand
    assert re.match(rf"regla {argv[0]}( [a-z]+)?: error: ", lines[0]) and c.says.format(**fill) in lines[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing was written


def test_every_flag_has_a_case():
    """Each option of each subcommand appears in at least one case of the matrix."""
    from regla.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    for name in COMMANDS:
        covered = {a for c in CASES.values() if c.argv[0] == name for a in c.argv}
        takes_value = [a for a in sub.choices[name]._actions if a.option_strings and a.nargs != 0]
        missing = [a.option_strings[-1] for a in takes_value if not covered & set(a.option_strings)]
        assert not missing, f"regla {name}: no bad-input case for {missing}"
