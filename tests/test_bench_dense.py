"""``regla bench --task det|seg``: the whole Mask R-CNN / Semantic FPN timed per backbone and size (a tiny setting:
one small backbone, a small size, one run; no timing thresholds)."""

from __future__ import annotations

import csv
import json

import pytest
import timm

import regla  # noqa: F401  (registers regla_*)
from regla.bench import dense as bench_dense
from regla.bench.dense import check_inputs, parse_size
from regla.cli import main
from regla.errors import UsageError

TINY = ["--dense-backbones", "regla_t", "--threads", "1", "--warmup", "1", "--min-runs", "1", "--max-runs", "1",
        "--rounds", "1"]


def test_sizes_are_width_by_height():
    assert parse_size("1333x800") == (1333, 800) and parse_size(" 512X512 ") == (512, 512)
    for bad, says in (("512", "expected WIDTHxHEIGHT"), ("512x", "expected WIDTHxHEIGHT"),
                      ("-5x5", "expected WIDTHxHEIGHT"), ("16x512", "32..4096"), ("512x9000", "32..4096")):
        with pytest.raises(UsageError, match=says):
            parse_size(bad)


def test_inputs_are_checked_and_defaults_filled():
    names, sizes, backends = check_inputs("seg", None, None)
    assert names == ["regla_m", "iformer_m", "repvit_m1_1", "repnext_m3"] and sizes == [(512, 512), (1333, 800)]
    assert backends == ["eager", "ort"]
    assert check_inputs("det", ["regla_t", "regla_t"], ["64x48"], ["ort", "eager"]) == (["regla_t"], [(64, 48)],
                                                                                       ["eager"])
    with pytest.raises(UsageError, match="unknown model 'regla_q'"):
        check_inputs("det", ["regla_q"], None)
    with pytest.raises(UsageError, match="times eager"):
        check_inputs("seg", ["regla_t"], None, ["compile"])


def _rows(out, task):
    doc = json.loads((out / f"{task}_results.json").read_text())
    rows = list(csv.DictReader((out / f"{task}_results.csv").open()))
    return doc, rows, (out / f"{task}_results.md").read_text()


def test_det_bench_times_the_whole_detector_with_forced_detections(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--task", "det", *TINY, "--sizes", "128x96", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["det_latency.png", "det_results.csv", "det_results.json",
                                                     "det_results.md"]
    assert (out / "det_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc, rows, md = _rows(out, "det")
    assert doc["task"] == "det" and doc["sizes"] == ["128x96"] and doc["threads"] == 1
    (r,) = doc["results"]
    assert r["error"] is None and r["backend"] == "eager" and r["fused"] is True
    assert r["detections"] == 100 == doc["detections_per_img"]  # score threshold 0: the mask head runs on 100
    backbone = sum(p.numel() for p in timm.create_model("regla_t", features_only=True).parameters())
    assert r["params"] - backbone > 15e6  # the whole detector: FPN 256, the 1024-wide box head (13.9M), mask head
    assert r["latency"]["n"] == 1 and r["latency"]["median_ms"] > 0
    assert len(rows) == 1 and rows[0]["size"] == "128x96" and rows[0]["width"] == "128" and rows[0]["height"] == "96"
    assert "| ReGLA-T | eager |" in md and "128x96 median" in md
    assert "| ReGLA-T | eager |" in capsys.readouterr().out


def test_seg_bench_times_eager_and_onnx_runtime(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--task", "seg", *TINY, "--sizes", "96x64", "-o", str(out), "--no-plots"]) == 0
    doc, rows, md = _rows(out, "seg")
    assert not (out / "seg_latency.png").exists()
    by_backend = {r["backend"]: r for r in doc["results"]}
    assert set(by_backend) == {"eager", "ort"} and all(r["error"] is None for r in by_backend.values())
    assert by_backend["ort"]["onnx_max_abs_diff"] < 1e-3  # the exported segmenter computes what PyTorch does
    assert by_backend["eager"]["layout"] in ("contiguous", "channels_last")
    assert {r["backend"] for r in rows} == {"eager", "ort"} and all(float(r["median_ms"]) > 0 for r in rows)
    assert "| ReGLA-T | ort |" in md and "| ReGLA-T | eager |" in md


@pytest.mark.parametrize(("extra", "says"), [
    (["--dense-backbones", "regla_q"], "unknown model 'regla_q'"),
    (["--sizes", "512"], "expected WIDTHxHEIGHT"),
    (["--sizes", "512x8"], "32..4096"),
    (["--models", "regla_t"], "--models applies to --task classify"),
    (["--backends", "compile"], "times eager"),
])
def test_bad_input_exits_2_before_any_model_is_built(tmp_path, capsys, extra, says, patch):
    def tripwire(*args, **kwargs):
        raise AssertionError("a model was built before the input was checked")

    patch(bench_dense, "build_det", tripwire)
    patch(bench_dense, "build_seg", tripwire)
    for task in ("det", "seg"):
        assert main(["bench", "--task", task, "-o", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dense_flags_are_refused_for_other_tasks(tmp_path, capsys):
    assert main(["bench", "--models", "regla_t", "--sizes", "64x64", "-o", str(tmp_path)]) == 2
    assert "apply to --task det|seg only" in capsys.readouterr().err


@pytest.mark.parametrize("task,name", [("det", "det_results.md"), ("seg", "seg_latency.png"),
                                       ("sam", "sam_results.json")])
def test_a_file_of_the_same_name_that_no_bench_run_wrote_is_refused_first(task, name, tmp_path, capsys, monkeypatch):
    """``--task det|seg|sam`` writes its own files into ``-o``; a user's file of one of those names is refused
    (exit 2, one line) before any model is built, and left as it was."""
    def never(*args, **kwargs):
        raise AssertionError("the benchmark ran although its output was refused")

    monkeypatch.setattr(bench_dense, "run_dense_bench", never)
    monkeypatch.setattr("regla.bench.sam.run_sam_bench", never)
    (tmp_path / name).write_text("the user's own file")
    extra = TINY if task != "sam" else ["--sam-encoders", "regla_t"]
    assert main(["bench", "--task", task, *extra, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{name} exists and is not a result of an earlier regla bench run" in err
    assert (tmp_path / name).read_text() == "the user's own file"


@pytest.mark.parametrize("task", ["det", "seg", "sam"])
def test_the_folder_of_an_earlier_run_of_the_task_takes_the_next_one(task, tmp_path):
    from regla.bench.cli import output_folder, task_files

    files = task_files(task)
    (tmp_path / files[1]).write_text("an earlier run's table\n")
    (tmp_path / "notes.txt").write_text("the user's own notes: never touched, not refused")
    (tmp_path / files[0]).write_text(json.dumps({"task": task, "command": f"regla bench --task {task}"}))
    assert output_folder(str(tmp_path), task) == tmp_path
    other = "seg" if task == "det" else "det"  # another task's document does not make the folder this task's
    (tmp_path / files[0]).write_text(json.dumps({"task": other, "command": f"regla bench --task {other}"}))
    with pytest.raises(UsageError, match="is not a result of an earlier regla bench run"):
        output_folder(str(tmp_path), task)
