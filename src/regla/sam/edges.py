"""Zero-shot edge detection on BSDS500 as in the SAM paper (Kirillov et al. 2023, §7.2 and Appendix D.2; RepViT
Table 4 "z.s. edge."): ``regla sam eval --task edges``.

**Edges from SAM** (:class:`SamEdges`, on segment-anything's ``SamAutomaticMaskGenerator``): a 16x16 regular grid of
foreground points, three masks per point (768), no filtering by predicted IoU or stability; redundant masks removed
by the generator's box NMS (IoU 0.7, its default); the Sobel filter of each remaining mask's unthresholded probability
map (``sigmoid`` of the logits), set to zero away from the mask's boundary (pixels whose 3x3 neighbourhood holds
both mask and background); the pixel-wise max over the masks, linearly normalised to [0, 1]; then edge NMS
(:func:`edge_nms`, the standard lightweight thinning of edge detectors: Dollár and Zitnick's structured-edge NMS
with orientations from second derivatives, radius 1, border suppression 5, multiplier 1.01).

**The BSDS benchmark** (Arbeláez et al., "Contour detection and hierarchical image segmentation", TPAMI 2011: its
``evaluation_bdry_image`` and ``collect_eval_bdry``): 99 thresholds ``t = 0.01 ... 0.99``; at each, the map
``>= t`` thinned to one pixel (:func:`skimage.morphology.thin`, MATLAB's ``bwmorph(.., 'thin', inf)``) and matched
one-to-one to each human boundary map within ``0.0075`` of the image diagonal (:func:`match_edges`); recall counts
the matched pixels of every human map, precision the predicted pixels matched to at least one. ODS: the best F over a
threshold common to the data set (interpolated between thresholds); OIS: each image at its own best threshold; AP:
the area under the data set's precision-recall curve (:func:`bsds_scores`).

The number of matched pixels is exact (a maximum matching); the official ``correspondPixels`` approximates it (see
:func:`match_edges` and docs/sam.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from segment_anything import SamAutomaticMaskGenerator

from ..data.errors import DataError, listed
from ..errors import UsageError

__all__ = ["MAX_DIST", "BsdsData", "EdgeResult", "EdgeSource", "SamEdges", "boundary_counts", "bsds_scores",
           "conv_tri", "edge_nms", "edge_orientation", "evaluate_edges", "load_bsds", "mask_edges", "match_edges",
           "read_boundaries", "thresholds"]

#: BSDS matching tolerance, a fraction of the image diagonal (the benchmark's ``maxDist``).
MAX_DIST = 0.0075
#: Thresholds of the benchmark (``nthresh``).
N_THRESHOLDS = 99
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def thresholds(n: int = N_THRESHOLDS) -> np.ndarray:
    """The benchmark's thresholds: ``linspace(1/(n+1), 1 - 1/(n+1), n)`` (0.01 ... 0.99 for 99)."""
    return np.linspace(1 / (n + 1), 1 - 1 / (n + 1), n)


# --- the benchmark ----------------------------------------------------------------------------------------------

def match_edges(pred: np.ndarray, gt: np.ndarray, max_dist: float = MAX_DIST) -> tuple[np.ndarray, np.ndarray]:
    """Which pixels of two boundary maps correspond: ``(matched pred pixels, matched gt pixels)``, bool ``(H, W)``.

    The benchmark's ``correspondPixels`` matches the pixels one-to-one, two pixels matching only if at most
    ``max_dist * diagonal`` apart, leaving as few unmatched as it can (each unmatched pixel costs 100 tolerances,
    each match its distance). Here the number of matches is exact: a maximum matching of the bipartite graph of
    pixel pairs within the tolerance, as the maximum flow from the predicted to the human pixels (Dinic's algorithm,
    :func:`scipy.sparse.csgraph.maximum_flow`; scipy's Hopcroft-Karp took up to a minute on some maps where this
    takes milliseconds). Among maximum matchings it takes one, not the one of least total distance (docs/sam.md
    says what differs)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow
    from scipy.spatial import cKDTree

    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"boundary maps of shapes {pred.shape} and {gt.shape}: expected the same shape")
    m1, m2 = np.zeros(pred.shape, bool), np.zeros(gt.shape, bool)
    p_pix, g_pix = np.argwhere(pred), np.argwhere(gt)
    if not len(p_pix) or not len(g_pix):
        return m1, m2
    radius = max_dist * math.hypot(*pred.shape)
    pairs = cKDTree(p_pix).sparse_distance_matrix(cKDTree(g_pix), radius, output_type="ndarray")
    if not len(pairs):
        return m1, m2
    n1, n2 = len(p_pix), len(g_pix)
    source, sink = n1 + n2, n1 + n2 + 1  # source -> each pred pixel -> the gt pixels in reach -> sink, capacity 1
    rows = np.concatenate([np.full(n1, source), pairs["i"], n1 + np.arange(n2)])
    cols = np.concatenate([np.arange(n1), n1 + pairs["j"], np.full(n2, sink)])
    network = csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(n1 + n2 + 2,) * 2)
    flow = maximum_flow(network, source, sink, method="dinic").flow.tocoo()
    used = (flow.data > 0) & (flow.row < n1) & (flow.col >= n1) & (flow.col < n1 + n2)
    m1[tuple(p_pix[flow.row[used]].T)] = True
    m2[tuple(g_pix[flow.col[used] - n1].T)] = True
    return m1, m2


def boundary_counts(pb: np.ndarray, gts: Sequence[np.ndarray], thresh: np.ndarray,
                    max_dist: float = MAX_DIST) -> np.ndarray:
    """``(T, 4)`` counts ``cntR, sumR, cntP, sumP`` of one image at each threshold (``evaluation_bdry_image``).

    At each threshold ``t`` the map ``pb >= t`` is thinned, then matched to every human map: ``cntR`` sums their
    matched pixels, ``sumR`` their pixels, ``cntP`` counts the predicted pixels matched in at least one of them and
    ``sumP`` the predicted pixels."""
    from skimage.morphology import thin

    gts = [np.asarray(g, bool) for g in gts]
    sum_r = sum(int(g.sum()) for g in gts)
    out = np.zeros((len(thresh), 4), np.int64)
    for k, t in enumerate(thresh):
        bmap = pb >= t
        if not bmap.any():
            out[k] = 0, sum_r, 0, 0
            continue
        bmap = thin(bmap)
        matched = np.zeros_like(bmap)
        cnt_r = 0
        for g in gts:
            m1, m2 = match_edges(bmap, g, max_dist)
            matched |= m1
            cnt_r += int(m2.sum())
        out[k] = cnt_r, sum_r, int(matched.sum()), int(bmap.sum())
    return out


def _ratio(count: np.ndarray | float, total: np.ndarray | float) -> Any:
    return count / (total + (total == 0))


def fmeasure(r: Any, p: Any) -> Any:
    """The benchmark's F: ``2PR / (P + R)``, 0 where both are 0."""
    return 2 * p * r / (p + r + ((p + r) == 0))


def max_f(thresh: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """The best ``(threshold, recall, precision, F)`` along the curve, interpolated linearly between consecutive
    thresholds at 100 steps (the benchmark's ``maxF``: MATLAB's ``linspace(0, 1)``); the first best wins."""
    d = np.linspace(0, 1, 100)[None, :]

    def along(v: np.ndarray) -> np.ndarray:
        return np.concatenate([v[:1], (v[1:, None] * d + v[:-1, None] * (1 - d)).ravel()])

    ts, rs, ps = along(np.asarray(thresh, float)), along(np.asarray(r, float)), along(np.asarray(p, float))
    fs = fmeasure(rs, ps)
    k = int(np.argmax(fs))
    return float(ts[k]), float(rs[k]), float(ps[k]), float(fs[k])


def average_precision(r: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve as the benchmark computes it (``Area_PR``): one point per distinct
    recall (the last threshold reaching it, as MATLAB's ``unique`` returned when the benchmark was written),
    precision interpolated linearly at recall 0, 0.01, ..., 1 (0 outside the curve's recall range), summed times
    0.01; 0 for a curve with one recall only."""
    last = len(r) - 1 - np.unique(r[::-1], return_index=True)[1]
    ru, pu = r[last], p[last]
    if len(ru) < 2:
        return 0.0
    order = np.argsort(ru)
    pi = np.interp(np.linspace(0, 1, 101), ru[order], pu[order], left=np.nan, right=np.nan)
    return float(np.nan_to_num(pi, nan=0.0).sum() * 0.01)


def bsds_scores(counts: Sequence[np.ndarray], thresh: np.ndarray) -> dict[str, Any]:
    """ODS, OIS and AP of per-image counts (:func:`boundary_counts`), as the benchmark's ``collect_eval_bdry``.

    ODS: the data set's counts summed per threshold, the best F along that curve (:func:`max_f`). OIS: each image's
    counts at the last threshold of its best F, summed, then one F. AP: :func:`average_precision` of the summed
    curve."""
    total = np.sum(counts, axis=0).astype(float)
    r, p = _ratio(total[:, 0], total[:, 1]), _ratio(total[:, 2], total[:, 3])
    t_ods, r_ods, p_ods, f_ods = max_f(thresh, r, p)
    best = np.zeros(4)
    for c in counts:
        f = fmeasure(_ratio(c[:, 0], c[:, 1]), _ratio(c[:, 2], c[:, 3]))
        best += c[len(f) - 1 - int(np.argmax(f[::-1]))]
    r_ois, p_ois = float(_ratio(best[0], best[1])), float(_ratio(best[2], best[3]))
    return {"ODS": f_ods, "ODS_threshold": t_ods, "ODS_recall": r_ods, "ODS_precision": p_ods,
            "OIS": float(fmeasure(r_ois, p_ois)), "OIS_recall": r_ois, "OIS_precision": p_ois,
            "AP": average_precision(r, p),
            "curve": [{"threshold": float(t), "recall": float(a), "precision": float(b), "F": float(fmeasure(a, b))}
                      for t, a, b in zip(thresh, r, p, strict=True)]}


def image_scores(name: str, counts: np.ndarray, thresh: np.ndarray) -> dict[str, Any]:
    """One image's best threshold, recall, precision and F (interpolated: the benchmark's ``eval_bdry_img.txt``)."""
    t, r, p, f = max_f(thresh, _ratio(counts[:, 0], counts[:, 1]), _ratio(counts[:, 2], counts[:, 3]))
    return {"name": name, "threshold": t, "recall": r, "precision": p, "F": f}


# --- edges from SAM ---------------------------------------------------------------------------------------------

def conv_tri(image: np.ndarray, r: int) -> np.ndarray:
    """Dollár's ``convTri`` for an integer radius ``r >= 1``: the separable triangle filter ``[1 .. r+1 .. 1] /
    (r+1)^2`` with symmetric padding (scipy's ``reflect``)."""
    from scipy.ndimage import convolve1d

    f = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]) / (r + 1) ** 2
    return convolve1d(convolve1d(image, f, axis=0, mode="reflect"), f, axis=1, mode="reflect")


def edge_orientation(edges: np.ndarray, r: int = 4) -> np.ndarray:
    """Edge normal orientation in ``[0, pi)`` from second derivatives of the smoothed map (Dollár's
    ``edgeOrient``: ``mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi)``), x along columns, y along rows."""
    oy, ox = np.gradient(conv_tri(edges, r))
    oxx = np.gradient(ox, axis=1)
    oxy, oyy = np.gradient(oy, axis=1), np.gradient(oy, axis=0)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def edge_nms(edges: np.ndarray, orient: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01) -> np.ndarray:
    """Edge non-maximum suppression as Dollár's ``edgesNmsMex``: a pixel is zeroed if ``m`` times its value is below
    the map's bilinear value at distance ``1 .. r`` on either side along ``orient``; then values within ``s`` px of
    the border are scaled down linearly (noisy there)."""
    from scipy.ndimage import map_coordinates

    h, w = edges.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    keep = edges > 0
    for d in [k for k in range(-r, r + 1) if k]:
        x = np.clip(cols + d * np.cos(orient), 0, w - 1.001)
        y = np.clip(rows + d * np.sin(orient), 0, h - 1.001)
        keep &= ~(edges * m < map_coordinates(edges, [y, x], order=1))
    out = np.where(keep, edges, 0.0)
    s = min(s, w // 2, h // 2)
    for k in range(s):
        out[:, k] *= k / s
        out[:, w - 1 - k] *= k / s
        out[k, :] *= k / s
        out[h - 1 - k, :] *= k / s
    return out


def mask_edges(probs: Any, masks: Any) -> Any:
    """``(N, H, W)`` Sobel magnitude of each probability map, zero away from its mask's boundary (pixels whose 3x3
    neighbourhood holds both mask and background; the image border is no boundary). Torch tensors in and out."""
    import torch
    import torch.nn.functional as F

    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=probs.device)
    kernels = torch.stack([kx, kx.T])[:, None].to(probs.dtype)
    g = F.conv2d(F.pad(probs[:, None], (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = g.pow(2).sum(1).sqrt()
    m = masks[:, None].to(probs.dtype)
    boundary = F.max_pool2d(m, 3, 1, 1) != -F.max_pool2d(-m, 3, 1, 1)
    return magnitude * boundary[:, 0]


class EdgeSource(Protocol):
    """Edge maps of images (the interface :class:`SamEdges` implements; the tests put an oracle in its place)."""

    def edge_map(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> ``(H, W)`` edge strength in [0, 1]."""


class SamEdges(SamAutomaticMaskGenerator):
    """SAM's zero-shot edge maps (SAM Appendix D.2) on segment-anything's automatic mask generator: its point grid,
    batching, predictor and box NMS, with no IoU or stability filtering and one crop (the whole image)."""

    def __init__(self, sam: Any, points_per_side: int = 16, points_per_batch: int = 64,
                 box_nms_thresh: float = 0.7) -> None:
        super().__init__(sam, points_per_side=points_per_side, points_per_batch=points_per_batch,
                         pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=box_nms_thresh,
                         crop_n_layers=0)

    def edge_map(self, rgb: np.ndarray) -> np.ndarray:
        """The normalised, NMS-thinned edge map of one image (see the module docstring)."""
        import torch
        from segment_anything.utils.amg import MaskData, batch_iterator
        from torchvision.ops import batched_nms

        h, w = rgb.shape[:2]
        with torch.no_grad():
            self.predictor.set_image(rgb, image_format="RGB")
            data = MaskData()
            for (points,) in batch_iterator(self.points_per_batch, self.point_grids[0] * np.array([[w, h]])):
                data.cat(self._edge_batch(points, (h, w)))
            self.predictor.reset_image()
            keep = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros_like(data["iou_preds"]),
                               iou_threshold=self.box_nms_thresh)
            data.filter(keep)
            flat = torch.zeros(h * w, device=data["iou_preds"].device)
            if data["edge_index"]:
                flat.scatter_reduce_(0, torch.cat(data["edge_index"]), torch.cat(data["edge_value"]), reduce="amax")
        edges = flat.view(h, w).double().cpu().numpy()
        lo, hi = edges.min(), edges.max()
        edges = (edges - lo) / (hi - lo) if hi > lo else np.zeros_like(edges)
        return edge_nms(edges, edge_orientation(edges))

    def _edge_batch(self, points: np.ndarray, hw: tuple[int, int]) -> Any:
        """Three masks per point (logits at the image's size), their boxes, predicted IoUs and sparse edges."""
        import torch
        from segment_anything.utils.amg import MaskData, batched_mask_to_box

        p = self.predictor
        coords = torch.as_tensor(p.transform.apply_coords(points, hw), dtype=torch.float32, device=p.device)
        labels = torch.ones(len(coords), dtype=torch.int, device=p.device)
        logits, iou_preds, _ = p.predict_torch(coords[:, None], labels[:, None], multimask_output=True,
                                               return_logits=True)
        logits = logits.flatten(0, 1)
        masks = logits > p.model.mask_threshold
        flat = mask_edges(torch.sigmoid(logits.float()), masks).flatten(1)
        index = [row.nonzero().squeeze(1) for row in flat]
        return MaskData(iou_preds=iou_preds.flatten(0, 1).float(), boxes=batched_mask_to_box(masks),
                        edge_index=index, edge_value=[row[i] for row, i in zip(flat, index, strict=True)])


# --- data -------------------------------------------------------------------------------------------------------

@dataclass
class BsdsData:
    """A checked BSDS500-layout split: image and ground-truth files, paired by name."""

    root: Path
    split: str
    names: list[str]
    images: list[Path]
    truths: list[Path]


def read_boundaries(path: Path, hw: tuple[int, int] | None = None) -> list[np.ndarray]:
    """The human boundary maps of a BSDS ground-truth ``.mat`` (``groundTruth{i}.Boundaries``), bool ``(H, W)``;
    a DataError naming the file if it is not one or (``hw``) its maps are not the image's size."""
    from scipy.io import loadmat

    expected = "a BSDS500 ground truth (.mat with groundTruth{i}.Boundaries)"
    try:
        cells = loadmat(str(path), simplify_cells=True).get("groundTruth")
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, OSError ... for a bad file
        raise DataError(f"{path}: cannot be read as a MATLAB file ({type(e).__name__}); expected {expected}") from None
    cells = [cells] if isinstance(cells, dict) else cells
    if not isinstance(cells, (list, np.ndarray)) or not len(cells) or not all(
            isinstance(c, dict) and isinstance(c.get("Boundaries"), np.ndarray) for c in cells):
        raise DataError(f"{path}: no groundTruth{{i}}.Boundaries; expected {expected}")
    maps = [np.asarray(c["Boundaries"]) != 0 for c in cells]
    for k, b in enumerate(maps):
        if b.ndim != 2 or (hw is not None and b.shape != tuple(hw)):
            size = "x".join(map(str, b.shape[::-1]))
            raise DataError(f"{path}: boundary map {k + 1} is {size}, not the image's {hw[1]}x{hw[0]}"
                            if hw is not None else f"{path}: boundary map {k + 1} is not 2-D")
    return maps


def load_bsds(root: str | Path, split: str = "test", max_images: int | None = None) -> BsdsData:
    """Check a BSDS500 layout (``images/<split>/*.jpg`` and ``groundTruth/<split>/*.mat``, the official release's)
    before any model is built: every image has a ground truth of its size and reads as an image; one-line errors."""
    from ..data.images import Unreadable, probe
    from ..preflight import existing_dir

    root = existing_dir(root, "--data")
    layout = f"{root}/images/{split}/*.jpg and {root}/groundTruth/{split}/*.mat (BSDS500's layout)"
    image_dir, truth_dir = root / "images" / split, root / "groundTruth" / split
    for d in (image_dir, truth_dir):
        if not d.is_dir():
            raise UsageError(f"--data {root}: no folder {d}; expected {layout}")
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    truths = {p.stem: p for p in sorted(truth_dir.glob("*.mat"))}
    if not images:
        raise UsageError(f"--data {root}: no image in {image_dir}; expected {layout}")
    missing = sorted(set(images) - set(truths))
    if missing:
        raise DataError(f"--data {root}: no ground truth in {truth_dir} for {len(missing)} image(s): "
                        f"{listed([n + '.mat' for n in missing])}")
    names = sorted(images)[:max_images]
    for n in names:
        try:
            w, h = probe(images[n])
        except Unreadable as e:
            raise DataError(f"{images[n]}: cannot be read as an image ({e})") from None
        read_boundaries(truths[n], (h, w))
    return BsdsData(root, split, names, [images[n] for n in names], [truths[n] for n in names])


# --- the evaluation ---------------------------------------------------------------------------------------------

@dataclass
class EdgeResult:
    """``scores`` (ODS, OIS, AP, the curve, counts) and one record per image (its best threshold and F)."""

    scores: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)


def _score_image(pb: np.ndarray, truth: Path, thresh: np.ndarray, max_dist: float) -> np.ndarray:
    return boundary_counts(pb, read_boundaries(truth), thresh, max_dist)


def evaluate_edges(source: EdgeSource, data: BsdsData, workers: int = 1, max_dist: float = MAX_DIST,
                   show_bar: bool = False) -> EdgeResult:
    """Edge maps of every image from ``source``, scored with the BSDS benchmark (module docstring); ``workers``
    processes match the maps while the next ones are computed (1: in this process)."""
    from concurrent.futures import Future, ProcessPoolExecutor

    from tqdm import tqdm

    from ..data.images import decode

    thresh = thresholds()
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    pending: list[Future | np.ndarray] = []
    submit: Callable[..., Any] = pool.submit if pool is not None else (lambda f, *a: f(*a))
    try:
        for image, truth in tqdm(list(zip(data.images, data.truths, strict=True)), desc="sam edges", unit="img",
                                 disable=not show_bar):
            pb = np.asarray(source.edge_map(decode(image, "BSDS image")), np.float64)
            pending.append(submit(_score_image, pb, truth, thresh, max_dist))
        counts = [c.result() if pool is not None else c for c in pending]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    scores = {"images": len(counts), "thresholds": len(thresh), "max_dist": max_dist, **bsds_scores(counts, thresh)}
    return EdgeResult(scores, [image_scores(n, c, thresh) for n, c in zip(data.names, counts, strict=True)])
