"""The one front door of every trainer (``regla.runs.frontdoor``): the same shared flags on all five, one demo form,
one logging set-up, one device resolver."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import yaml

from regla.cli import build_parser, main
from regla.errors import UsageError
from regla.runs import frontdoor

SHARED = ("--config", "--set", "--resume", "--print-config", "--output", "-o", "--no-progress", "--epochs",
          "--batch-size", "--lr", "--device", "--workers", "--seed", "--amp")
#: each trainer's argv prefix
TRAINERS = {"train": ["train"], "distill": ["distill"], "det train": ["det", "train"], "seg train": ["seg", "train"],
            "sam distill": ["sam", "distill"]}


def _subparser(argv: list[str]):
    parser = build_parser([argv[0]])
    for name in argv:
        action = next(a for a in parser._actions if a.dest in ("command", "action", "sam_command"))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("name", list(TRAINERS))
def test_every_trainer_has_the_shared_flags(name):
    options = {s for a in _subparser(TRAINERS[name])._actions for s in a.option_strings}
    assert not set(SHARED) - options, f"regla {name} lacks {sorted(set(SHARED) - options)}"


def _printed(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("kind", ["det", "seg"])
def test_both_demo_forms_run_the_same_recipe(kind, capsys):
    """``regla det --demo`` (the form every trainer shares) and ``regla det train --demo`` resolve the same recipe,
    ``--set`` and ``--output`` included."""
    short = _printed(capsys, [kind, "--demo", "--print-config", "--set", "epochs=3", "-o", "runs/x"])
    long = _printed(capsys, [kind, "train", "--demo", "--print-config", "--set", "epochs=3", "--output", "runs/x"])
    assert short == long and short["epochs"] == 3 and short["output"] == "runs/x" and short["backbone"] == "regla_t"
    plain = _printed(capsys, [kind, "train", "--print-config"])
    assert plain["output"] != short["output"] and plain["epochs"] != 3  # the demo recipe, not the defaults


def test_the_run_shortcuts_reach_every_recipe(capsys):
    for argv in (["train"], ["distill"], ["det", "train"], ["sam", "distill"]):
        flags = ["--epochs", "30", "--lr", "0.5", "--seed", "7", "--amp", "fp16", "--workers", "3"]
        cfg = _printed(capsys, [*argv, "--print-config", *flags])
        got = (cfg["epochs"], cfg["lr"], cfg["seed"], cfg["amp"], cfg["amp_dtype"], cfg["workers"])
        assert got == (30, 0.5, 7, True, "float16", 3), argv


def test_logging_is_stdout_info_on_rank_0_warnings_elsewhere(monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for rank, level in (("0", logging.INFO), ("1", logging.WARNING)):
            root.handlers.clear()
            monkeypatch.setenv("RANK", rank)
            frontdoor.setup_logging()
            assert root.level == level
            assert [h.stream for h in root.handlers] == [sys.stdout]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_one_device_resolver():
    assert frontdoor.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert frontdoor.resolve_device("cpu") == "cpu"
    with pytest.raises(UsageError, match="--device 'tpu'"):
        frontdoor.resolve_device("tpu")


def test_a_run_is_named_by_its_trainers_key_or_label():
    """The harness takes the run's name beside the recipe; no recipe key is copied into another to give it."""
    from types import SimpleNamespace

    from regla.sam.cli import DISTILL, SAM_DEMO

    cfg = SimpleNamespace(task=SimpleNamespace(student="regla_t_sam", encoder="regla_t_sam", backbone="regla_t"))
    assert frontdoor.run_name(cfg, DISTILL) == "regla_t_sam"
    assert frontdoor.run_name(cfg, SAM_DEMO) == "sam_demo"  # config.yaml and the log line as before
    assert frontdoor.run_name(cfg, frontdoor.Trainer("x", dict, dict, str, name_key="backbone")) == "regla_t"
