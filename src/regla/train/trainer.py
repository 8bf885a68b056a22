"""``regla train``: the whole run, from a recipe to checkpoints and metrics.

Reproduces the classification protocol of ReGLA §4.1 (ImageNet-1K at 224 px, 300 epochs, 20-epoch linear warm-up,
"training protocols from recent lightweight architectures [19, 46]": ConvNeXt/iFormer's AdamW, cosine, RandAugment,
Mixup/CutMix, label smoothing, random erasing, stochastic depth, EMA) with timm's components, on one
CPU process or under ``torchrun`` on any number of GPUs and nodes (NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from regla.checkpoints import info_from_train_checkpoint, read_weights
from regla.errors import UsageError
from regla.outputs import atomic_write_text

from . import checkpoint as ckpt_mod
from .config import data_settings, dump, scaled_lr
from .data import build_datasets, build_eval_loader, build_train_loader, read_skipped
from .distill import DistillationLoss, load_teacher
from .engine import StepContext, evaluate, train_one_epoch
from .logs import MetricsLogger
from .modeling import create_student, wrap_ddp
from .signals import StopSignals

_logger = logging.getLogger("regla.train")


class RunError(UsageError):
    """A run that must not start (it would overwrite a finished run, for instance)."""


@dataclass
class Dist:
    """Where this process sits in the job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def primary(self) -> bool:
        return self.rank == 0


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    epochs: int
    last: dict[str, Any] = field(default_factory=dict)
    best_top1: float = 0.0
    skipped_images: list[str] = field(default_factory=list)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def setup_distributed(cfg: dict[str, Any]) -> Dist:
    """timm's ``init_distributed_device_so``: torchrun/SLURM environment -> process group (NCCL or gloo)."""
    from timm.utils.distributed import init_distributed_device_so

    info = init_distributed_device_so(device=resolve_device(cfg["device"]))
    return Dist(device=torch.device(info["device"]), rank=info["global_rank"], world_size=info["world_size"],
                local_rank=info["local_rank"], distributed=info["distributed"])


def setup_determinism(cfg: dict[str, Any], d: Dist) -> None:
    """Threads, seeds (seed + rank, timm's ``random_seed``) and, if asked, deterministic kernels."""
    from timm.utils import random_seed

    if cfg["torch_threads"]:
        torch.set_num_threads(int(cfg["torch_threads"]))
    random_seed(cfg["seed"], d.rank)
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=d.device.type != "cpu")
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def run_dir_for(cfg: dict[str, Any], resume: bool, resume_from: str | Path | None = None) -> Path:
    """The run folder; a new run refuses a folder that already holds checkpoints (nothing gets overwritten).

    A resume writes into the folder it resumes (or ``output``, if given, which must not hold another run).
    """
    run_dir = Path(cfg["output"] or Path("runs") / cfg["model"]).expanduser()
    held = [n for n in ("last.pth", "best.pth") if (run_dir / n).exists()]
    if not resume and held:
        raise RunError(f"{run_dir} already holds a run ({', '.join(held)}); resume it with --resume {run_dir}, "
                       "or choose another --output")
    if resume and held and resume_from is not None and run_dir.resolve() != resume_dir(resume_from).resolve():
        raise RunError(f"--output {run_dir} already holds another run ({', '.join(held)}); resuming "
                       f"{resume_from} there would overwrite it: choose an empty --output")
    return run_dir


def prepare_run_dir(run_dir: Path, cfg: dict[str, Any], resume: bool, d: Dist) -> Path:
    """Create the run folder and record the recipe (rank 0), once every input check has passed."""
    if d.primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (run_dir / "skipped_images.txt").unlink(missing_ok=True)
        atomic_write_text(run_dir / ("config.yaml" if not resume else "config.resumed.yaml"), dump(cfg))
    if d.distributed:
        dist.barrier()
    return run_dir


def amp_dtype(cfg: dict[str, Any]) -> torch.dtype | None:
    if not cfg["amp"]:
        return None
    return torch.bfloat16 if cfg["amp_dtype"] == "bfloat16" else torch.float16


def build_criterion(cfg: dict[str, Any], num_classes: int, device: torch.device) -> DistillationLoss:
    """timm's SoftTargetCrossEntropy (mixup) / LabelSmoothingCrossEntropy, wrapped in DeiT's distillation loss."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg["mixup"] > 0 or cfg["cutmix"] > 0:
        base = SoftTargetCrossEntropy()  # label smoothing is folded into the mixed targets
    elif cfg["smoothing"] > 0:
        base = LabelSmoothingCrossEntropy(smoothing=cfg["smoothing"])
    else:
        base = torch.nn.CrossEntropyLoss()
    teacher = None
    if cfg["distillation_type"] != "none":
        teacher = load_teacher(cfg["teacher_model"], cfg["teacher_path"], num_classes, device)
    return DistillationLoss(base, teacher, cfg["distillation_type"], cfg["distillation_alpha"],
                            cfg["distillation_tau"])


def build_optimizer_and_schedule(cfg: dict[str, Any], model: torch.nn.Module, lr: float, updates_per_epoch: int):
    """timm's ``create_optimizer_v2`` (no weight decay on norms/biases) and ``create_scheduler_v2`` (warm-up)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    kw: dict[str, Any] = {"eps": cfg["opt_eps"]} if cfg["opt"].lower().startswith("adam") else {}
    if cfg["opt_betas"]:
        kw["betas"] = tuple(cfg["opt_betas"])
    optimizer = create_optimizer_v2(model, opt=cfg["opt"], lr=lr, weight_decay=cfg["weight_decay"],
                                    momentum=cfg["momentum"], **kw)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=cfg["sched"], num_epochs=cfg["epochs"], warmup_epochs=cfg["warmup_epochs"],
        warmup_lr=cfg["warmup_lr"], min_lr=cfg["min_lr"], cooldown_epochs=cfg["cooldown_epochs"],
        step_on_epochs=not cfg["sched_on_updates"], updates_per_epoch=updates_per_epoch)
    return optimizer, scheduler, num_epochs


def train(cfg: dict[str, Any], resume: str | Path | None = None, show_bar: bool = True) -> RunResult:
    """Run (or resume) training as ``cfg`` says; returns the run folder and the final metrics."""
    d = setup_distributed(cfg)
    try:
        return _train(cfg, resume, show_bar, d)
    finally:
        if d.distributed and dist.is_initialized():
            dist.destroy_process_group()


def resume_path(resume: str | Path) -> Path:
    """The checkpoint a ``--resume`` names: ``DIR/last.pth`` for a run folder, else the file itself."""
    path = Path(resume).expanduser()
    return path / "last.pth" if path.is_dir() else path


def resume_dir(resume: str | Path) -> Path:
    """The run folder a ``--resume`` names (the folder itself, or the checkpoint's folder)."""
    path = Path(resume).expanduser()
    return path if path.is_dir() else path.parent


@dataclass
class Parts:
    """Everything a run trains with, built once by :func:`_build`."""

    data: Any
    train_loader: Any
    val_loader: Any
    mixup_fn: Any
    model: torch.nn.Module  # bare model (weights saved from here)
    ema: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    ctx: StepContext  # holds the wrapped (DDP / compiled) model
    lr: float
    num_epochs: int
    updates_per_epoch: int


def _train(cfg: dict[str, Any], resume: str | Path | None, show_bar: bool, d: Dist) -> RunResult:
    cfg.update(data_settings(cfg))  # unset transform keys from the model's pretrained_cfg, recorded in config.yaml
    setup_determinism(cfg, d)
    if resume and not cfg["output"]:
        cfg["output"] = str(resume_dir(resume))  # a run continues in its own folder, wherever it now lies
    run_dir = Path(cfg["output"] or Path("runs") / cfg["model"]).expanduser()
    if d.primary and run_dir.is_dir():
        for note in ckpt_mod.recover(run_dir):  # finish or drop a checkpoint set a kill interrupted
            _logger.warning("%s: %s", run_dir, note)
    if d.distributed:
        dist.barrier()
    ckpt = ckpt_mod.load_checkpoint(resume_path(resume)) if resume else None  # fail before touching anything
    run_dir = run_dir_for(cfg, ckpt is not None, resume)
    data = build_datasets(cfg, skipped_log=run_dir / "skipped_images.txt")
    if ckpt is not None:
        ckpt_mod.check_arch(ckpt, cfg, data.num_classes, resume, data.class_map,
                            allow_class_change=bool(cfg.get("allow_class_change")))
    prepare_run_dir(run_dir, cfg, ckpt is not None, d)
    parts = _build(cfg, d, data)
    start_epoch, best, position = _resume_into(parts, ckpt, cfg, d, resume) if ckpt is not None else (0, None, None)
    del ckpt
    parts.ctx.model = wrap_ddp(parts.model, d.device, cfg["sync_bn"], d.distributed)
    if cfg["compile"]:
        parts.ctx.model = torch.compile(parts.ctx.model)
    if d.primary:
        _logger.info("training %s on %d images, %d classes; %d process(es) on %s; global batch %d; lr %.3g; "
                     "epochs %d -> %d; run folder %s", cfg["model"], len(data.train), data.num_classes,
                     d.world_size, d.device, cfg["batch_size"] * d.world_size * cfg["grad_accum"], parts.lr,
                     start_epoch, parts.num_epochs, run_dir)
    with StopSignals(d) as stop:
        return _run_epochs(parts, cfg, d, run_dir, start_epoch, best or {"top1": -1.0, "epoch": -1}, show_bar,
                           position, stop)


def _build(cfg: dict[str, Any], d: Dist, data) -> Parts:
    """Loaders, model, EMA (before SyncBN/DDP, as timm's train.py), optimizer, schedule, scaler and loss."""
    from timm.utils import ModelEmaV3, NativeScaler

    use_prefetcher = d.device.type == "cuda" if cfg["prefetcher"] is None else bool(cfg["prefetcher"])
    train_loader, mixup_fn = build_train_loader(cfg, data.train, d.device, d.distributed, data.num_classes,
                                                use_prefetcher)
    val_loader = build_eval_loader(cfg, data.val, d.device, use_prefetcher, rank=d.rank, world=d.world_size)
    updates_per_epoch = len(train_loader) // cfg["grad_accum"]
    if updates_per_epoch == 0:
        raise RunError(f"the training set ({len(data.train)} images) is smaller than one global batch "
                       f"({cfg['batch_size']} x {d.world_size} processes x {cfg['grad_accum']} accumulation)")
    model = create_student(cfg, data.num_classes).to(d.device)
    if cfg["initial_checkpoint"]:
        ckpt_mod.load_weights(model, _initial_weights(cfg["initial_checkpoint"]), cfg["initial_checkpoint"])
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEmaV3(model, decay=cfg["model_ema_decay"], use_warmup=cfg["model_ema_warmup"]) \
        if cfg["model_ema"] else None
    lr = scaled_lr(cfg, d.world_size)
    optimizer, scheduler, num_epochs = build_optimizer_and_schedule(cfg, model, lr, updates_per_epoch)
    dtype = amp_dtype(cfg)
    scaler = NativeScaler(device=d.device.type) if dtype == torch.float16 else None
    ctx = StepContext(model=model, criterion=build_criterion(cfg, data.num_classes, d.device), optimizer=optimizer,
                      device=d.device, scaler=scaler, amp_dtype=dtype, channels_last=cfg["channels_last"],
                      clip_grad=cfg["clip_grad"], clip_mode=cfg["clip_mode"], grad_accum=cfg["grad_accum"])
    return Parts(data=data, train_loader=train_loader, val_loader=val_loader, mixup_fn=mixup_fn, model=model,
                 ema=ema, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ctx=ctx, lr=lr,
                 num_epochs=num_epochs, updates_per_epoch=updates_per_epoch)


def _resume_into(parts: Parts, ckpt: dict[str, Any], cfg: dict[str, Any], d: Dist,
                 resume) -> tuple[int, dict, dict | None]:
    """Restore a checkpoint into ``parts``; returns the epoch to start from, the best score and, for a run stopped
    inside an epoch, where in it to continue."""
    changed = ckpt_mod.schedule_changed(ckpt, cfg)
    if changed and d.primary:
        _logger.warning("resuming with a changed schedule (%s): the LR follows the new recipe from epoch %d",
                        ", ".join(changed), ckpt["epoch"] + 1)
    ckpt_mod.restore(ckpt, model=parts.model, ema=parts.ema, optimizer=parts.optimizer, scheduler=parts.scheduler,
                     scaler=parts.scaler, rank=d.rank, world_size=d.world_size, path=resume,
                     restore_scheduler=not changed)
    start_epoch = int(ckpt["epoch"])
    position = ckpt.get("position")
    if position is not None and len(position["epoch_rng"]) != d.world_size:
        _logger.warning("the run stopped inside epoch %d with %d process(es); this one has %d: the epoch restarts",
                        start_epoch + 1, len(position["epoch_rng"]), d.world_size)
        position = None
    done_updates = position["step"] // cfg["grad_accum"] if position else 0
    if cfg["sched_on_updates"]:
        parts.scheduler.step_update(start_epoch * parts.updates_per_epoch + done_updates)
    else:
        parts.scheduler.step(start_epoch)
    return start_epoch, dict(ckpt["best"]), position


def _run_epochs(parts: Parts, cfg: dict[str, Any], d: Dist, run_dir: Path, start_epoch: int, best: dict,
                show_bar: bool, position: dict | None = None, stop: StopSignals | None = None) -> RunResult:
    """Train, evaluate, log and checkpoint each remaining epoch; a stop signal saves where it stopped."""
    # rows after the checkpoint's epoch (all rows, for a new run) are from a run that died: they are dropped
    logger = MetricsLogger(run_dir, resume_epoch=start_epoch) if d.primary else None
    result = RunResult(run_dir=run_dir, epochs=parts.num_epochs, best_top1=best["top1"])
    try:
        for epoch in range(start_epoch, parts.num_epochs):
            if stop is not None and stop.requested(d):  # a signal between epochs: save the state as it is
                _save(parts, cfg, run_dir, epoch - 1, best, ckpt_mod.gather_rng_states(d.distributed), False, d)
                raise stop.stopped(run_dir, epoch, 0)
            row = _train_and_eval_epoch(parts, cfg, d, epoch, show_bar, position, stop)
            position = None
            if "stopped_at" in row:
                _save(parts, cfg, run_dir, epoch - 1, best, ckpt_mod.gather_rng_states(d.distributed), False, d,
                      position=row)
                raise stop.stopped(run_dir, epoch, row["stopped_at"])
            score = row["top1_ema"] if parts.ema is not None else row["top1"]
            is_best = score is not None and score > best["top1"]
            if is_best:
                best = {"top1": score, "epoch": epoch + 1}
            skipped = read_skipped(run_dir / "skipped_images.txt")
            row.update(best_top1=best["top1"], skipped_images=len(skipped))
            rng_states = ckpt_mod.gather_rng_states(d.distributed)  # every rank takes part
            if d.primary:
                _report(row, skipped, result.skipped_images)
                logger.log(row)  # before the checkpoint: a resume truncates rows of unfinished epochs
            _save(parts, cfg, run_dir, epoch, best, rng_states, is_best, d)
            result.last, result.skipped_images = row, skipped
    finally:
        if logger is not None:
            logger.close()
    result.best_top1 = best["top1"]
    return result


def _train_and_eval_epoch(parts: Parts, cfg: dict[str, Any], d: Dist, epoch: int, show_bar: bool,
                          position: dict | None = None, stop: StopSignals | None = None) -> dict:
    """One epoch of training, the per-epoch schedule step, BN sync and validation; returns the metrics row.

    If a stop signal ends the epoch early, the row holds ``stopped_at`` (batches done) and what a resume needs.
    """
    from timm.utils import distribute_bn

    from .engine import EpochPosition

    if hasattr(parts.train_loader.sampler, "set_epoch"):
        parts.train_loader.sampler.set_epoch(epoch)  # DistributedSampler order is a function of (seed, epoch)
    if position is not None:  # the epoch's batch order and augmentation come from its starting RNG state
        ckpt_mod.set_rng_state(position["epoch_rng"][d.rank])
    epoch_rng = ckpt_mod.gather_rng_states(d.distributed)
    pos = EpochPosition(should_stop=_stop_check(stop, d, cfg["log_every"]) if stop is not None else None)
    if position is not None:
        rng_now = position["rng"][d.rank]
        pos = EpochPosition(start_batch=position["step"], loss_sum=position["loss_sum"],
                            loss_count=position["loss_count"], seen=position["seen"],
                            after_skip=lambda: ckpt_mod.set_rng_state(rng_now), should_stop=pos.should_stop)
    stats = train_one_epoch(parts.ctx, parts.train_loader, epoch, mixup_fn=parts.mixup_fn, scheduler=parts.scheduler,
                            ema=parts.ema, updates_per_epoch=parts.updates_per_epoch,
                            sched_on_updates=cfg["sched_on_updates"], show_bar=show_bar and d.primary,
                            log_every=cfg["log_every"], position=pos)
    if "stopped_at" in stats:
        return dict(stats, epoch_rng=epoch_rng)
    if not cfg["sched_on_updates"]:
        parts.scheduler.step(epoch + 1)
    if d.distributed and not cfg["sync_bn"]:
        distribute_bn(parts.model, d.world_size, reduce=True)  # same BN statistics on every rank
    val = _validate(cfg, parts.model, parts.ema, parts.val_loader, d, parts.ctx.amp_dtype, epoch, parts.num_epochs)
    return {"epoch": epoch + 1, **stats, **val}


def _stop_check(stop: StopSignals, d: Dist, log_every: int):
    """``should_stop`` for the engine: every update, or under DDP on GPU every ``log_every`` updates (a collective
    call each time; every rank calls it at the same updates, so all stop after the same step)."""
    every = max(1, log_every) if d.distributed and d.device.type == "cuda" else 1
    calls = [0]

    def check() -> bool:
        calls[0] += 1
        return calls[0] % every == 0 and stop.requested(d)

    return check


def _save(parts: Parts, cfg: dict[str, Any], run_dir: Path, epoch: int, best: dict, rng_states: list,
          is_best: bool, d: Dist, position: dict | None = None) -> None:
    """Rank 0 writes the checkpoint set of ``epoch + 1`` finished epochs (plus a position inside the next)."""
    if position is not None:
        position = {"step": position["stopped_at"], "loss_sum": position["loss_sum"],
                    "loss_count": position["loss_count"], "seen": position["seen"],
                    "epoch_rng": position["epoch_rng"], "rng": rng_states}
    if d.primary:
        state = ckpt_mod.make_checkpoint(model=parts.model, ema=parts.ema, optimizer=parts.optimizer,
                                         scheduler=parts.scheduler, scaler=parts.scaler, epoch=epoch + 1, cfg=cfg,
                                         class_map=parts.data.class_map, num_classes=parts.data.num_classes,
                                         best=best, rng_states=rng_states, position=position)
        ckpt_mod.save_checkpoint(state, run_dir, is_best, info_from_train_checkpoint(state), hook=_SAVE_HOOK[0])
    if d.distributed:
        dist.barrier()


#: Fault-injection point of the tests: a callable given each step of the checkpoint-set protocol.
_SAVE_HOOK: list[Any] = [None]


def _initial_weights(path: str) -> dict[str, torch.Tensor]:
    """Weights to start from: any weights file (:func:`regla.checkpoints.read_weights`, EMA rule)."""
    return read_weights(path).state


def _validate(cfg, model, ema, val_loader, d: Dist, dtype, epoch: int, num_epochs: int) -> dict[str, Any]:
    """Top-1/top-5 of the model and of its EMA, every ``eval_every`` epochs and after the last."""
    row: dict[str, Any] = {"val_loss": None, "top1": None, "top5": None, "top1_ema": None, "top5_ema": None}
    if (epoch + 1) % cfg["eval_every"] and epoch + 1 != num_epochs:
        return row
    m = evaluate(model, val_loader, d.device, amp_dtype=dtype, channels_last=cfg["channels_last"])
    row.update(val_loss=m["val_loss"], top1=m["top1"], top5=m["top5"])
    if ema is not None:
        e = evaluate(ema.module, val_loader, d.device, amp_dtype=dtype, channels_last=cfg["channels_last"])
        row.update(top1_ema=e["top1"], top5_ema=e["top5"])
    return row


def _report(row: dict[str, Any], skipped: list[str], before: list[str]) -> None:
    """One log line per epoch, and a warning naming newly skipped images."""
    ema = f" | EMA top-1 {row['top1_ema']:.2f}" if row.get("top1_ema") is not None else ""
    top1 = f"top-1 {row['top1']:.2f} top-5 {row['top5']:.2f}" if row.get("top1") is not None else "no eval"
    _logger.info("epoch %d: loss %.4f | %s%s | lr %.3g | %.0f img/s", row["epoch"], row["train_loss"], top1, ema,
                 row["lr"], row["train_img_s"])
    new = sorted(set(skipped) - set(before))
    if new:
        _logger.warning("%d unreadable image(s) skipped so far (listed in skipped_images.txt); new: %s",
                        len(skipped), ", ".join(new[:5]) + (" ..." if len(new) > 5 else ""))
