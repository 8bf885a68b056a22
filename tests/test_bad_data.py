"""The bad-data matrix: data files that are malformed exit 2 with one line naming the file, the entry and what was
expected, before any model is built; entries a real data set contains are skipped, counted and named.

Most cases are generated from the validators' own rule tables (``regla.data.coco.COCO_RULES``,
``regla.bench.tables.RESULTS_RULES``, ``regla.runs.logs.ROW_RULES``): each required key removed, each key given
the rule's ``bad`` value, so a new rule gets a test. The rest are the rows of issue 20's table. Each case runs
``regla.cli.main`` in-process with tripwires on every way a model is built (``timm.create_model``, SAM's
``build_sam``, the run harness) and on the drawing/table work of ``regla plot`` / ``regla bench --tables``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
from PIL import Image

from regla.bench import tables as bench_tables
from regla.bench.tables import RESULTS_RULES
from regla.cli import main
from regla.data.coco import COCO_RULES, SECTIONS
from regla.runs import cli_plot, harness
from regla.runs.logs import ROW_RULES
from regla.sam import build as sam_build

TRIPWIRES = ((timm, "create_model"), (sam_build, "build_sam"), (harness, "run"), (cli_plot, "plot_runs"),
             (bench_tables, "merge_runs"))
W, H = 40, 32


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def truncate(path: Path) -> Path:
    """Cut ``path`` to half its bytes (an interrupted download)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def good_coco() -> dict[str, Any]:
    """Two 40x32 images, three annotations (polygons and an RLE), two categories."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((H, W), np.uint8)
    mask[8:20, 10:30] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    square = [4.0, 4.0, 14.0, 4.0, 14.0, 14.0, 4.0, 14.0]
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "sub/b.png", "height": H, "width": W}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4.0, 4.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0,
             "segmentation": [square]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [10.0, 8.0, 20.0, 12.0], "area": 240.0, "iscrowd": 0,
             "segmentation": {"size": [H, W], "counts": rle["counts"].decode("ascii")}},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [4.0, 4.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0,
             "segmentation": [square]},
        ],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "band"}],
    }


def good_results() -> dict[str, Any]:
    stat = {"median_ms": 10.0, "iqr_ms": 1.0, "p10_ms": 9.0, "p25_ms": 9.5, "p75_ms": 10.5, "p90_ms": 11.0, "n": 3,
            "round_medians_ms": [10.0, 10.0, 10.0]}
    return {"date_utc": "2026-12-05 08:00 UTC", "command": "regla bench", "machine": {"cpu": "test"},
            "config": {"resolutions": [224], "backends": ["ort"]},
            "results": [{"name": "regla_t", "label": "ReGLA-T", "family": "ReGLA", "params": 1e6, "macs": {},
                         "latency_ms": {"ort": {"224": stat}}, "prepare_s": {"ort": {"224": 1.0}},
                         "backend_errors": {}}]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A tiny COCO/ADE set, recipes beside dummy weights for the eval commands, a bench run and a training run."""
    import yaml

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png"):
        _png(root / "images" / name, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    for name in ("a", "b"):
        _png(root / "seg_images" / f"{name}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        _png(root / "labels" / f"{name}.png", rng.integers(0, 4, (H, W), dtype=np.uint8), "L")
    (root / "coco.json").write_text(json.dumps(good_coco()))
    for kind, keys in (("det", {"val_images": root / "images", "val_ann": root / "coco.json"}),
                       ("seg", {"val_images": root / "seg_images", "val_labels": root / "labels", "num_classes": 4})):
        (root / kind).mkdir()
        (root / kind / "best.safetensors").write_bytes(b"never read: the data are refused first")
        (root / kind / "config.yaml").write_text(yaml.safe_dump(
            {"backbone": "regla_t", "device": "cpu", **{k: str(v) if isinstance(v, Path) else v
                                                          for k, v in keys.items()}}))
    (root / "bench").mkdir()
    (root / "bench" / "results.json").write_text(json.dumps(good_results()))
    (root / "run").mkdir()
    (root / "run" / "metrics.jsonl").write_text(
        '{"epoch": 1, "train_loss": 1.0, "lr": 0.1, "top1": 50.0, "best_top1": 50.0}\n')
    return {"root": root, "images": root / "images", "coco": root / "coco.json"}


@pytest.fixture
def tripwires(tripwire):
    tripwire(*TRIPWIRES, message="a model was built (or the work started) before the data were checked")


def det_train(images: Path, ann: Path, out: Path, *extra: str) -> list:
    return ["det", "train", "--backbone", "regla_t", "--device", "cpu", "--no-progress", "--output", out,
            "--set", f"train_images={images}", "--set", f"train_ann={ann}", *extra]


def det_eval(data: dict, images: Path, ann: Path, out: Path, *extra: str) -> list:
    return ["det", "eval", "--weights", data["root"] / "det" / "best.safetensors", "--no-progress", "--output", out,
            "--set", f"val_images={images}", "--set", f"val_ann={ann}", *extra]


def sam_eval(images: Path, ann: Path, out: Path, *extra: str) -> list:
    return ["sam", "eval", "--val-images", images, "--val-ann", ann, "-o", out, "-e", "regla_t_sam", "--img-size",
            "64", "--device", "cpu", "--no-progress", *extra]


COCO_COMMANDS = {"det train": lambda d, images, ann, out: det_train(images, ann, out),
                 "det eval": lambda d, images, ann, out: det_eval(d, images, ann, out),
                 "sam eval": lambda d, images, ann, out: sam_eval(images, ann, out)}


def write_coco(tmp_path: Path, edit) -> Path:
    doc = good_coco()
    edit(doc)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    return path


# ---- COCO instances: generated from COCO_RULES ------------------------------------------------------------------

def _coco_rule_cases() -> list:
    cases = []
    for kind, rules in COCO_RULES.items():
        section = next((s for s, k in SECTIONS.items() if k == kind), None)
        for rule in rules:
            for how in (("missing", "bad") if rule.required else ("bad",)):
                cases.append(pytest.param(kind, section, rule, how, id=f"{kind}.{rule.key} {how}"))
    return cases


@pytest.mark.parametrize("command", list(COCO_COMMANDS))
@pytest.mark.parametrize("kind, section, rule, how", _coco_rule_cases())
def test_every_coco_rule_refuses_before_any_model(command, kind, section, rule, how, data, tmp_path, tripwires,
                                                  refused):
    def edit(doc: dict) -> None:
        entry = doc if section is None else doc[section][0]
        if how == "missing":
            del entry[rule.key]
        else:
            entry[rule.key] = copy.deepcopy(rule.bad)

    ann = write_coco(tmp_path, edit)
    where = "the file" if section is None else f"{kind} id 1" if rule.key != "id" else f"{kind} #0 in '{section}'"
    says = [ann, where, repr(rule.key), f"expected {rule.expected}"]
    refused(COCO_COMMANDS[command](data, data["images"], ann, tmp_path / "out"), says)
    assert not (tmp_path / "out").exists()


# ---- COCO instances: the rows of the issue's table ------------------------------------------------------------

def _set(section: str, index: int, **values):
    return lambda doc: doc[section][index].update(values)


COCO_ROWS = {
    "bbox as strings": (_set("annotations", 1, bbox=["10", "8", "20", "12"]), ["annotation id 2", "'bbox'"]),
    "bbox of 3 numbers": (_set("annotations", 1, bbox=[10, 8, 20]), ["annotation id 2", "4 finite numbers"]),
    "NaN in a bbox": (_set("annotations", 2, bbox=[4, 4, float("nan"), 10]), ["annotation id 3", "nan"]),
    "polygon as a flat list": (_set("annotations", 0, segmentation=[4, 4, 14, 4, 14, 14]),
                               ["annotation id 1", "'segmentation'", "polygons"]),
    "polygon of 2 points": (_set("annotations", 0, segmentation=[[4, 4, 14, 4]]), ["annotation id 1", "polygons"]),
    "polygon of strings": (_set("annotations", 0, segmentation=[["4", "4", "14", "4", "14", "14"]]),
                           ["annotation id 1"]),
    "RLE without size": (_set("annotations", 1, segmentation={"counts": "abc"}), ["annotation id 2", "RLE"]),
    "RLE of another size": (_set("annotations", 1, segmentation={"size": [10, 10], "counts": "abc"}),
                            ["annotation id 2", "RLE size [10, 10]", f"[{H}, {W}]"]),
    "height different from the file": (_set("images", 0, height=H + 1),
                                       ["image id 1", f"is {W}x{H}, not {W}x{H + 1}"]),
    "width different from the file": (_set("images", 0, width=W * 2), ["image id 1", f"is {W}x{H}, not {2 * W}x{H}"]),
    "duplicate image ids": (_set("images", 1, id=1), ["image id 1 appears more than once", "unique"]),
    "duplicate annotation ids": (_set("annotations", 2, id=2), ["annotation id 2 appears more than once"]),
    "duplicate category ids": (_set("categories", 1, id=1), ["category id 1 appears more than once"]),
    "absolute file_name": (_set("images", 0, file_name="/etc/passwd"),
                           ["image id 1", "'/etc/passwd' is outside the image folder"]),
    "file_name climbing out": (_set("images", 1, file_name="../coco.json"),
                               ["image id 2", "'../coco.json' is outside the image folder"]),
    "file_name climbing out from a sub-folder": (_set("images", 1, file_name="sub/../../coco.json"),
                                                 ["image id 2", "is outside the image folder"]),
    "annotation of an unlisted image": (_set("annotations", 0, image_id=9), ["annotation id 1", "image_id 9"]),
    "annotation of an unlisted category": (_set("annotations", 0, category_id=9), ["annotation id 1", "category_id 9"]),
    "a list where an image belongs": (lambda d: d["images"].append([3, "c.png"]), ["image #2 in 'images'",
                                                                                   "is a JSON array"]),
    "a JSON array as the file": (lambda d: (d.clear(), d.update({"x": 1})), ["no 'images'"]),
    "iscrowd of true": (_set("annotations", 0, iscrowd=True), ["annotation id 1", "'iscrowd' is True"]),
}


@pytest.mark.parametrize("command", list(COCO_COMMANDS))
@pytest.mark.parametrize("row", list(COCO_ROWS))
def test_issue_rows_refuse_before_any_model(command, row, data, tmp_path, tripwires, refused):
    edit, says = COCO_ROWS[row]
    ann = write_coco(tmp_path, edit)
    refused(COCO_COMMANDS[command](data, data["images"], ann, tmp_path / "out"), [ann, *says])
    assert not (tmp_path / "out").exists()


def test_a_file_name_outside_the_folder_is_never_opened(data, tmp_path, tripwires, monkeypatch, refused):
    """The path check comes before any open: PIL never sees the outside file."""
    import PIL.Image

    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: (opened.append(str(fp)), real_open(fp, *a, **k))[1])
    outside = tmp_path / "secret.png"
    _png(outside, np.zeros((H, W, 3), np.uint8))
    ann = write_coco(tmp_path, _set("images", 0, file_name=str(outside)))
    for command in COCO_COMMANDS.values():
        refused(command(data, data["images"], ann, tmp_path / "out"), ["outside the image folder"])
    assert not any("secret" in p for p in opened), opened


def test_json_that_is_not_valid_is_one_line(data, tmp_path, tripwires, refused):
    ann = tmp_path / "instances.json"
    ann.write_text('{"images": [')
    for command in COCO_COMMANDS.values():
        refused(command(data, data["images"], ann, tmp_path / "out"), [ann, "not valid JSON"])


# ---- skip rows: counted and named, --strict refuses -------------------------------------------------------------

def _degenerate(doc: dict) -> None:
    doc["annotations"][2]["bbox"] = [4.0, 4.0, -3.0, 10.0]  # negative width, beside two good annotations


def test_a_degenerate_box_is_skipped_from_training_counted_and_named(data, tmp_path):
    """Main trained on the set and said nothing; the box now leaves the training targets, named. An evaluation
    set keeps it in the ground truth (COCO's protocol scores every annotation) and prompts / targets only usable
    ones."""
    from regla.data.coco import CocoInstances
    from regla.data.skips import DEGENERATE_BOX
    from regla.sam.evaluate import load_eval_data

    ann = write_coco(tmp_path, _degenerate)
    ds = CocoInstances(data["images"], ann, train=True)
    assert len(ds) == 2 and len(ds.skipped) == 1
    assert ds.skipped.summary()["skipped_entries"] == {DEGENERATE_BOX: ["annotation id 3 (bbox [4.0, 4.0, -3.0, "
                                                                       "10.0])"]}
    assert [a["id"] for a in ds.coco.anns.values()] == [1, 2]
    assert ds[1][1]["labels"].tolist() == [2]  # image 2's targets: annotation 2 only
    for ev in (CocoInstances(data["images"], ann), load_eval_data(data["images"], ann)):
        assert sorted(ev.coco.anns) == [1, 2, 3]


def test_strict_refuses_a_degenerate_box_in_training(data, tmp_path, tripwires, refused):
    ann = write_coco(tmp_path, _degenerate)
    refused(det_train(data["images"], ann, tmp_path / "out", "--strict"),
            [ann, "annotation id 3", "degenerate box", "--strict"])


def _truncated_set(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    rng = np.random.default_rng(1)
    _png(images / "a.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    truncate(_png(images / "sub" / "b.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8)))
    return images, write_coco(tmp_path, lambda d: None)


def test_a_truncated_image_is_skipped_counted_and_named(tmp_path):
    from regla.data.coco import CocoInstances
    from regla.data.skips import UNREADABLE
    from regla.sam.evaluate import load_eval_data

    images, ann = _truncated_set(tmp_path)
    for ds in (CocoInstances(images, ann, train=True), CocoInstances(images, ann)):
        assert ds.ids == [1]
        names = ds.skipped.entries[UNREADABLE]
        assert len(names) == 1 and "image id 2 (sub/b.png" in names[0] and "truncated" in names[0]
    ev = load_eval_data(images, ann)
    assert ev.image_ids == [1] and ev.skipped.summary()["skipped"] == 1


@pytest.mark.parametrize("command", list(COCO_COMMANDS))
def test_strict_refuses_a_truncated_image(command, data, tmp_path, tripwires, refused):
    images, ann = _truncated_set(tmp_path)
    argv = COCO_COMMANDS[command](data, images, ann, tmp_path / "out") + ["--strict"]
    refused(argv, [ann, "image id 2", "unreadable image", "truncated"])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_probe_finds_truncated_files_and_accepts_trailing_data(fmt, tmp_path):
    """Truncation is found from the file's end (the decode runs only for a file that does not end as a complete
    one does); a complete image followed by other bytes (a camera's trailer) is accepted."""
    from regla.data.images import Unreadable, probe

    path = _png(tmp_path / "x.png", np.random.default_rng(5).integers(0, 255, (H, W, 3), dtype=np.uint8))
    good = path.with_suffix("." + fmt.lower())
    Image.open(path).save(good, format=fmt)
    assert probe(good) == (W, H)
    (tmp_path / "trailer").write_bytes(good.read_bytes() + b"TRAILER" * 300)
    assert probe(tmp_path / "trailer") == (W, H)
    with pytest.raises(Unreadable, match="truncated"):
        probe(truncate(good))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(Unreadable, match="not an image format"):
        probe(tmp_path / "text.png")


@pytest.mark.parametrize("command", list(COCO_COMMANDS))
def test_a_set_of_only_unreadable_images_names_the_first(command, data, tmp_path, tripwires, refused):
    """The issue's one-photo set with its photo truncated: exit 2 naming it, not an OSError mid-run."""
    images, ann = _truncated_set(tmp_path)
    truncate(images / "a.png")
    refused(COCO_COMMANDS[command](data, images, ann, tmp_path / "out"),
            [ann, "2 skipped, first: image id 1 (a.png: truncated"])


def test_crowd_only_images_are_skipped_from_training_and_named(data, tmp_path):
    from regla.data.coco import CocoInstances
    from regla.data.skips import NO_USABLE_ANNOTATION

    def crowd(doc: dict) -> None:
        for a in doc["annotations"][1:]:
            a["iscrowd"] = 1

    ds = CocoInstances(data["images"], write_coco(tmp_path, crowd), train=True)
    assert ds.ids == [1] and ds.skipped.entries == {NO_USABLE_ANNOTATION: ["image id 2 (sub/b.png)"]}


def test_det_train_names_its_skips_in_the_run_folder(data, tmp_path, capsys, caplog):
    """End to end: one optimizer step; ``skipped.json`` names the entry and every metrics row counts it."""
    ann = write_coco(tmp_path, _degenerate)
    out = tmp_path / "run"
    tiny = ["epochs=1", "sched=cosine", "iters_per_epoch=1", "min_size=64", "max_size=64", "fpn_channels=16",
            "mask_head_channels=16", "box_head_dim=32", "roi_batch_size=16", "batch_size=1", "workers=0",
            "freeze_bn=false"]
    argv = det_train(data["images"], ann, out)
    for item in tiny:
        argv += ["--set", item]
    caplog.set_level(logging.WARNING, "regla.dense")
    code = main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err
    assert "skipped 1 (annotation with a degenerate box" in caplog.text and "annotation id 3" in caplog.text
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped["train"]["skipped"] == 1 and "annotation id 3" in json.dumps(skipped["train"]["skipped_entries"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["skipped_train"] == 1 for r in rows)


def _corrupt_body(path: Path) -> Path:
    """Zero 40 bytes of a PNG's compressed data: the header and the IEND chunk stay sound."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start:start + 40] = bytes(40)
    path.write_bytes(bytes(data))
    return path


def test_an_image_that_fails_to_decode_in_a_loader_worker_is_one_line_naming_it(data, tmp_path, capsys):
    """A corrupt body behind a sound header is found only when decoded, in a DataLoader worker: the error still
    reaches the user as one line naming the image and its entry (exit 2), not the worker's traceback."""
    from torch.utils.data import DataLoader

    from regla.cli import report
    from regla.data.coco import CocoInstances, detection_collate

    images, ann = _truncated_set(tmp_path)
    _png(images / "sub" / "b.png", np.random.default_rng(4).integers(0, 255, (H, W, 3), dtype=np.uint8))
    _corrupt_body(images / "sub" / "b.png")
    ds = CocoInstances(images, ann)
    assert ds.ids == [1, 2]  # the header and end are sound
    with pytest.raises(Exception) as caught:
        list(DataLoader(ds, batch_size=1, num_workers=1, collate_fn=detection_collate))
    assert report("det", caught.value, debug=False) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "cannot decode image id 2" in err and "b.png" in err and "DataLoader worker" in err, err


# ---- SAM eval: no ground truth -----------------------------------------------------------------------------------

def test_sam_eval_without_ground_truth_says_so(data, tmp_path, tripwires, refused):
    """Main evaluated this set and reported AP 0.0; nothing can be scored, so it is refused as such."""
    def crowd_only(doc: dict) -> None:
        for a in doc["annotations"]:
            a["iscrowd"] = 1

    ann = write_coco(tmp_path, crowd_only)
    refused(sam_eval(data["images"], ann, tmp_path / "out"), [ann, "no ground truth", "2 readable image(s)"])


# ---- ADE-format pairs --------------------------------------------------------------------------------------------

def _ade(tmp_path: Path, label=None, image=None) -> tuple[Path, Path]:
    """Two pairs; ``label(path)`` / ``image(path)`` spoil the second one."""
    rng = np.random.default_rng(2)
    images, labels = tmp_path / "seg_images", tmp_path / "labels"
    for name in ("a", "b"):
        _png(images / f"{name}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        _png(labels / f"{name}.png", rng.integers(0, 4, (H, W), dtype=np.uint8), "L")
    if label:
        label(labels / "b.png")
    if image:
        image(images / "b.png")
    return images, labels


def seg_train(images: Path, labels: Path, out: Path, *extra: str) -> list:
    return ["seg", "train", "--backbone", "regla_t", "--device", "cpu", "--no-progress", "--output", out,
            "--set", f"train_images={images}", "--set", f"train_labels={labels}", "--set", "num_classes=4", *extra]


def seg_eval(data: dict, images: Path, labels: Path, out: Path, *extra: str) -> list:
    return ["seg", "eval", "--weights", data["root"] / "seg" / "best.safetensors", "--no-progress", "--output", out,
            "--set", f"val_images={images}", "--set", f"val_labels={labels}", *extra]


SEG_COMMANDS = {"seg train": lambda d, i, lab, out, *e: seg_train(i, lab, out, *e),
                "seg eval": lambda d, i, lab, out, *e: seg_eval(d, i, lab, out, *e)}

ADE_ROWS = {
    "label of another size": (dict(label=lambda p: _png(p, np.zeros((H // 2, W // 2), np.uint8), "L")),
                              ["b.png is 20x16 px but its image", "expected the same size"]),
    "colour label": (dict(label=lambda p: _png(p, np.zeros((H, W, 3), np.uint8))), ["b.png is a RGB image"]),
    "label above the class count": (dict(label=lambda p: _png(p, np.full((H, W), 9, np.uint8), "L")),
                                    ["b.png holds value 9, above the 4 classes"]),
}


@pytest.mark.parametrize("command", list(SEG_COMMANDS))
@pytest.mark.parametrize("row", list(ADE_ROWS))
def test_bad_ade_pairs_refuse_before_any_model(command, row, data, tmp_path, tripwires, refused):
    spoil, says = ADE_ROWS[row]
    images, labels = _ade(tmp_path, **spoil)
    refused(SEG_COMMANDS[command](data, images, labels, tmp_path / "out"), says)


@pytest.mark.parametrize("what", ["label", "image"])
def test_a_truncated_label_or_image_is_skipped_counted_and_named(what, tmp_path):
    from regla.data.ade import SegmentationFolder
    from regla.data.skips import UNREADABLE

    images, labels = _ade(tmp_path, **{what: truncate})
    ds = SegmentationFolder(images, labels, num_classes=4)
    assert [p[0].name for p in ds.pairs] == ["a.png"]
    assert len(ds.skipped.entries[UNREADABLE]) == 1 and "b.png" in ds.skipped.entries[UNREADABLE][0]


@pytest.mark.parametrize("command", list(SEG_COMMANDS))
@pytest.mark.parametrize("what", ["label", "image"])
def test_strict_refuses_a_truncated_label_or_image(command, what, data, tmp_path, tripwires, refused):
    images, labels = _ade(tmp_path, **{what: truncate})
    refused(SEG_COMMANDS[command](data, images, labels, tmp_path / "out", "--strict"),
            ["b.png", "unreadable image", "truncated"])


def test_a_label_that_decodes_badly_is_skipped(tmp_path):
    """A label whose header and end are fine but whose body is corrupt is found when the labels are decoded."""
    from regla.data.ade import SegmentationFolder

    images, labels = _ade(tmp_path, label=_corrupt_body)
    ds = SegmentationFolder(images, labels, num_classes=4)
    assert len(ds.pairs) == 1 and len(ds.skipped) == 1


# ---- regla bench --tables: generated from RESULTS_RULES ---------------------------------------------------------

def _results_cases() -> list:
    return [pytest.param(part, rule, how, id=f"{part}.{rule.key} {how}") for part, rules in RESULTS_RULES.items()
            for rule in rules for how in (("missing", "bad") if rule.required else ("bad",))]


def _results_entry(doc: dict, part: str) -> tuple[dict, str]:
    """The entry of ``doc`` a rule table applies to, and how the message names it."""
    result = doc["results"][0]
    return {"file": (doc, "the file"), "config": (doc["config"], "config"), "result": (result, "result 'regla_t'"),
            "latency": (result["latency_ms"]["ort"]["224"], "latency_ms['ort']['224']")}[part]


@pytest.mark.parametrize("part, rule, how", _results_cases())
def test_every_results_rule_refuses_before_any_table(part, rule, how, tmp_path, tripwires, refused):
    doc = good_results()
    entry, where = _results_entry(doc, part)
    if how == "missing":
        del entry[rule.key]
    else:
        entry[rule.key] = copy.deepcopy(rule.bad)
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    where = "result #0" if (part, rule.key) == ("result", "name") else where
    refused(["bench", "--tables", path.parent, "-o", tmp_path / "out"],
            [path, where, repr(rule.key), f"expected {rule.expected}"])


BENCH_ROWS = {
    "a null latency": (lambda r: r["results"][0]["latency_ms"]["ort"].update({"224": None}),
                       ["latency_ms['ort']['224'] is a JSON null"]),
    "a resolution 'a'": (lambda r: r["results"][0]["latency_ms"]["ort"].update({"a": r["results"][0]["latency_ms"]
                                                                               ["ort"]["224"]}),
                         ["has the resolution 'a'"]),
    "a string median": (lambda r: r["results"][0]["latency_ms"]["ort"]["224"].update(median_ms="10"),
                        ["'median_ms' is '10'"]),
    "a zero median": (lambda r: r["results"][0]["latency_ms"]["ort"]["224"].update(median_ms=0),
                      ["'median_ms' is 0", "> 0"]),
    "a result that is not an object": (lambda r: r["results"].append("regla_m"), ["result #1 is a JSON string"]),
}


@pytest.mark.parametrize("row", list(BENCH_ROWS))
def test_bench_rows_refuse_before_any_table(row, tmp_path, tripwires, refused):
    edit, says = BENCH_ROWS[row]
    doc = good_results()
    edit(doc)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps(doc))
    refused(["bench", "--tables", tmp_path / "run", "-o", tmp_path / "out"], says)


def test_a_good_results_file_passes(data, tmp_path, capsys):
    code = main(["bench", "--tables", str(data["root"] / "bench"), "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err


# ---- regla plot: generated from ROW_RULES ------------------------------------------------------------------------

def _row_cases() -> list:
    return [pytest.param(rule, how, id=f"{rule.key} {how}") for rule in ROW_RULES
            for how in (("missing", "bad") if rule.required else ("bad",))]


def _plot(refused, tmp_path: Path, lines: list[str], says: list[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    refused(["plot", run, "-o", tmp_path / "out" / "c.png"], [run / "metrics.jsonl", *says])


GOOD_ROW = {"epoch": 1, "train_loss": 1.0, "lr": 0.1, "top1": 50.0, "best_top1": 50.0}


@pytest.mark.parametrize("rule, how", _row_cases())
def test_every_log_row_rule_refuses_before_drawing(rule, how, tmp_path, tripwires, refused):
    row = dict(GOOD_ROW)
    if how == "missing":
        del row[rule.key]
    else:
        row[rule.key] = rule.bad
    _plot(refused, tmp_path, [json.dumps(GOOD_ROW), json.dumps(row)],
          ["line 2", repr(rule.key), f"expected {rule.expected}"])


PLOT_ROWS = {
    "a row that is an array": ([json.dumps(GOOD_ROW), "[1, 2, 3]"], ["line 2 is a JSON array"]),
    "a string loss": ([json.dumps({**GOOD_ROW, "train_loss": "low"})], ["line 1", "'train_loss' is 'low'"]),
    "a string score": ([json.dumps({**GOOD_ROW, "top1_ema": "x"})], ["line 1", "'top1_ema' is 'x'"]),
    "a broken line in the middle": (["{", json.dumps(GOOD_ROW)], ["line 1 is not valid JSON"]),
}


@pytest.mark.parametrize("row", list(PLOT_ROWS))
def test_plot_rows_refuse_before_drawing(row, tmp_path, tripwires, refused):
    lines, says = PLOT_ROWS[row]
    _plot(refused, tmp_path, lines, says)


def test_an_unfinished_last_line_is_still_ignored(tmp_path):
    from regla.runs.logs import read_rows

    (tmp_path / "m.jsonl").write_text(json.dumps(GOOD_ROW) + '\n{"epoch": 2, "trai')
    assert read_rows(tmp_path / "m.jsonl") == [GOOD_ROW]


# ---- det/seg predict: tiny and extreme images --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["det", "seg"])
@pytest.mark.parametrize("size, says", [((5000, 10), "is 5000x10 px; expected at least 16 px on each side"),
                                        ((2, 2), "is 2x2 px; expected at least 16 px"),
                                        ((4000, 40), "below the 32 px its coarsest features need")])
def test_predict_refuses_tiny_or_extreme_images_before_any_model(kind, size, says, data, tmp_path, tripwires, refused):
    """Main ran the model on a 5000x10 image (a RuntimeError in the issue's run; exit 0 with a meaningless
    picture here); the size is now checked first."""
    w, h = size
    image = _png(tmp_path / "wide.png", np.zeros((h, w, 3), np.uint8))
    refused([kind, "predict", "--weights", data["root"] / kind / "best.safetensors", image,
             "--output", tmp_path / "out.png"], [image, says])
    assert not (tmp_path / "out.png").exists()


# ---- regla knn and regla export --int8 name what they skipped ----------------------------------------------------

def test_knn_counts_and_names_unreadable_bank_images(tmp_path, capsys):
    """Main printed "bank of 16" for 18 files without a word about the other two."""
    from train_helpers import make_folder

    root = make_folder(tmp_path / "data", classes=3, train_per_class=6, val_per_class=2)
    broken = [next((root / "train" / c).iterdir()) for c in ("class_0", "class_1")]
    for f in broken:
        truncate(f)
    out = tmp_path / "knn.json"
    code = main(["knn", "--bank", str(root / "train"), "--queries", str(root / "val"), "--model", "regla_t",
                 "--k", "1", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu",
                 "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    m = json.loads(out.read_text())
    assert m["bank"] == 16 and m["skipped"] == m["skipped_bank"] == 2 and m["skipped_queries"] == 0
    assert sorted(m["skipped_files"]["bank"]) == sorted(str(f) for f in broken)
    assert "2 bank and 0 query image(s) unreadable, skipped" in printed.out
    assert all(str(f) in printed.err for f in broken)


def test_knn_strict_refuses_an_unreadable_image(tmp_path, capsys):
    from train_helpers import make_folder

    root = make_folder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    truncate(next((root / "val" / "class_0").iterdir()))
    code = main(["knn", "--bank", str(root / "train"), "--queries", str(root / "val"), "--model", "regla_t",
                 "--k", "1", "--img-size", "32", "--workers", "0", "--device", "cpu", "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and "unreadable image" in err and "--strict" in err


def test_export_int8_calibration_names_unreadable_files(tmp_path, capsys):
    """Main calibrated on the readable files and said nothing of the others; the agreement JSON and the command's
    output now name them."""
    import torch
    from torch import nn

    from regla.deploy.cli import report_skipped
    from regla.deploy.export import RealImageCheck

    rng = np.random.default_rng(3)
    for i in range(4):
        _png(tmp_path / "calib" / f"{i}.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    bad = tmp_path / "calib" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)).eval()
    real = RealImageCheck(module, (16, 16), tmp_path / "calib", calib_images=5, check_images=5, min_agreement=0.0,
                          min_cosine=-1.0)
    stats = real.compare(lambda b: module(torch.from_numpy(b)).detach().numpy(), "test")
    assert stats["calibration_images"] == 4 and stats["skipped"] >= 1
    assert any(str(bad) in f for f in stats["skipped_files"]["calibration"])
    report_skipped(stats)
    assert "regla export: skipped 1 unreadable calibration image(s)" in capsys.readouterr().err
