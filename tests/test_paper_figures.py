"""``regla plot --paper fig1|fig4``: ReGLA's Fig. 1 and Fig. 4 from the paper's numbers or a results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from regla.bench import paper_figures
from regla.bench.paper_figures import TABLE1_PARAMS, TABLE2, published
from regla.cli import main
from regla.outputs import png_text, png_written_by

FIG4 = {  # made-up numbers in the results-file format (the paper prints none)
    "ReGLA-T": {"params": 3.8, "knn_in1k": 60.0, "knn_cifar100": 70.0, "miou": 38.0},
    "ReGLA-M": {"params": 9.6, "knn_in1k": 66.0, "knn_cifar100": None, "miou": 44.0, "source": "my run"},
}


@pytest.fixture
def no_drawing(monkeypatch):
    """Any drawing fails the test: a bad input must be refused before the figure is drawn."""
    def tripwire(*args, **kwargs):
        raise AssertionError("drew a figure from bad input")

    monkeypatch.setattr(paper_figures, "draw", tripwire)


def test_fig1_default_is_regla_table_2():
    data = published("fig1")
    assert len(data) == 29 and all(m["source"] == "ReGLA Table 2" for m in data.values())
    picks = {k: (data[k]["params"], data[k]["top1"]) for k in ("ReGLA-T", "ReGLA-M", "iFormer-M", "RepViT-M1.5",
                                                                  "MobileOne-S3", "ReGLA-X", "MNV4-hybrid-L")}
    assert picks == {"ReGLA-T": (3.8, 76.4), "ReGLA-M": (9.6, 80.85), "iFormer-M": (8.9, 80.4),
                     "RepViT-M1.5": (14.6, 81.2), "MobileOne-S3": (10.07, 80.0), "ReGLA-X": (39.8, 83.7),
                     "MNV4-hybrid-L": (48.6, 83.4)}
    # ReGLA's rows of Table 2 carry Table 1's parameter counts, the x axis of Fig. 4
    assert {k: v[1] for k, v in TABLE2.items() if v[0] == "ReGLA"} == TABLE1_PARAMS


def test_fig4_default_is_a_template_with_table_1_sizes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "--paper", "fig4", "--print-data"]) == 0
    template = yaml.safe_load(capsys.readouterr().out)
    assert {k: v["params"] for k, v in template.items()} == {"ReGLA-T": 3.8, "ReGLA-S": 6.4, "ReGLA-M": 9.6,
                                                            "ReGLA-L": 19.9, "ReGLA-X": 39.8}
    assert all(v["knn_in1k"] is None and v["miou"] is None for v in template.values())
    assert main(["plot", "--paper", "fig4"]) == 2  # nothing to draw until the user fills it in
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no value to draw for fig4" in err[0] and "--print-data" in err[0]
    assert not list(tmp_path.iterdir())


def test_fig1_draws_the_published_figures_to_the_default_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "--paper", "fig1"]) == 0
    out = tmp_path / "paper_fig1.png"
    assert png_written_by(out, "regla plot --paper") and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {Path('paper_fig1.png')}" in capsys.readouterr().out
    assert main(["plot", "--paper", "fig1"]) == 0  # its own earlier figure may be replaced


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_fig4_draws_a_results_file(fmt, tmp_path):
    results = tmp_path / f"fig4.{fmt}"
    results.write_text(yaml.safe_dump(FIG4) if fmt == "yaml" else json.dumps(FIG4))
    out = tmp_path / "figs"
    out.mkdir()
    assert main(["plot", "--paper", "fig4", "--results", str(results), "-o", str(out)]) == 0
    assert png_text(out / "paper_fig4.png")["Software"] == "regla plot --paper"


def test_print_data_round_trips_through_results(tmp_path, capsys):
    assert main(["plot", "--paper", "fig1", "--print-data"]) == 0
    (tmp_path / "mine.yaml").write_text(capsys.readouterr().out)
    models = paper_figures.read_results(tmp_path / "mine.yaml", "fig1")
    assert models["ReGLA-M"] == {"params": 9.6, "top1": 80.85, "knn_in1k": None, "knn_cifar100": None,
                                 "miou": None, "family": "ReGLA", "source": "ReGLA Table 2"}


BAD = {
    "not a mapping": ("[1, 2]\n", "expected a mapping of model name"),
    "empty": ("{}\n", "got an empty mapping"),
    "not yaml": ("ReGLA-T: {params: 3.8\n", "not valid YAML or JSON"),
    "entry not a mapping": ("ReGLA-T: 76.4\n", "model 'ReGLA-T': expected a mapping"),
    "unknown key": ("ReGLA-T: {params: 3.8, top-1: 76.4}\n", "unknown key 'top-1'"),
    "no params": ("ReGLA-T: {top1: 76.4}\n", "params = None"),
    "params zero": ("ReGLA-T: {params: 0, top1: 76.4}\n", "params = 0"),
    "score text": ("ReGLA-T: {params: 3.8, top1: high}\n", "top1 = 'high': expected a percentage"),
    "score above 100": ("ReGLA-T: {params: 3.8, top1: 764}\n", "top1 = 764"),
    "score bool": ("ReGLA-T: {params: 3.8, top1: true}\n", "top1 = True"),
    "family number": ("ReGLA-T: {params: 3.8, top1: 76.4, family: 3}\n", "family = 3: expected a text"),
    "nothing for fig1": ("ReGLA-T: {params: 3.8, miou: 40.0}\n", "no value to draw for fig1"),
}


@pytest.mark.parametrize("text,says", BAD.values(), ids=BAD.keys())
def test_bad_results_file_exits_2_in_one_line(text, says, tmp_path, capsys, no_drawing):
    results = tmp_path / "r.yaml"
    results.write_text(text)
    code = main(["plot", "--paper", "fig1", "--results", str(results), "-o", str(tmp_path / "f.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("regla plot: error: --results ") and says in err[0]
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("argv,says", [
    (["--paper", "fig1", "{run}"], "not from run folders"),
    (["--results", "{res}"], "go with --paper"),
    (["--paper", "fig1", "--results", "{missing}"], "file does not exist"),
    (["--paper", "fig1", "-o", "{out}/f.pdf"], "give a path ending in .png"),
    (["--paper", "fig1", "--results", "{respng}", "-o", "{respng}"], "is an input of this command"),
])
def test_bad_flags_exit_2_in_one_line(argv, says, tmp_path, capsys, no_drawing):
    res = tmp_path / "r.yaml"
    res.write_text(yaml.safe_dump({"ReGLA-T": {"params": 3.8, "top1": 76.4}}))
    respng = tmp_path / "results.png"  # a results file named like the output
    respng.write_text(res.read_text())
    (tmp_path / "run").mkdir()
    fill = {"run": tmp_path / "run", "res": res, "respng": respng, "missing": tmp_path / "nope.yaml", "out": tmp_path}
    assert main(["plot", *[a.format(**fill) for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_never_replaces_a_file_it_did_not_draw(tmp_path, monkeypatch, capsys):
    """Not the user's PNG at -o, nor a file of theirs at the default name, nor a curves PNG of `regla plot`."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "paper_fig1.png"
    mine.write_bytes(b"the user's own picture")
    assert main(["plot", "--paper", "fig1"]) == 2
    assert "exists and is not a PNG drawn by regla plot --paper" in capsys.readouterr().err
    assert mine.read_bytes() == b"the user's own picture"
    # a real PNG drawn by another regla writer (run curves) is not this command's either
    other = tmp_path / "curves.png"
    from regla.bench.plots import _plt, _png

    fig, _ = _plt().subplots()
    other.write_bytes(_png(fig, metadata={"Software": "regla plot"}))
    before = other.read_bytes()
    assert main(["plot", "--paper", "fig1", "-o", str(other)]) == 2
    assert other.read_bytes() == before
