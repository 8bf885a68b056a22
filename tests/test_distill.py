"""Multi-teacher distillation (ReGLA §3.5, Table 8) on tiny random teachers: what each part and switch must do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from regla.checkpoints import CheckpointError, save_weights
from regla.distill.config import build_config
from regla.distill.losses import aggregate_teachers, standardize, teacher_loss
from regla.distill.task import DistillTask
from regla.distill.teachers import REGISTRY
from regla.eval.knn import few_shot_indices
from train_helpers import make_folder, save_hook

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "distill"


def _teacher_files(root: Path) -> list[dict]:
    """Two tiny random timm ViTs: patch 16 with a class token (ImageNet norm, 32 px), patch 14 without one (CLIP
    norm, 28 px, another width)."""
    import timm

    specs = [
        dict(name="vit16", model="vit_tiny_patch16_224", resolution=32, class_token="token",
             model_kwargs=dict(embed_dim=24, depth=1, num_heads=2, img_size=32, num_classes=0)),
        dict(name="vit14", model="vit_small_patch14_dinov2", resolution=28, class_token=None,
             mean=[0.4815, 0.4578, 0.4082], std=[0.2686, 0.2613, 0.2758],
             model_kwargs=dict(embed_dim=32, depth=1, num_heads=2, img_size=28, num_classes=0, class_token=False,
                               global_pool="avg")),
    ]
    for i, s in enumerate(specs):
        torch.manual_seed(i)
        model = timm.create_model(s["model"], **s["model_kwargs"])
        s["checkpoint"] = str(save_weights(root / f"{s['name']}.safetensors", model.state_dict()))
    return specs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = make_folder(root / "data", classes=3, train_per_class=8, val_per_class=3, size=32)
    return data, _teacher_files(root)


def cfg_for(setup, **overrides):
    data, teachers = setup
    base = dict(model="regla_t", img_size=32, batch_size=8, epochs=2, teachers=teachers, data_dir=str(data),
                knn_bank=str(data / "train"), knn_queries=str(data / "val"), head_hidden=16, head_last_hidden=32,
                workers=0, device="cpu", scale=[0.8, 1.0], lr=2e-3, warmup_epochs=0, seed=0)
    return build_config(None, base={**base, **overrides})


def built(setup, **overrides):
    torch.manual_seed(0)
    task = DistillTask()
    b = task.build(cfg_for(setup, **overrides), torch.device("cpu"), 0, 1)
    return task, b


def fixed_batch(b):
    return next(iter(b.train_loader))


def test_shapes_loss_falls_teachers_get_no_gradient(setup):
    from timm.optim import create_optimizer_v2

    task, b = built(setup)
    batch = fixed_batch(b)
    preds = b.model(batch[0])
    assert preds["vit16"]["patch"].shape == (8, 4, 24) and preds["vit16"]["cls"].shape == (8, 24)
    assert preds["vit14"]["patch"].shape == (8, 4, 32) and preds["vit14"]["cls"].shape == (8, 32)  # addcls
    opt = create_optimizer_v2(b.model, "adamw", lr=2e-3)
    losses = []
    for _ in range(12):
        loss, parts = task.step(b.model, batch, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert set(parts) >= {"loss_vit16", "loss_vit14", "batch_size"}
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    for teacher in task.teachers.values():
        assert not teacher.model.training
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not any(n.startswith("teachers") for n, _ in b.model.named_parameters())  # not in Built.model


def test_standardisation_statistics_are_the_batch_statistics(setup):
    task, b = built(setup)
    batch = fixed_batch(b)
    with torch.no_grad():
        _, raw = task.teachers["vit16"](batch[0], task.mean, task.std)
    task.step(b.model, batch, torch.device("cpu"))  # momentum 1 at step 0: the EMA becomes this batch's statistics
    tokens = torch.nn.functional.adaptive_avg_pool2d(raw, (2, 2)).flatten(2).transpose(1, 2).reshape(-1, 24)
    stats = b.model.stats["vit16"]
    torch.testing.assert_close(stats.patch_mean, tokens.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats.patch_std, tokens.std(0) + 1e-6, rtol=1e-4, atol=1e-5)
    assert int(b.model.stat_updates) == 1 and "stats.vit16.patch_mean" in b.model.state_dict()


def test_running_statistics_converge_under_the_cosine_momentum():
    from regla.distill.losses import cosine_momentum

    g = torch.Generator().manual_seed(0)
    mu, sigma = torch.tensor([3.0, -1.0, 0.5]), torch.tensor([2.0, 0.5, 1.0])
    mean, std = torch.zeros(3), torch.ones(3)
    for t in range(200):
        x = mu + sigma * torch.randn(64, 5, 3, generator=g)
        standardize(x, mean, std, cosine_momentum(t, 200))
    torch.testing.assert_close(mean, mu, atol=0.1, rtol=0)
    torch.testing.assert_close(std, sigma, atol=0.1, rtol=0)
    assert cosine_momentum(0, 200) == 1.0 and cosine_momentum(199, 200) == pytest.approx(0.001)
    y = standardize(mu + sigma * torch.randn(4096, 3, generator=g), mean, std, None)  # evaluation: no update
    assert y.mean(0).abs().max() < 0.1 and (y.std(0) - 1).abs().max() < 0.1


def test_saved_student_loads_as_a_plain_timm_model(setup, tmp_path):
    import timm

    task, b = built(setup)
    batch = fixed_batch(b)
    loss, _ = task.step(b.model, batch, torch.device("cpu"))
    loss.backward()
    path = save_weights(tmp_path / "student.safetensors", task.export_state(b.model), task.weights_info(b.model,
                                                                                                      task.cfg))
    assert not any(k.startswith(("heads", "stats")) for k in task.export_state(b.model))
    plain = timm.create_model("regla_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0)
    plain.eval()
    b.model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain.forward_features(x), b.model.backbone.forward_features(x))
        assert torch.equal(plain(x), b.model.backbone(x))


def test_onlycos_removes_the_smooth_l1_term():
    g = torch.Generator().manual_seed(0)
    pred = {"patch": torch.randn(4, 6, 8, generator=g), "cls": torch.randn(4, 8, generator=g)}
    target = {"patch": 3 * torch.randn(4, 6, 8, generator=g), "cls": 3 * torch.randn(4, 8, generator=g)}
    cos = {k: 1 - torch.nn.functional.cosine_similarity(pred[k], target[k], dim=-1) for k in pred}
    sl1 = {k: torch.nn.functional.smooth_l1_loss(pred[k], target[k], reduction="none").mean(-1) for k in pred}
    unic, _ = teacher_loss(pred, target, 0.5, 0.5, onlycos=False)
    torch.testing.assert_close(unic, ((0.5 * cos["patch"] + 0.5 * sl1["patch"]).mean(1)
                                      + 0.5 * cos["cls"] + 0.5 * sl1["cls"]) / 2)
    patch_only, _ = teacher_loss(pred, target, 0.5, 0.5, onlycos=True, onlycos_tokens="patch")  # §3.5
    torch.testing.assert_close(patch_only, (0.5 * cos["patch"].mean(1) + 0.5 * cos["cls"] + 0.5 * sl1["cls"]) / 2)
    everywhere, _ = teacher_loss(pred, target, 0.5, 0.5, onlycos=True, onlycos_tokens="all")  # Table 8's caption
    torch.testing.assert_close(everywhere, (0.5 * cos["patch"].mean(1) + 0.5 * cos["cls"]) / 2)


def test_teacher_dropping_off_means_every_teacher_every_step():
    losses = {n: torch.rand(16, requires_grad=True) for n in ("a", "b", "c")}
    loss, shares = aggregate_teachers(losses, 0.0)
    loss.backward()
    assert all(torch.allclose(losses[n].grad, torch.full((16,), 1 / 48)) for n in losses)
    assert all(float(s) == pytest.approx(1 / 3) for s in shares.values())
    torch.manual_seed(0)
    worst = torch.stack([losses[n].detach() for n in sorted(losses)]).argmax(0)
    dropped = 0
    for _ in range(20):  # UNIC: p = 0.5, the worst teacher of each image always kept
        for n in losses:
            losses[n].grad = None
        loss, _ = aggregate_teachers(losses, 0.5)
        loss.backward()
        grads = torch.stack([losses[n].grad for n in sorted(losses)])
        assert (grads.gather(0, worst.view(1, -1)) > 0).all()
        dropped += int((grads == 0).sum())
    assert dropped > 0


def test_addcls_adds_a_class_token_loss_for_a_teacher_without_one(setup):
    task, b = built(setup, addcls=False)
    batch = fixed_batch(b)
    assert b.model.heads["vit14"].cls is None and b.model.heads["vit16"].cls is None  # UNIC row: patch tokens only
    assert set(task.targets(b.model, batch[0], None)["vit14"]) == {"patch"}
    task, b = built(setup, addcls=True, standardize=False)
    targets = task.targets(b.model, batch[0], None)
    _, patches = task.teachers["vit14"](batch[0], task.mean, task.std)
    torch.testing.assert_close(targets["vit14"]["cls"], patches.mean((2, 3)))  # pooled teacher patch tokens
    cls, _ = task.teachers["vit16"](batch[0], task.mean, task.std)
    torch.testing.assert_close(targets["vit16"]["cls"], cls)  # its own class token


def test_grid_stride_sets_the_ladder_grid(setup):
    task, b = built(setup, grid_stride=8)
    assert b.model(torch.randn(2, 3, 32, 32))["vit16"]["patch"].shape == (2, 16, 24)


def test_missing_teacher_checkpoint_fails_at_build(setup, tmp_path):
    data, teachers = setup
    broken = [dict(teachers[0], checkpoint=str(tmp_path / "missing.safetensors")), teachers[1]]
    with pytest.raises(CheckpointError, match="teacher vit16: checkpoint .*missing.safetensors not found"):
        DistillTask().build(cfg_for(setup, teachers=broken), torch.device("cpu"), 0, 1)


def test_knn_evaluation_and_few_shot_bank(setup):
    task, b = built(setup, knn_bank_per_class=2, knn_k=[20, 1])
    m = task.evaluate(b.model, 0)
    assert set(m) >= {"knn_top1", "knn_top5", "knn_top1_k1"} and 0 <= m["knn_top1"] <= 100
    assert len(task.knn_loaders[0].loader.dataset) == 6
    assert few_shot_indices([0, 0, 0, 1, 1, 1], 2, 0) == few_shot_indices([0, 0, 0, 1, 1, 1], 2, 0)


TABLE8 = {  # row: (teachers, what the row adds to the one before)
    1: (["4tea"], {}), 2: (["4tea"], {"onlycos": True}), 3: (["4tea"], {"addcls": True}),
    4: (["4tea"], {"sync_bn": True, "teacher_drop": 0.0}), 5: (["6tea"], {}), 6: (["7tea"], {}),
}


def test_table8_rows_change_what_their_labels_say():
    rows = {r: build_config(str(CONFIGS / f"table8_row{r}.yaml")).flat() for r in TABLE8}  # the YAML form
    assert rows[1]["onlycos"] is False and rows[1]["addcls"] is False and rows[1]["sync_bn"] is False
    assert rows[1]["teacher_drop"] == 0.5 and rows[1]["standardize"] is True
    default = build_config(None).flat()
    for r, (teachers, change) in TABLE8.items():
        assert rows[r]["teachers"] == teachers and rows[r]["model"] == "regla_m" and rows[r]["epochs"] == 100
        if r > 1:
            diff = {k: rows[r][k] for k in rows[r] if rows[r][k] != rows[r - 1][k] and k not in ("teachers", "output")}
            assert diff == change, (r, diff)
    paths = ("output", "data_dir", "knn_bank", "knn_queries", "teacher_checkpoints")
    assert {k: v for k, v in rows[6].items() if k not in paths} == {k: v for k, v in default.items() if k not in paths}
    assert set(rows[6]["teacher_checkpoints"]) == set(REGISTRY)


def test_phase_recipes_build():
    from regla.train.config import build_config as train_config

    phase1 = build_config(str(CONFIGS / "regla_m_in21k.yaml")).flat()
    assert phase1["epochs"] == 30 and phase1["teachers"] == ["7tea"] and phase1["model"] == "regla_m"
    for size in "tslx":  # Fig. 4's sizes: each differs from ReGLA-M's phase 1 in its model and output only
        other = build_config(str(CONFIGS / f"regla_{size}_in21k.yaml")).flat()
        assert other["model"] == f"regla_{size}" and other["output"] == f"runs/distill/regla_{size}_in21k"
        assert {k: v for k, v in other.items() if k not in ("model", "output")} == \
               {k: v for k, v in phase1.items() if k not in ("model", "output")}
    phase2 = train_config(str(CONFIGS / "regla_m_in1k_ft.yaml")).flat()
    assert phase2["epochs"] == 200 and phase2["model"] == "regla_m" and phase2["initial_checkpoint"]


def test_regla_distill_runs_on_the_harness(setup, tmp_path, capsys):
    """The CLI end to end for one epoch: the harness saves the plain student and the KNN score."""
    import timm

    from regla.cli import main

    data, teachers = setup
    out = tmp_path / "run"
    args = ["distill", "--model", "regla_t", "--data", str(data), "--img-size", "32", "--batch-size", "8",
            "--epochs", "1", "--device", "cpu", "--workers", "0", "--output", str(out), "--no-progress",
            "--knn-bank", str(data / "train"), "--knn-queries", str(data / "val"),
            "--set", f"teachers={json.dumps(teachers)}", "--set", "warmup_epochs=0",
            "--set", "head_hidden=16", "--set", "head_last_hidden=16", "--set", "sync_bn=false"]
    assert main(args) == 0, capsys.readouterr().err
    assert "KNN (k=20) top-1" in capsys.readouterr().out
    plain = timm.create_model("regla_t", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(out / "last.safetensors")))
    assert plain.num_classes == 0
    ckpt = torch.load(out / "last.pth", weights_only=False)
    assert any(k.startswith("stats.vit16") for k in ckpt["model"]) and int(ckpt["model"]["stat_updates"]) == 3

    # phase 2 (regla train --initial-checkpoint): the backbone strictly, a fresh classifier
    from regla.train.task import load_initial

    classifier = timm.create_model("regla_t", num_classes=7)
    load_initial(classifier, out / "last.safetensors")
    assert all(torch.equal(v, classifier.state_dict()[k]) for k, v in plain.state_dict().items())
    with pytest.raises(CheckpointError, match="does not fit"):
        load_initial(timm.create_model("regla_s", num_classes=7), out / "last.safetensors")


def test_regla_distill_checks_teacher_checkpoints_first(setup, tmp_path, capsys):
    from regla.cli import main

    data, _ = setup
    code = main(["distill", "-c", "table8_row1", "--data", str(data), "--knn-bank", str(data / "train"),
                 "--knn-queries", str(data / "val"), "--output", str(tmp_path / "r"), "--device", "cpu",
                 "--teacher-checkpoint", f"dbot_ft={tmp_path / 'dbot.pth'}"])
    err = capsys.readouterr().err
    assert code == 2 and "teacher dbot_ft: checkpoint" in err and "dbot.pth not found" in err
    assert main(["distill", "-c", "table8_row3", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "addcls: true" in printed and "teacher_drop: 0.5" in printed


def test_interrupted_run_resumes_to_the_same_weights(setup, tmp_path):
    """A run stopped right after its first checkpoint and resumed equals an uninterrupted one: heads, statistics
    and their update count, backbone; with teacher dropping (random) and random crops and flips on."""
    from regla.runs.checkpoint_sets import load_checkpoint
    from regla.runs.harness import run

    recipe = dict(epochs=3, teacher_drop=0.5, hflip=0.5, scale=[0.5, 1.0], sync_bn=False, warmup_epochs=1)
    full = run(DistillTask(), cfg_for(setup, output=str(tmp_path / "full"), **recipe), show_bar=False)

    class Killed(Exception):
        pass

    def kill_after_first_set(what: str) -> None:
        if what == "clear log":
            raise Killed

    cfg = cfg_for(setup, output=str(tmp_path / "killed"), **recipe)
    with save_hook(kill_after_first_set), pytest.raises(Killed):
        run(DistillTask(), cfg, show_bar=False)
    assert load_checkpoint(tmp_path / "killed" / "last.pth")["epoch"] == 1  # it did stop after one epoch
    resumed = run(DistillTask(), cfg, resume=str(tmp_path / "killed"), show_bar=False)
    a, b = load_checkpoint(full.run_dir / "last.pth"), load_checkpoint(resumed.run_dir / "last.pth")
    assert a["epoch"] == b["epoch"] == 3 and int(a["model"]["stat_updates"]) == 9
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert full.last["knn_top1"] == resumed.last["knn_top1"]


def test_any_timm_model_is_a_student(setup, tmp_path):
    """A timm ConvNeXt as the student: its four stages feed the ladder; the saved weights load back in timm."""
    import timm

    task, b = built(setup, model="convnext_atto", ladder_stages=[0, 1, 2, 3])
    assert [b.model.backbone.feature_info[i]["reduction"] for i in b.model.stages] == [4, 8, 16, 32]
    loss, _ = task.step(b.model, fixed_batch(b), torch.device("cpu"))
    loss.backward()
    path = save_weights(tmp_path / "s.safetensors", task.export_state(b.model))
    plain = timm.create_model("convnext_atto", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain.forward_features(x), b.model.backbone.eval().forward_features(x))


def test_knn_evaluation_counts_and_names_unreadable_images(setup, tmp_path, caplog):
    """An unreadable bank image is left out of the KNN bank, counted in the row (``knn_skipped``) and named."""
    import logging
    import shutil

    data, _ = setup
    bank = tmp_path / "bank"
    shutil.copytree(data / "train", bank)
    broken = sorted((bank / "class_0").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:40])
    task, b = built(setup, knn_bank=str(bank))
    caplog.set_level(logging.WARNING, "regla.distill")
    m = task.evaluate(b.model, 0)
    assert m["knn_skipped"] == 1 and str(broken) in caplog.text


@pytest.mark.parametrize("name", ["vit", "regnet"])
def test_demo_teachers_are_trained_by_regla_train_with_the_recipe_of_before(name, tmp_path):
    """The demo trains each teacher with ``regla train --demo`` in a child process (distill imports no trainer):
    the child resolves the recipe the demo built in-process before, key for key."""
    import subprocess

    from regla.config import dump
    from regla.distill.demo import TEACHERS, teacher_command
    from regla.train.config import SCHEMA as TRAIN_SCHEMA
    from regla.train.demo import DEMO_RECIPE

    t, run_dir, digits = TEACHERS[name], tmp_path / name, tmp_path / "digits"
    before = TRAIN_SCHEMA.build(None, base={**DEMO_RECIPE, "data_dir": str(digits), "model": t["model"],
                                            "model_kwargs": t["model_kwargs"], "output": str(run_dir), **t["train"]})
    argv = teacher_command(name, digits, run_dir, show_bar=False)
    assert "--resume" not in argv
    child = subprocess.run([*argv, "--print-config"], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout == dump(before)
    (run_dir / "last.pth").parent.mkdir(parents=True)
    (run_dir / "last.pth").write_bytes(b"")
    assert teacher_command(name, digits, run_dir, show_bar=True)[-2:] == ["--resume", str(run_dir)]
