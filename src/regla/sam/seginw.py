"""Segmentation in the Wild (SegInW) as the SAM-family papers report it (RepViT Table 4 "SegInW Mean AP", following
HQ-SAM, "Segment Anything in High Quality", Ke et al. 2023): ``regla sam eval --task seginw``.

SegInW (from the X-Decoder / SEEM line's "Segmentation in the Wild" challenge) is 25 small COCO-format instance
sets, each ``<root>/<set>/<split>/`` holding its images and ``_annotations_min1cat.coco.json``. Each set is
evaluated as the COCO box-prompt protocol of :mod:`regla.sam.evaluate` evaluates one set (one mask per detector box,
``multimask_output=False``, the detector's category and score kept, mask AP with pycocotools); the detector's boxes
come from one COCO results file per set, ``<boxes>/<set>.json`` (HQ-SAM uses Grounding DINO Swin-B's). The score is
the mean of the 25 sets' mask AP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.errors import listed
from ..errors import UsageError
from .evaluate import EvalData, MaskSource, evaluate_zero_shot, load_eval_data

__all__ = ["ANNOTATIONS", "SEGINW_SETS", "SeginwResult", "SeginwSet", "evaluate_seginw", "find_sets", "load_seginw"]

ANNOTATIONS = "_annotations_min1cat.coco.json"
#: The 25 sets of the benchmark (the names of the release's folders).
SEGINW_SETS = ("Airplane-Parts", "Bottles", "Brain-Tumor", "Chicken", "Cows", "Electric-Shaver", "Elephants", "Fruits",
               "Garbage", "Ginger-Garlic", "Hand", "Hand-Metal", "House-Parts", "HouseHold-Items",
               "Nutterfly-Squireel", "Phones", "Poles", "Puppies", "Rail", "Salmon-Fillet", "Strawberry", "Tablets",
               "Toolkits", "Trash", "Watermelon")


@dataclass
class SeginwSet:
    """One checked set: its name and its COCO evaluation data (with the detector's boxes if given)."""

    name: str
    data: EvalData


def find_sets(root: str | Path, split: str = "valid") -> dict[str, Path]:
    """``{set name: its <split> folder}`` for every subfolder of ``root`` holding ``<split>/`` + the annotations;
    a UsageError naming the layout if there is none."""
    from ..preflight import existing_dir

    root = existing_dir(root, "--data")
    sets = {d.name: d / split for d in sorted(root.iterdir()) if (d / split / ANNOTATIONS).is_file()}
    if not sets:
        raise UsageError(f"--data {root}: no set found; expected SegInW's layout <data>/<set>/{split}/{ANNOTATIONS} "
                         f"with the images beside it (e.g. {root}/Airplane-Parts/{split}/)")
    return sets


def _box_files(boxes: str | Path, names: list[str]) -> dict[str, Path]:
    """``<boxes>/<set>.json`` for every set; a UsageError for a set without one or a file naming no set."""
    from ..preflight import existing_dir

    folder = existing_dir(boxes, "--boxes")
    files = {p.stem: p for p in sorted(folder.glob("*.json"))}
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise UsageError(f"--boxes {folder}: results for sets not in --data: {listed([n + '.json' for n in unknown])} "
                         f"(sets found: {listed(names)})")
    missing = [n for n in names if n not in files]
    if missing:
        raise UsageError(f"--boxes {folder}: no detector results for {len(missing)} set(s): "
                         f"{listed([n + '.json' for n in missing])}; expected one COCO results file <set>.json per set")
    return files


def load_seginw(root: str | Path, boxes: str | Path | None = None, split: str = "valid", score_thr: float = 0.0,
                max_images: int | None = None, strict: bool = False) -> list[SeginwSet]:
    """Find and check every set (and its detector results) before any model is built
    (:func:`regla.sam.evaluate.load_eval_data` on each)."""
    sets = find_sets(root, split)
    files = _box_files(boxes, list(sets)) if boxes is not None else {}
    return [SeginwSet(name, load_eval_data(folder, folder / ANNOTATIONS, files.get(name), score_thr, max_images,
                                           strict))
            for name, folder in sets.items()]


@dataclass
class SeginwResult:
    """``scores`` (the mean mask AP and each set's COCO scores) and each set's COCO ``segm`` results."""

    scores: dict[str, Any]
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def evaluate_seginw(source: MaskSource, sets: list[SeginwSet], show_bar: bool = False) -> SeginwResult:
    """Box-prompted mask AP on each set (:func:`regla.sam.evaluate.evaluate_zero_shot`) and their mean."""
    per_set, results = {}, {}
    for s in sets:
        r = evaluate_zero_shot(source, s.data, ("box",), show_bar=show_bar)
        per_set[s.name], results[s.name] = r.scores, r.results
    missing = [n for n in SEGINW_SETS if n not in per_set]
    scores = {"mean_AP": float(np.mean([v["segm_AP"] for v in per_set.values()])), "sets": len(per_set),
              "sets_missing": missing, "box_source": "detector" if sets[0].data.detections is not None
              else "ground truth", "per_set": per_set}
    return SeginwResult(scores, results)
