"""COCO AP and mIoU: the metric code is checked against known answers, not just run."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch

from regla.eval.metrics import COCO_STATS, IoUMeter, coco_evaluate, coco_results, coco_scores


def synthetic_coco(n: int = 4, size: int = 60):
    """Images of 400x400 with ``n`` separated squares of side ``size`` (category 1 and 2 alternating); category 3
    ("c") has no instance."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    anns, k = [], 0
    for image_id in (1, 2):
        for i in range(n):
            x, y = 10 + 90 * i, 20 + 100 * (i % 2)
            m = np.zeros((400, 400), np.uint8)
            m[y:y + size, x:x + size] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            k += 1
            anns.append({"id": k, "image_id": image_id, "category_id": 1 + i % 2, "iscrowd": 0,
                         "bbox": [x, y, size, size], "area": size * size,
                         "segmentation": {"size": [400, 400], "counts": rle["counts"].decode()}})
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "height": 400, "width": 400, "file_name": f"{i}.png"} for i in (1, 2)],
                    "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"},
                                                      {"id": 3, "name": "c"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def outputs_from(coco, shift: float = 0.0, label_swap: bool = False, shift_cats: tuple[int, ...] = (1, 2)):
    """torchvision-style outputs equal to the ground truth, each box and mask of a category in ``shift_cats``
    shifted right by ``shift`` x side."""
    outs = []
    for image_id in (1, 2):
        anns = coco.imgToAnns[image_id]
        boxes, masks = [], []
        for a in anns:
            x, y, w, h = a["bbox"]
            dx = round(shift * w) if a["category_id"] in shift_cats else 0
            boxes.append([x + dx, y, x + w + dx, y + h])
            m = torch.from_numpy(coco.annToMask(a)).float()
            masks.append(torch.roll(m, dx, 1))
        labels = [a["category_id"] for a in anns]
        if label_swap:
            labels = [3 - c for c in labels]
        outs.append((image_id, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                                "scores": torch.linspace(0.9, 0.5, len(anns)), "masks": torch.stack(masks)[:, None]}))
    return outs


def test_ground_truth_scores_ap_100() -> None:
    coco = synthetic_coco()
    scores = coco_scores(coco, coco_results(outputs_from(coco), [1, 2]))
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75", "bbox_APm"):
        assert scores[key] == pytest.approx(100.0)
    assert scores["bbox_APs"] == 0.0 and scores["bbox_APl"] == 0.0  # no ground truth in those ranges


def test_shifted_predictions_score_what_their_iou_allows() -> None:
    # a shift of 20% of the side gives IoU (1 - 0.2) / (1 + 0.2) = 0.667: above the thresholds 0.50..0.65 (4 of 10)
    coco = synthetic_coco()
    scores = coco_scores(coco, coco_results(outputs_from(coco, shift=0.2), [1, 2]))
    for kind in ("bbox", "segm"):
        assert scores[f"{kind}_AP50"] == pytest.approx(100.0)
        assert scores[f"{kind}_AP75"] == pytest.approx(0.0)
        assert scores[f"{kind}_AP"] == pytest.approx(40.0)


def test_wrong_classes_score_zero_and_no_detections_too() -> None:
    coco = synthetic_coco()
    assert coco_scores(coco, coco_results(outputs_from(coco, label_swap=True), [1, 2]))["bbox_AP"] == 0.0
    assert coco_scores(coco, [])["segm_AP50"] == 0.0


def test_per_class_ap50_from_the_precision_array() -> None:
    # category "b" shifted by 60% of the side: IoU 0.4 / 1.6 = 0.25 < 0.5, so its AP50 is 0 while "a" stays at 100;
    # "c" has no ground truth (precision -1 throughout): None, and left out of the mean that AP50 is
    coco = synthetic_coco()
    scores, per_class = coco_evaluate(coco, coco_results(outputs_from(coco, shift=0.6, shift_cats=(2,)), [1, 2, 3]))
    for kind in ("bbox", "segm"):
        assert per_class[kind]["a"] == pytest.approx(100.0) and per_class[kind]["b"] == pytest.approx(0.0)
        assert per_class[kind]["c"] is None
        assert scores[f"{kind}_AP50"] == pytest.approx(50.0)


def test_per_class_ap50_counts_recall_thresholds() -> None:
    # "a" has 4 instances; the two of image 1 are found (best scores), those of image 2 are shifted off (IoU 0.25):
    # precision 1 up to recall 0.5, then nothing: 51 of pycocotools' 101 recall thresholds -> 100 * 51 / 101
    coco = synthetic_coco()
    outs = outputs_from(coco)
    outs[1] = outputs_from(coco, shift=0.6)[1]
    outs[1][1]["scores"] = outs[1][1]["scores"] - 0.5  # below every score of image 1
    _, per_class = coco_evaluate(coco, coco_results(outs, [1, 2, 3]), iou_types=("bbox",))
    assert per_class["bbox"]["a"] == pytest.approx(100 * 51 / 101)
    assert per_class["bbox"]["b"] == pytest.approx(100 * 51 / 101)


def test_per_class_ap50_without_detections() -> None:
    coco = synthetic_coco()
    assert coco_evaluate(coco, [])[1]["segm"] == {"a": 0.0, "b": 0.0, "c": None}
    assert coco_evaluate(coco, [], image_ids=[1])[1]["bbox"] == {"a": 0.0, "b": 0.0, "c": None}


def test_results_are_coco_format() -> None:
    coco = synthetic_coco()
    res = coco_results(outputs_from(coco), [1, 2])
    assert res[0]["bbox"] == [10.0, 20.0, 60.0, 60.0] and res[0]["category_id"] == 1
    assert set(res[0]) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert isinstance(res[0]["segmentation"]["counts"], str)


def _coco_of(masks: list[np.ndarray]):
    """A one-image COCO ground truth (category 1) with the given binary masks, boxes tight around them."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    h, w = masks[0].shape
    anns = []
    for k, m in enumerate(masks, 1):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append({"id": k, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": float(mask_utils.area(rle)),
                     "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                     "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "height": h, "width": w, "file_name": "1.png"}], "annotations": anns,
                    "categories": [{"id": 1, "name": "a"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _masks_only_stats(coco, results) -> list[float]:
    """pycocotools' segm stats (percent) of ``results`` given as masks alone, as torchvision's reference evaluation
    (``prepare_for_coco_segmentation``), detectron2 and mmdet give them."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes([{k: v for k, v in r.items() if k != "bbox"} for r in results]), "segm")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return [max(float(v), 0.0) * 100 for v in ev.stats[:6]]


def _square(size: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_segm_size_ranges_use_mask_areas() -> None:
    """One 40x40 ground truth (medium), its true positive at score 0.5, and a false positive at 0.75 whose mask is
    240 px (small) in a 60x40 box (medium). By mask area the false positive is outside the medium range: APm 100
    (pycocotools on the masks alone); by box area it would be inside it: APm 50. Box APm stays 50."""
    gt = _square(128, 10, 50, 10, 50)
    coco = _coco_of([gt])
    fp = _square(128, 80, 92, 70, 90)
    assert fp.sum() == 240
    out = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 70.0, 120.0, 110.0]]),
           "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.5, 0.75]),
           "masks": torch.from_numpy(np.stack([gt, fp])).float()[:, None]}
    results = coco_results([(1, out)], [1])
    scores = coco_scores(coco, results)
    assert scores["segm_APm"] == pytest.approx(100.0)
    assert scores["bbox_APm"] == pytest.approx(50.0)
    assert scores["segm_AP"] == pytest.approx(50.0) and scores["bbox_AP"] == pytest.approx(50.0)
    assert [scores[f"segm_{k}"] for k in COCO_STATS] == pytest.approx(_masks_only_stats(coco, results))
    assert all("bbox" in r for r in results)  # the caller's results are left as they were


def test_segm_scores_equal_pycocotools_on_masks_alone_on_random_sets() -> None:
    """Random squares of all three sizes and random detections whose boxes are looser than their masks: every segm
    stat equals pycocotools' on the masks alone."""
    rng = np.random.default_rng(0)
    size = 256
    gts = [_square(size, y, y + s, x, x + s) for s, y, x in
           ((int(rng.integers(8, 120)), *rng.integers(0, 128, 2)) for _ in range(12))]
    coco = _coco_of(gts)
    boxes, masks = [], []
    for _ in range(30):
        s, y, x = int(rng.integers(8, 120)), *(int(v) for v in rng.integers(0, 128, 2))
        pad = int(rng.integers(0, 40))
        masks.append(_square(size, y, y + s, x, x + s))
        boxes.append([max(x - pad, 0), max(y - pad, 0), min(x + s + pad, size), min(y + s + pad, size)])
    for g in gts[:6]:  # some true positives too
        ys, xs = np.nonzero(g)
        masks.append(g)
        boxes.append([xs.min() - 20.0, ys.min() - 20.0, xs.max() + 21.0, ys.max() + 21.0])
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.ones(len(boxes), dtype=torch.long),
           "scores": torch.from_numpy(rng.random(len(boxes))).float(),
           "masks": torch.from_numpy(np.stack(masks)).float()[:, None]}
    results = coco_results([(1, out)], [1])
    scores = coco_scores(coco, results, iou_types=("segm",))
    assert [scores[f"segm_{k}"] for k in COCO_STATS] == pytest.approx(_masks_only_stats(coco, results), abs=1e-9)


def test_segm_needs_masks() -> None:
    coco = synthetic_coco()
    results = coco_results(outputs_from(coco), [1, 2], masks=False)
    assert coco_scores(coco, results, iou_types=("bbox",))["bbox_AP"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="segmentation"):
        coco_scores(coco, results, iou_types=("segm",))


def brute_force_miou(preds, labels, n: int, ignore: int = 255) -> tuple[float, float]:
    ious, correct, total = [], 0, 0
    for c in range(n):
        inter = union = 0
        for p, lab in zip(preds, labels, strict=True):
            valid = lab != ignore
            inter += int(((p == c) & (lab == c) & valid).sum())
            union += int((((p == c) | (lab == c)) & valid).sum())
        if union:
            ious.append(inter / union)
    for p, lab in zip(preds, labels, strict=True):
        valid = lab != ignore
        correct += int(((p == lab) & valid).sum())
        total += int(valid.sum())
    return float(np.mean(ious)) * 100, correct / total * 100


def test_miou_equals_a_brute_force_count_on_random_maps() -> None:
    g = torch.Generator().manual_seed(0)
    n = 7
    preds = [torch.randint(0, n, (31, 17), generator=g) for _ in range(3)]
    labels = [torch.randint(0, n - 1, (31, 17), generator=g) for _ in range(3)]  # class 6 only ever predicted
    for lab in labels:
        lab[torch.rand(lab.shape, generator=g) < 0.2] = 255
    meter = IoUMeter(n)
    for p, lab in zip(preds, labels, strict=True):
        meter.update(p, lab)
    miou, acc = brute_force_miou(preds, labels, n)
    assert meter.scores()["mIoU"] == pytest.approx(miou)
    assert meter.scores()["aAcc"] == pytest.approx(acc)


def test_miou_known_values() -> None:
    label = torch.zeros(4, 4, dtype=torch.long)
    label[:, 2:] = 1
    perfect = IoUMeter(5)
    perfect.update(label, label)
    assert perfect.scores() == {"mIoU": 100.0, "mAcc": 100.0, "aAcc": 100.0}  # classes 2-4 absent: not counted
    half = IoUMeter(5)
    half.update(torch.zeros(4, 4, dtype=torch.long), label)  # all predicted 0: IoU 0.5 and 0
    assert half.scores()["mIoU"] == pytest.approx(25.0) and half.scores()["aAcc"] == pytest.approx(50.0)
    assert torch.isnan(half.per_class_iou()[2])


def mmseg_intersect_and_union(pred, label, num_classes: int, ignore_index: int = 255):
    """mmseg's ``IoUMetric.intersect_and_union`` (mmseg/evaluation/metrics/iou_metric.py): ignore-index pixels
    masked, then ``torch.histc`` over 0..num_classes-1 of the intersection, prediction and label."""
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    hist = [torch.histc(t.float(), bins=num_classes, min=0, max=num_classes - 1)
            for t in (pred[pred == label], pred, label)]
    return hist[0], hist[1] + hist[2] - hist[0], hist[1], hist[2]


def mmseg_scores(preds, labels, num_classes: int) -> dict[str, float]:
    """mmseg's ``compute_metrics`` for mIoU: areas summed over the set, ``np.nanmean`` of the per-class ratios."""
    areas = [sum(x) for x in zip(*(mmseg_intersect_and_union(p, lab, num_classes)
                                   for p, lab in zip(preds, labels, strict=True)), strict=True)]
    inter, union, _, area_label = (a.double().numpy() for a in areas)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN
        return {"mIoU": float(np.nanmean(inter / union)) * 100, "mAcc": float(np.nanmean(inter / area_label)) * 100,
                "aAcc": float(inter.sum() / area_label.sum()) * 100}


def test_label_outside_the_classes_counts_the_prediction_as_mmseg() -> None:
    """Label 7 of 3 classes (not the ignore index): the pixel stays, its prediction (class 1) adds to class 1's
    union, its label counts nowhere. IoU: class 0 = 1, class 1 = 0 / 1, class 2 absent: mIoU 50 (dropping the
    pixel would give 100)."""
    pred, label = torch.tensor([[0, 1]]), torch.tensor([[0, 7]])
    meter = IoUMeter(3)
    meter.update(pred, label)
    assert meter.scores() == {"mIoU": pytest.approx(50.0), "mAcc": pytest.approx(100.0), "aAcc": pytest.approx(100.0)}
    assert meter.scores() == pytest.approx(mmseg_scores([pred], [label], 3))


def test_all_ignore_labels_score_nan_as_mmseg() -> None:
    meter = IoUMeter(3)
    meter.update(torch.tensor([[0, 1, 2]]), torch.full((1, 3), 255))
    scores = meter.scores()
    assert all(np.isnan(v) for v in scores.values()), scores
    reference = mmseg_scores([torch.tensor([[0, 1, 2]])], [torch.full((1, 3), 255)], 3)
    assert all(np.isnan(v) for v in reference.values())
    meter.update(torch.tensor([[0]]), torch.tensor([[0]]))  # one labelled pixel elsewhere in the set: it counts
    assert meter.scores() == {"mIoU": pytest.approx(100.0), "mAcc": pytest.approx(100.0), "aAcc": pytest.approx(100.0)}


def test_miou_equals_mmseg_on_random_maps_with_odd_labels() -> None:
    """Random maps with ignored pixels, labels outside the classes and one all-ignore image: equal to mmseg."""
    g = torch.Generator().manual_seed(1)
    n = 6
    preds = [torch.randint(0, n, (23, 19), generator=g) for _ in range(4)]
    labels = [torch.randint(0, n + 3, (23, 19), generator=g) for _ in range(4)]  # n..n+2: outside the classes
    for lab in labels:
        lab[torch.rand(lab.shape, generator=g) < 0.2] = 255
    labels[2][:] = 255
    meter = IoUMeter(n)
    for p, lab in zip(preds, labels, strict=True):
        meter.update(p, lab)
    assert meter.scores() == pytest.approx(mmseg_scores(preds, labels, n), abs=1e-9)


def test_seg_scores_name_the_per_class_iou() -> None:
    from regla.dense.evaluate import seg_scores

    label = torch.zeros(4, 4, dtype=torch.long)
    label[:, 2:] = 1
    meter = IoUMeter(3)
    pred = label.clone()
    pred[0, 2] = 0  # one "cat" pixel predicted "background": IoU 8/9 and 7/8 (rounded to 0.01)
    meter.update(pred, label)
    per_class = seg_scores(meter, ["background", "cat", "dog"])["per_class_IoU"]
    assert per_class == {"background": pytest.approx(88.89), "cat": pytest.approx(87.5), "dog": None}
