"""``regla bench --tables``: earlier runs' results laid out per backend (no timing; generated result documents)."""

from __future__ import annotations

import json

import pytest

from regla.bench import runner
from regla.bench.tables import load_runs, merge_runs, tables_markdown
from regla.cli import main


def _stat(rounds: list[float]) -> dict:
    med = sorted(rounds)[len(rounds) // 2]
    return {"median_ms": med, "iqr_ms": 0.1 * med, "p10_ms": med, "p25_ms": med, "p75_ms": med, "p90_ms": med,
            "n": len(rounds), "round_medians_ms": rounds}


def _result(name: str, label: str, latency: dict, errors: dict | None = None) -> dict:
    return {"name": name, "label": label, "family": label.split("-")[0], "params": 1e6, "macs": {},
            "latency_ms": latency, "prepare_s": {b: {r: 5.0 for r in per} for b, per in latency.items()},
            "backend_errors": errors or {}, "eager_layout": {}, "memory": {}, "growth_exponent": {},
            "growth_512_1024": {}, "published_top1": None, "error": None}


def _run(tmp_path, name: str, resolutions: list[int], backends: list[str], results: list[dict]):
    doc = {"date_utc": "2026-12-03 08:00 UTC", "duration_s": 1.0, "command": f"regla bench -o {name}",
           "config": {"resolutions": resolutions, "backends": backends},
           "machine": {"cpu": "test CPU", "threads": 1, "loadavg_start": [1.0], "loadavg_end": [2.0]},
           "results": results}
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(doc))
    return folder


@pytest.fixture
def runs(tmp_path):
    # run 1 (224/512): at 512 the per-round ratios ReGLA/iFormer are 50/200, 60/80, 90/100 -> median 0.75, while
    # the ratio of the medians would be 60/100 = 0.60
    a = _run(tmp_path, "r224_512", [224, 512], ["ort", "ort-int8"], [
        _result("regla_m", "ReGLA-M", {"ort": {"224": _stat([10, 11, 12]), "512": _stat([50, 60, 90])},
                                       "ort-int8": {"224": _stat([5, 5.5, 6]), "512": _stat([25, 30, 45])}}),
        _result("iformer_m", "iFormer-M", {"ort": {"224": _stat([20, 22, 24]), "512": _stat([200, 80, 100])}},
                errors={"ort-int8": "quantization failed: no kernel"}),
    ])
    b = _run(tmp_path, "r1024", [1024], ["ort"], [
        _result("regla_m", "ReGLA-M", {"ort": {"1024": _stat([240, 240, 240])}}),
        _result("iformer_m", "iFormer-M", {"ort": {"1024": _stat([600, 600, 600])}}),
    ])
    return a, b


def test_tables_pair_within_a_run_and_flag_cross_run_figures(runs):
    merged = merge_runs(load_runs([str(p) for p in runs]))
    assert merged["resolutions"] == [224, 512, 1024] and merged["backends"] == ["ort", "ort-int8"]
    md = tables_markdown(merged, "regla_m")
    ort = md.split("## ONNX Runtime fp32")[1].split("##")[0]
    iformer = next(line for line in ort.splitlines() if line.startswith("| iFormer-M"))
    # 224: 10/20, 11/22, 12/24 -> 0.50; 512: 0.75 (paired), not 0.60; 1024: 240/600 = 0.40, within run 2
    assert "| 0.50 |" in iformer and "| 0.75 |" in iformer and "| 0.40 |" in iformer
    assert "0.60" not in iformer and "†" not in iformer
    growth = md.split("## Growth from 512 to 1024 px")[1].split("##")[0]
    regla = next(line for line in growth.splitlines() if line.startswith("| ReGLA-M"))
    assert "4.00x†" in regla  # 240 / 60 (medians of two runs): cross-run, flagged
    speed = md.split("## int8 speed-up")[1]
    regla = next(line for line in speed.splitlines() if line.startswith("| ReGLA-M"))
    assert "2.00x" in regla  # t(fp32)/t(int8) round by round: 10/5, 11/5.5, 12/6
    int8 = md.split("## ONNX Runtime int8")[1].split("##")[0]
    assert "| iFormer-M | failed |" in int8 and "quantization failed: no kernel" in int8


def test_tables_cli_writes_markdown_and_plot(runs, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main(["bench", "--tables", *map(str, runs), "-o", str(out)]) == 0
    assert "ReGLA-M" in capsys.readouterr().out
    assert (out / "tables.md").read_text().startswith("# regla bench")
    assert (out / "latency_vs_resolution.png").read_bytes()[:4] == b"\x89PNG"


def test_tables_of_a_folder_without_results_is_exit_2(tmp_path, capsys):
    assert main(["bench", "--tables", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no results.json" in err and str(tmp_path) in err


def _never(*args, **kwargs):
    raise AssertionError("the benchmark ran")


@pytest.mark.parametrize("name,content", [("results.json", "{}"), ("results.csv", "my table\n"),
                                          ("results.md", "# my notes\n"), ("latency_vs_resolution.png", "x")])
def test_bench_never_replaces_a_result_file_it_did_not_write(name, content, tmp_path, capsys, patch):
    """Before any timing: a result file name in --output that no earlier ``regla bench`` run wrote is refused."""
    patch(runner, "run_bench", _never)
    (tmp_path / name).write_text(content)
    assert main(["bench", "--models", "shvit_s1", "--resolutions", "64", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{name} exists and is not a result of an earlier regla bench run" in err
    assert (tmp_path / name).read_text() == content


def test_bench_reuses_the_folder_of_an_earlier_run(runs, capsys):
    """A folder whose results.json is an earlier run's (the bench schema) takes the next run's result files."""
    from regla.bench.cli import output_folder

    folder = runs[0]
    (folder / "results.csv").write_text("an earlier run's table\n")
    (folder / "notes.txt").write_text("the user's own notes: never touched, not refused")
    assert output_folder(str(folder)) == folder


def test_one_table_writer_aligns_and_appends_notes():
    from regla.bench.writers import csv_text, markdown_table

    md = markdown_table(["Model", "ms"], [["a", 1.5], ["b", "-"]], right_from=1, notes=["- [1] why"])
    assert md.splitlines() == ["| Model | ms |", "|---|---:|", "| a | 1.5 |", "| b | - |", "", "- [1] why"]
    assert markdown_table(["x"], []).splitlines() == ["| x |", "|---|"]
    assert csv_text(["a", "b"], [{"a": 1, "b": ""}]) == "a,b\n1,\n"
