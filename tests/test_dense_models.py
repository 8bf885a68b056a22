"""Backbone adapter, Mask R-CNN with mmdet's settings, Semantic FPN; the two tasks' build/step/evaluate on the VOC
photo; the CLIs' bad-input errors and predict-to-PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import yaml
from torch import nn

from dense_helpers import det_cfg, fit, seg_cfg, voc_root
from regla.checkpoints import CheckpointError
from regla.cli import main
from regla.dense import tasks as dense_tasks
from regla.dense.backbone import BackboneFPN, create_features, init_from_classifier
from regla.dense.detector import AlignedMultiScaleRoIAlign, L1RegionProposalNetwork, mask_rcnn
from regla.dense.segmenter import SemanticFPN
from regla.dense.tasks import DetTask, SegTask
from regla.errors import UsageError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return voc_root(tmp_path_factory)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_backbone_levels_of_any_timm_model() -> None:
    assert create_features("regla_t").feature_info.reduction() == [4, 8, 16, 32]
    body = create_features("resnet18")  # its stride-2 stem output is left out
    assert body.feature_info.reduction() == [4, 8, 16, 32] and body.feature_info.channels() == [64, 128, 256, 512]


class Plain(nn.Module):
    def __init__(self, **kwargs) -> None:
        assert not kwargs.get("features_only"), "unexpected argument features_only"
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)


@timm.models.register_model
def dense_test_plain(pretrained: bool = False, **kwargs) -> nn.Module:
    return Plain(**kwargs)


def test_backbone_without_features_only_is_refused() -> None:
    with pytest.raises(UsageError, match="'dense_test_plain' has no features_only support"):
        create_features("dense_test_plain")
    with pytest.raises(UsageError, match=r"strides \[16, 16, 16\]; the FPN needs four"):
        create_features("vit_tiny_patch16_224")


def test_backbone_from_a_classifier_reports_what_was_used(tmp_path: Path) -> None:
    full = timm.create_model("regla_t")
    path = tmp_path / "cls.pth"
    torch.save({"model": full.state_dict()}, path)
    body = create_features("regla_t")
    report = init_from_classifier(body, path)
    assert not report.missing and not report.mismatched and report.loaded
    assert report.unused and all(k.startswith(("head.", "pre_logits.")) for k in report.unused)
    by_flat_name = {k.replace(".", "_"): v for k, v in full.state_dict().items()}
    assert all(torch.equal(v, by_flat_name[k.replace(".", "_")]) for k, v in body.state_dict().items())
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18").state_dict(), other)
    with pytest.raises(CheckpointError, match="does not fit backbone"):
        init_from_classifier(create_features("regla_t"), other)


def test_backbone_bn_statistics_stay_frozen() -> None:
    backbone = BackboneFPN(create_features("regla_t"), 16, freeze_bn=True).train()
    bns = [m for m in backbone.body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [m.running_mean.clone() for m in bns]
    out = backbone(torch.randn(2, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"] and out["pool"].shape[-1] == 1
    assert all(not m.training and m.weight.requires_grad for m in bns)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns, strict=True))
    assert backbone.fpn.training  # only the backbone's BN is frozen


def test_mask_rcnn_takes_mmdet_settings() -> None:
    model = mask_rcnn(BackboneFPN(create_features("regla_t"), 16), 81, MEAN, STD)
    assert model.roi_heads.box_predictor.cls_score.out_features == 81
    assert model.rpn._post_nms_top_n["training"] == 1000 and model.rpn._pre_nms_top_n["training"] == 2000
    assert isinstance(model.rpn, L1RegionProposalNetwork)
    assert isinstance(model.roi_heads.box_roi_pool, AlignedMultiScaleRoIAlign)
    assert model.roi_heads.box_roi_pool.sampling_ratio == 0 and model.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)


def test_mask_roi_size_sets_the_mask_resolution(voc: Path) -> None:
    # 28x28 RoIs -> 56x56 masks: the mask head and its loss follow (the COCO recipes keep mmdet's 14 -> 28)
    cfg = det_cfg(voc, mask_head_channels=16, box_head_dim=64, roi_batch_size=64, mask_roi_size=28,
                  roi_positive_fraction=0.5)
    task = DetTask()
    built, losses = fit(task, cfg, 1)
    model = built.model
    assert model.roi_heads.mask_roi_pool.output_size == (28, 28)
    assert model.roi_heads.fg_bg_sampler.positive_fraction == 0.5
    feats = {k: torch.randn(1, 32, 64 >> i, 64 >> i) for i, k in enumerate(["0", "1", "2", "3"])}
    boxes = [torch.tensor([[4.0, 4.0, 60.0, 60.0]])]
    pooled = model.roi_heads.mask_roi_pool(feats, boxes, [(256, 256)])
    logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(pooled))
    assert logits.shape[-2:] == (56, 56) and math.isfinite(losses[0])


def test_aligned_roi_align_pools_each_box_from_its_level() -> None:
    from torchvision.ops import roi_align

    pool = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=0)
    feats = {str(i): torch.randn(1, 4, 256 >> i, 256 >> i) for i in range(4)}  # strides 4..32 of a 1024 image
    boxes = [torch.tensor([[10.0, 10.0, 50.0, 60.0], [100.0, 100.0, 600.0, 700.0]])]
    out = pool(feats, boxes, [(1024, 1024)])
    small = roi_align(feats["0"], [boxes[0][:1]], 7, 1 / 4, 0, aligned=True)  # sqrt(area) < 112: level P2
    large = roi_align(feats["3"], [boxes[0][1:]], 7, 1 / 32, 0, aligned=True)  # >= 448: P5
    assert torch.allclose(out[0], small[0]) and torch.allclose(out[1], large[0])


def test_semantic_fpn_head_follows_kirillov() -> None:
    model = SemanticFPN(create_features("regla_t"), 7, 32, 16)
    convs = [sum(isinstance(m, nn.Conv2d) for m in head) for head in model.scale_heads]
    ups = [sum(isinstance(m, nn.Upsample) for m in head) for head in model.scale_heads]
    assert convs == [1, 1, 2, 3] and ups == [0, 1, 2, 3]  # log2(stride / 4) blocks, x2 each, down to 1/4
    assert isinstance(model.dropout, nn.Dropout2d) and model.dropout.p == 0.1
    assert model(torch.randn(1, 3, 96, 128)).shape == (1, 7, 24, 32)


def falling(losses: list[float]) -> bool:
    return all(math.isfinite(v) for v in losses) and sum(losses[-2:]) < sum(losses[:2])


def test_det_task_trains_and_evaluates_on_the_voc_photo(voc: Path) -> None:
    cfg = det_cfg(voc, mask_head_channels=16, box_head_dim=64, roi_batch_size=64)
    task = DetTask()
    built, losses = fit(task, cfg, 6)
    assert falling(losses), losses
    assert built.extra["class_names"][14] == "person"
    _, parts = task.step(built.model.train(), next(iter(built.train_loader)), torch.device("cpu"))
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(parts)
    scores = task.evaluate(built.model, 0)
    assert set(scores) >= {"bbox_AP", "bbox_AP50", "segm_AP", "segm_APl"}
    assert built.model.training  # evaluate restores the training mode


def test_seg_task_trains_and_evaluates_on_the_voc_photo(voc: Path) -> None:
    # no augmentation (the whole photo at 120x160, padded to 160x160) so that the loss can only fall
    cfg = seg_cfg(voc, ratio_range=[1.0, 1.0], scale=[160, 120], crop_size=160, flip=0.0, photometric=False)
    task = SegTask()
    built, losses = fit(task, cfg, 6)
    assert falling(losses), losses
    scores = task.evaluate(built.model, 0)
    assert 0 <= scores["mIoU"] <= 100 and 0 < scores["aAcc"] <= 100


def test_bad_annotations_stop_the_task_before_the_model_is_built(voc: Path, tmp_path: Path, patch) -> None:
    data = json.loads((voc / "instances.json").read_text())
    data["annotations"][3]["image_id"] = 42
    ann = tmp_path / "bad.json"
    ann.write_text(json.dumps(data))
    patch(dense_tasks, "build_detector", lambda *a, **k: pytest.fail("model built"), imported=True)
    with pytest.raises(UsageError, match="annotation id 4: image_id 42 is not in the 'images' list"):
        DetTask().build(det_cfg(voc, train_ann=str(ann)), torch.device("cpu"), 0, 1)


def test_cli_bad_input_is_one_line_exit_2(voc: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["det", "train", "--set", f"train_images={voc / 'images'}", "--set", "train_ann=nope.json"]) == 2
    assert "annotation file nope.json does not exist" in capsys.readouterr().err
    assert main(["seg", "train", "--set", "test_mode=tiles"]) == 2
    assert "test_mode = 'tiles'" in capsys.readouterr().err
    assert main(["seg", "train", "--set", "num_classes=3", "--set", "class_names=[a,b]"]) == 2
    assert "class_names lists 2 names but num_classes is 3" in capsys.readouterr().err
    assert main(["det", "train", "--backbone", "dense_test_plain", "--set", f"train_images={voc / 'images'}",
                 "--set", f"train_ann={voc / 'instances.json'}", "--device", "cpu"]) == 2
    assert "has no features_only support" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["det", "seg"])
def test_predict_writes_a_png(voc: Path, tmp_path: Path, kind: str) -> None:
    from PIL import Image

    from regla.dense.detector import build_detector
    from regla.dense.segmenter import build_segmenter

    cfg = det_cfg(voc, mask_head_channels=16, box_head_dim=64) if kind == "det" else seg_cfg(voc)
    model = build_detector(cfg, 21)[0] if kind == "det" else build_segmenter(cfg, 21)[0]
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    keep = {k: v for k, v in cfg.flat().items() if k not in ("output",)}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(keep))
    out = tmp_path / "pred.png"
    assert main([kind, "predict", str(voc / "images" / "voc.png"), "--weights", str(tmp_path / "weights.pth"),
                 "--output", str(out), "--device", "cpu", "--no-progress"]) == 0
    with Image.open(out) as im:
        assert im.size == (500, 375) and im.mode == "RGB"


@pytest.mark.parametrize("kind", ["det", "seg"])
def test_table4_recipes_are_valid(kind: str, capsys: pytest.CaptureFixture) -> None:
    paths = sorted((Path(__file__).resolve().parents[1] / "configs" / kind).glob("*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        assert main([kind, "train", "-c", str(path), "--print-config"]) == 0
        cfg = yaml.safe_load(capsys.readouterr().out)
        assert cfg["backbone"] == path.stem and cfg["fpn_channels"] == 256
        if kind == "det":
            recipe = (cfg["epochs"], cfg["lr"], cfg["decay_milestones"], cfg["warmup_updates"])
            assert recipe == (12, 2e-4, [8, 11], 500)
            assert (cfg["mask_roi_size"], cfg["roi_positive_fraction"], cfg["flip"]) == (14, 0.25, 0.5)  # mmdet's
        else:
            assert cfg["epochs"] * cfg["iters_per_epoch"] in (40_000, 80_000) and cfg["sched"] == "poly"
            assert (cfg["ratio_range"], cfg["flip"], cfg["photometric"]) == ([0.5, 2.0], 0.5, True)  # mmseg's
            if path.stem.startswith("regla_"):  # ReGLA §4.2.2: 80k iterations at a fixed lr of 1e-4
                assert cfg["epochs"] * cfg["iters_per_epoch"] == 80_000 and cfg["lr"] == cfg["min_lr"] == 1e-4
            else:  # each peer's own poly decay to 0
                assert cfg["min_lr"] == 0.0


def test_regla_seg_recipes_hold_the_lr_fixed_and_peers_decay_it() -> None:
    """ReGLA §4.2.2 trains Semantic FPN at a fixed lr of 1e-4: the scheduler the harness builds from a ReGLA recipe
    gives 1e-4 at every update; from RepNeXt's recipe (same lr) it decays to 0 by the last update (poly)."""
    from regla.dense.config import SEG_SCHEMA
    from regla.runs.harness import build_optimizer_and_schedule

    configs = Path(__file__).resolve().parents[1] / "configs" / "seg"
    for name, fixed in (("regla_t", True), ("regla_m", True), ("regla_x", True), ("repnext_m3", False)):
        cfg = SEG_SCHEMA.build(str(configs / f"{name}.yaml"))
        param = torch.nn.Parameter(torch.zeros(1))
        opt, sched, _ = build_optimizer_and_schedule(cfg.run, [param], cfg.run.lr, cfg.task.iters_per_epoch)
        lrs = []
        for update in (0, 1, 20_000, 40_000, 79_999, 80_000):
            sched.step_update(update)
            lrs.append(opt.param_groups[0]["lr"])
        if fixed:
            assert lrs == [1e-4] * len(lrs), name
        else:
            assert lrs[0] == 1e-4 and lrs[3] < 0.6e-4 and lrs[-1] == 0.0, name


def test_demo_report_writes_demo_json_and_fails_below_target(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from regla.dense.commands import demo_report
    from regla.errors import RunFailure

    assert demo_report(tmp_path, {"mIoU": 85.0, "aAcc": 97.0}, {"mIoU": 80.0}, "regla seg train --demo") == 0
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["passed"] and saved["targets"]["mIoU"] == {"value": 85.0, "target": 80.0, "ok": True}
    assert "mIoU:  85.00" in capsys.readouterr().out
    with pytest.raises(RunFailure, match="missed its targets \\(segm_AP50\\)"):
        demo_report(tmp_path, {"bbox_AP50": 95.0, "segm_AP50": 70.0}, {"bbox_AP50": 90.0, "segm_AP50": 80.0}, "x")
    assert not json.loads((tmp_path / "demo.json").read_text())["passed"]


def test_demo_report_gives_the_per_class_breakdown(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from regla.dense.commands import demo_report

    per_class = {"bbox_AP50": {"person": 100.0, "chair": 87.456, "dog": None},
                 "segm_AP50": {"person": 99.0, "chair": 0.0, "dog": None}}
    demo_report(tmp_path, {"bbox_AP50": 95.0}, {"bbox_AP50": 90.0}, "x", per_class)
    saved = json.loads((tmp_path / "demo.json").read_text())["per_class"]
    assert saved == {"bbox_AP50": {"person": 100.0, "chair": 87.46}, "segm_AP50": {"person": 99.0, "chair": 0.0}}
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["chair", "87.46", "0.00"] for line in lines)
    assert not any("dog" in line for line in lines)  # absent from the photo: not listed


@pytest.mark.parametrize("kind", ["det", "seg"])
def test_eval_writes_scores(voc: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture) -> None:
    from regla.dense.detector import build_detector
    from regla.dense.segmenter import build_segmenter

    cfg = det_cfg(voc, mask_head_channels=16, box_head_dim=64) if kind == "det" else seg_cfg(voc)
    model = build_detector(cfg, 21)[0] if kind == "det" else build_segmenter(cfg, 21)[0]
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.flat()))
    assert main([kind, "eval", "--weights", str(tmp_path / "weights.pth"), "--device", "cpu", "--no-progress"]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    if kind == "det":
        assert "bbox_AP" in scores and isinstance(json.loads((tmp_path / "results.json").read_text()), list)
        assert isinstance(scores["per_class"]["segm_AP50"]["chair"], float)
        assert scores["per_class"]["bbox_AP50"]["dog"] is None  # no dog in the photo
    else:
        assert "per_class_IoU" in scores
    assert ("segm_AP50" if kind == "det" else "mIoU") in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["det", "seg"])
def test_demo_runs_on_the_harness(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--demo`` for one step on the real run harness: the CLI wiring, the data preparation, the run folder and
    demo.json (one step cannot meet the targets: exit 1)."""
    monkeypatch.setenv("REGLA_CACHE", str(tmp_path / "cache"))
    small = ["--set", "min_size=128", "--set", "max_size=160"] if kind == "det" else ["--set", "scale=[160,120]",
                                                                                      "--set", "crop_size=96"]
    small += ["--set", "epochs=1", "--set", "iters_per_epoch=1"]
    assert main([kind, "train", "--demo", "--output", str(tmp_path / "run"), "--no-progress", *small]) == 1
    report = json.loads((tmp_path / "run" / "demo.json").read_text())
    assert report["passed"] is False and report["targets"]
    # the photo's classes, by name: person, chair, bottle, dining table (and the background for seg)
    names = {"person", "chair", "bottle", "diningtable"} | ({"background"} if kind == "seg" else set())
    metrics = ["bbox_AP50", "segm_AP50"] if kind == "det" else ["IoU"]
    assert list(report["per_class"]) == metrics
    if kind == "det":  # a class without any detection scores AP 0; every class of the photo is listed
        assert all(set(report["per_class"][m]) == names for m in metrics)
    else:  # a class is listed once it is predicted or labelled: the photo's classes at least
        assert set(report["per_class"]["IoU"]) >= names
    assert (tmp_path / "run" / "last.pth").is_file() and (tmp_path / "run" / "metrics.csv").is_file()
