"""Bad inputs: unreadable/truncated images are skipped, named and counted; bad folders get clear errors."""

from __future__ import annotations

import json
import warnings

import pytest

from regla.data.errors import DataError
from regla.data.folders import SkipUnreadable
from regla.train.data import build_datasets
from regla.train.trainer import train
from train_helpers import make_folder, tiny_recipe


def corrupt(folder):
    """One truncated PNG and one file that is not an image at all, in the training split."""
    good = folder / "train" / "class_1" / "000.png"
    truncated = folder / "train" / "class_1" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    garbage = folder / "train" / "class_2" / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return {str(truncated.resolve()), str(garbage.resolve())}


def test_corrupt_images_are_skipped_counted_and_named(tmp_path, caplog):
    data = make_folder(tmp_path / "data", classes=3, train_per_class=5, val_per_class=2)
    bad = corrupt(data)
    cfg = tiny_recipe(data, tmp_path / "out", epochs=2, batch_size=4)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING", logger="regla.train"):
        warnings.simplefilter("always")
        result = train(cfg, show_bar=False)
    assert result.last["epoch"] == 2  # the run went to the end
    assert set((result.run_dir / "skipped_images.txt").read_text().split()) == bad
    named = " ".join(str(w.message) for w in caught) + caplog.text
    assert all(p in named for p in bad)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_images"] == 2


def test_skip_wrapper_substitutes_the_next_readable_image(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, train_per_class=3, val_per_class=1)
    corrupt_file = data / "train" / "class_0" / "001.png"
    corrupt_file.write_bytes(b"broken")
    ds = build_datasets(tiny_recipe(data, tmp_path / "o")).train
    assert isinstance(ds, SkipUnreadable)
    idx = [i for i in range(len(ds)) if ds.filename(i, absolute=True).endswith("class_0/001.png")][0]
    with pytest.warns(UserWarning, match="001.png"):
        img, target = ds[idx]
    assert img.size == (16, 16) and ds.filename(idx + 1).endswith("002.png") and target == 0
    assert len(ds.skipped) == 1


def test_missing_and_empty_data_folders(tmp_path, capsys):
    from regla.cli import main

    with pytest.raises(DataError, match="does not exist"):
        build_datasets(tiny_recipe(tmp_path / "nowhere", tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        build_datasets(tiny_recipe(tmp_path / "empty", tmp_path / "o"))
    (tmp_path / "noval" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no 'val/' folder"):
        build_datasets(tiny_recipe(tmp_path / "noval", tmp_path / "o"))
    (tmp_path / "nocls" / "train").mkdir(parents=True)
    (tmp_path / "nocls" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        build_datasets(tiny_recipe(tmp_path / "nocls", tmp_path / "o"))
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written by a run that could not start


def test_class_folder_without_images_is_named(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    (data / "train" / "class_9").mkdir()
    (data / "train" / "class_9" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder\(s\) with no images: .*class_9"):
        build_datasets(tiny_recipe(data, tmp_path / "o"))


def test_val_class_unknown_to_training_set(tmp_path):
    data = make_folder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    make_folder(tmp_path / "extra", classes=3, train_per_class=0, val_per_class=1)
    (tmp_path / "extra" / "val" / "class_2").rename(data / "val" / "class_2")
    with pytest.raises(DataError, match="classes not in the training set: class_2"):
        build_datasets(tiny_recipe(data, tmp_path / "o"))
