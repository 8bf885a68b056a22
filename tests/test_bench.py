"""``regla bench``: model selection, statistics, and a smoke run of the whole command (no timing thresholds)."""

from __future__ import annotations

import csv
import json

import pytest

import regla  # noqa: F401  (registers regla_* and repnext_*)
from regla.bench import runner
from regla.bench.measure import interleaved, runs_for, summarize
from regla.bench.models import DEFAULT_MODELS, UnknownModelError, resolve_models
from regla.bench.runner import fit_growth_exponent
from regla.cli import main

AVAILABLE = ["iformer_t", "iformer_m", "repvit_m0_9", "repvit_m1_1", "shvit_s1", "regla_m"]


def test_resolve_names_lists_globs_and_defaults():
    assert resolve_models(["iformer_t,repvit_m0_9", "shvit_s1"], AVAILABLE) == ["iformer_t", "repvit_m0_9",
                                                                                 "shvit_s1"]
    assert resolve_models(["repvit_*", "repvit_m1_1"], AVAILABLE) == ["repvit_m0_9", "repvit_m1_1"]
    defaults = resolve_models(None, AVAILABLE)
    assert defaults == [m.name for m in DEFAULT_MODELS if m.name in AVAILABLE]  # unregistered ones skipped


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownModelError, match="did you mean: iformer_m"):
        resolve_models(["iformer_mm"], AVAILABLE)
    with pytest.raises(UnknownModelError, match="matches no registered model"):
        resolve_models(["nothing_*"], AVAILABLE)


def test_default_list_has_published_figures_with_sources():
    names = [m.name for m in DEFAULT_MODELS]
    assert len(names) == len(set(names))
    for family in ("regla_", "iformer_", "repvit_", "repnext_", "mobilenetv4_", "efficientvit_", "fastvit_", "shvit_"):
        assert any(n.startswith(family) for n in names), family
    for m in DEFAULT_MODELS:
        assert m.published is not None and 60 < m.published.top1 < 90 and "Table" in m.published.source


def test_statistics_and_run_counts():
    st = summarize([0.001 * i for i in range(1, 101)])
    assert st.n == 100 and abs(st.median_ms - 50.5) < 1e-9 and st.p10_ms < st.p25_ms < st.p75_ms < st.p90_ms
    assert runs_for(0.5, target_s=1.0, min_runs=15, max_runs=100, rounds=5) == 15
    assert runs_for(0.001, target_s=1.0, min_runs=15, max_runs=100, rounds=5) == 100
    assert runs_for(0.07, target_s=1.0, min_runs=1, max_runs=100, rounds=4) == 16  # 15 rounded up to rounds
    # latency proportional to pixel count -> exponent 1; constant -> 0
    assert abs(fit_growth_exponent([224, 512, 1024], [1.0, (512 / 224) ** 2, (1024 / 224) ** 2]) - 1.0) < 1e-9
    assert abs(fit_growth_exponent([224, 512], [3.0, 3.0])) < 1e-9
    assert fit_growth_exponent([224], [3.0]) is None


def test_interleaving_rotates_order():
    calls = []
    runners = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = interleaved(runners, {"a": 3, "b": 3, "c": 3}, rounds=3, estimates={"a": 1, "b": 1, "c": 1})
    assert all(len(t) == 3 for t in times.values())
    assert calls == list("abc" "bca" "cab")


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")  # an existing output folder: the user's files are kept
    argv = ["bench", "--models", "shvit_s1,mobilenetv4_conv_small", "--resolutions", "64", "--threads", "1",
            "--warmup", "1", "--min-runs", "2", "--max-runs", "3", "--rounds", "1", "--target-time", "0.01",
            "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "SHViT-S1" in printed and "MNV4-Conv-S" in printed
    for f in ("results.json", "results.csv", "results.md", "latency_vs_resolution.png", "accuracy_vs_latency.png",
              "latency_by_backend.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "latency_vs_resolution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", "results.json", "results.csv", "results.md",
                                                            "latency_vs_resolution.png", "accuracy_vs_latency.png",
                                                            "latency_by_backend.png"])

    doc = json.loads((out / "results.json").read_text())
    assert doc["machine"]["threads"] == 1 and doc["config"]["resolutions"] == [64]
    assert doc["command"].startswith("regla bench")
    for r in doc["results"]:
        assert r["error"] is None and r["params"] > 1e6 and r["macs"]["64"] > 1e6
        assert r["published_top1"]["top1"] > 70
        for backend in ("ort", "eager"):
            st = r["latency_ms"][backend]["64"]
            assert 0 < st["p10_ms"] <= st["median_ms"] <= st["p90_ms"] and st["n"] >= 2
        assert r["eager_layout"]["64"] in ("contiguous", "channels_last")
        assert r["memory"]["64"]["peak_rss_mb"] > 0 and r["memory"]["64"]["peak_delta_mb"] >= 0
        assert r["onnx_max_abs_diff"] is not None and r["backend_errors"] == {}
        assert len(r["latency_ms"]["ort"]["64"]["round_medians_ms"]) == 1  # one per round

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and {r["backend"] for r in rows} == {"ort", "eager"}
    assert all(float(r["median_ms"]) > 0 and r["threads"] == "1" and r["resolution"] == "64" for r in rows)


def test_bench_unknown_model_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "--models", "repvit_m1_11", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'repvit_m1_11'" in err and "repvit_m1_1" in err
    assert main(["bench", "--models", "shvit_s1", "--resolutions", "2048", "--output", str(tmp_path)]) == 2
    assert "in [32, 1024]" in capsys.readouterr().err


def test_bench_output_file_is_refused_before_running(tmp_path, capsys, patch):
    def never(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    patch(runner, "run_bench", never)
    results = tmp_path / "results.csv"
    results.write_text("an earlier table\n")
    assert main(["bench", "--models", "shvit_s1", "-o", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err and results.read_text() == "an earlier table\n"


def test_bench_disk_full_while_writing_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch, patch):
    import errno
    import os

    patch(runner, "run_bench", lambda cfg, command="": {"config": {}, "results": []})

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    out = tmp_path / "b"
    assert main(["bench", "--models", "shvit_s1", "--resolutions", "64", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]  # other lines: progress, a busy-machine warning
    assert len(errors) == 1 and errors[0].startswith("regla bench: error: ") and "Traceback" not in err
    assert "no space left" in errors[0] and str(out / "results.json") in errors[0]
    assert not out.exists() or not list(out.iterdir())  # no temporary left


def test_profile_summary_groups_by_op_and_block():
    from regla.bench.profile import summarize_profile

    ev = lambda node, op, us: {"cat": "Node", "name": node + "_kernel_time", "dur": us, "args": {"op_name": op}}  # noqa: E731
    events = [ev("/stages/stages.2/blocks/blocks.0/attn/MatMul", "MatMul", 3000),
              ev("/stages/stages.2/blocks/blocks.0/mlp/fc1/Conv", "Conv", 1000),
              ev("/stages/stages.2/blocks/blocks.1/attn/MatMul_1", "MatMul", 2000),
              {"cat": "Session", "name": "model_run", "dur": 99999}]
    prof = summarize_profile(events, runs=2)
    assert prof["total_kernel_ms"] == 3.0
    assert prof["by_op_type"][0] == {"name": "MatMul", "ms": 2.5, "share": 0.8333, "nodes": 1}
    assert [e["name"] for e in prof["by_block"]] == ["stages.2/blocks.0", "stages.2/blocks.1"]
    assert prof["by_component"][0]["name"] == "stages.2/attn"
