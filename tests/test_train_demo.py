"""The `regla train --demo` pipeline, shortened: real digit images through the folder pipeline; it learns."""

from __future__ import annotations

import json

from regla.data.digits import write_digits
from regla.train.config import build_config
from regla.train.demo import DEMO_RECIPE
from regla.train.trainer import train
from train_helpers import MODEL


def test_digits_folder_is_written_once(tmp_path):
    root = write_digits(tmp_path / "digits", limit=100)
    files = sorted(root.glob("*/*/*.png"))
    assert len(files) == 100 and {p.parent.parent.name for p in files} == {"train", "val"}
    assert len({p.parent.name for p in files if p.parent.parent.name == "val"}) == 10  # stratified
    stamp = files[0].stat().st_mtime_ns
    assert write_digits(tmp_path / "digits", limit=100) == root and files[0].stat().st_mtime_ns == stamp


def test_shortened_demo_learns(tmp_path):
    data = write_digits(tmp_path / "digits", limit=600)
    cfg = build_config(None, base={**DEMO_RECIPE, "model": MODEL, "data_dir": str(data), "epochs": 3,
                                   "output": str(tmp_path / "run"), "device": "cpu", "torch_threads": 1})
    result = train(cfg, show_bar=False)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[2]["train_loss"] < rows[0]["train_loss"] < 2.3  # below log(10): it learns from the first epoch
    assert rows[2]["val_loss"] < rows[0]["val_loss"]
    assert rows[2]["top1"] > 70.0  # chance is 10%
