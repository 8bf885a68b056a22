"""The one run harness: a task (:mod:`regla.runs.task`) from its recipe to checkpoints and metrics.

Every trainer (``regla train``, ``regla distill``, ``regla det train``, ``regla seg train``) runs here, on one CPU
process or under ``torchrun`` on any number of GPUs and nodes (NCCL on GPU, gloo on CPU). The harness owns the run
folder (a new run never overwrites one that holds checkpoints nor a folder holding the user's files; a resume
continues in its own folder; one live run per folder, by a lock held for the run's life: :mod:`regla.runs.folder`;
a batch larger than the training set is refused), DDP and SyncBN, AMP, the timm optimizer and schedule, EMA, the
progress bar, CSV/JSONL/TensorBoard logs, atomic checkpoint sets (:mod:`regla.runs.checkpoint_sets`), exact resume
to the batch, and SIGINT/SIGTERM (a resumable checkpoint, exit 130/143).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from regla.config import Recipe, dump
from regla.errors import UsageError
from regla.outputs import atomic_write_text

from . import checkpoint_sets as ckpt_mod
from .config import RunSection, scaled_lr, schedule_changed
from .distributed import Dist, amp_dtype, setup_determinism, setup_distributed, wrap_ddp
from .engine import EpochPosition, StepContext, train_one_epoch
from .folder import RunLock, check_run_dir, resume_dir, resume_path
from .logs import MetricsLogger
from .signals import StopSignals
from .task import Built, Task

_logger = logging.getLogger("regla.runs")


class RunError(UsageError):
    """A run that must not start (it would overwrite a finished run, for instance)."""


@dataclass
class RunResult:
    """What a finished run reports: its folder, epochs, the last metrics row and the best score."""

    run_dir: Path
    epochs: int
    last: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)  # {"score": value of the task's score_key, "epoch": n}


@dataclass
class Parts:
    """Everything a run trains with, built once by :func:`_build`."""

    built: Built
    model: torch.nn.Module  # bare model (weights saved from here)
    ema: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    ctx: StepContext  # holds the wrapped (DDP / compiled) model
    lr: float
    num_epochs: int
    updates_per_epoch: int


def default_run_dir(run_cfg: RunSection, name: str) -> Path:
    """``output``, or ``runs/<name>`` (the run's name: the model trained, for instance)."""
    return Path(run_cfg.output or Path("runs") / name).expanduser()


def run_dir_for(run_cfg: RunSection, name: str, resume: bool, resume_from: str | Path | None = None,
                command: str = "regla train") -> Path:
    """The run folder; a new run refuses a folder that already holds checkpoints (nothing gets overwritten).

    A resume writes into the folder it resumes (or ``output``, if given, which must not hold another run).
    """
    run_dir = default_run_dir(run_cfg, name)
    held = [n for n in ("last.pth", "best.pth") if (run_dir / n).exists()]
    if not resume and held:
        raise RunError(f"{run_dir} already holds a run ({', '.join(held)}); resume it with {command} --resume "
                       f"{run_dir}, or choose another --output")
    if resume and held and resume_from is not None and run_dir.resolve() != resume_dir(resume_from).resolve():
        raise RunError(f"--output {run_dir} already holds another run ({', '.join(held)}); resuming "
                       f"{resume_from} there would overwrite it: choose an empty --output")
    return run_dir


def prepare_run_dir(run_dir: Path, recipe: Recipe, resume: bool, d: Dist) -> Path:
    """Create the run folder and record the recipe in its flat form (rank 0), once every input check has passed."""
    if d.primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / ("config.yaml" if not resume else "config.resumed.yaml"), dump(recipe))
    if d.distributed:
        dist.barrier()
    return run_dir


def build_optimizer_and_schedule(run_cfg: RunSection, params: Any, lr: float, updates_per_epoch: int):
    """timm's ``create_optimizer_v2`` (no weight decay on norms/biases) and ``create_scheduler_v2`` (warm-up).

    ``warmup_updates`` > 0 gives the warm-up in optimizer updates (mmdet's 500 iterations), whatever the epoch
    length; ``decay_milestones``/``decay_rate`` drive ``multistep`` (and ``decay_rate`` is ``poly``'s power).
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    kw: dict[str, Any] = {"eps": run_cfg.opt_eps} if run_cfg.opt.lower().startswith("adam") else {}
    if run_cfg.opt_betas:
        kw["betas"] = tuple(run_cfg.opt_betas)
    optimizer = create_optimizer_v2(params, opt=run_cfg.opt, lr=lr, weight_decay=run_cfg.weight_decay,
                                    momentum=run_cfg.momentum, **kw)
    warmup = run_cfg.warmup_updates / updates_per_epoch if run_cfg.warmup_updates else run_cfg.warmup_epochs
    # timm's multistep decays when t + 1 passes a milestone (one step early for mmdet's `step: [8, 11]`, which
    # trains 8 whole epochs at the base LR): half a step later is exactly "from epoch m on" in both units
    half = 0.5 / updates_per_epoch if run_cfg.sched_on_updates else 0.5
    milestones = [m + half for m in run_cfg.decay_milestones] or [90, 180, 270]
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=run_cfg.sched, num_epochs=run_cfg.epochs, warmup_epochs=warmup,
        warmup_lr=run_cfg.warmup_lr, min_lr=run_cfg.min_lr, cooldown_epochs=run_cfg.cooldown_epochs,
        decay_milestones=milestones, decay_rate=run_cfg.decay_rate,
        step_on_epochs=not run_cfg.sched_on_updates, updates_per_epoch=updates_per_epoch)
    return optimizer, scheduler, num_epochs


def run(task: Task, recipe: Recipe, name: str = "run", resume: str | Path | None = None,
        show_bar: bool = True) -> RunResult:
    """Run (or resume) ``task`` as ``recipe`` says; returns the run folder, the last metrics and the best score.

    The harness reads the run section (``recipe.run``) alone; ``name`` names the run (the default run folder is
    ``runs/<name>``). The whole recipe goes to the task (``task.build``) and is recorded as it is (``config.yaml``,
    the checkpoints).
    """
    d = setup_distributed(recipe.run.device)
    try:
        return _run(task, recipe, name, resume, show_bar, d)
    finally:
        if d.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _run(task: Task, recipe: Recipe, name: str, resume: str | Path | None, show_bar: bool, d: Dist) -> RunResult:
    setup_determinism(recipe.run, d)
    if resume and not recipe.run.output:  # a run continues in its own folder, wherever it now lies
        recipe = recipe.replace(output=str(resume_dir(resume)))
    run_cfg = recipe.run
    run_dir = default_run_dir(run_cfg, name)
    with contextlib.ExitStack() as held:
        lock = RunLock(run_dir, task.command)
        if d.primary:
            check_run_dir(run_dir, task.command, resume=bool(resume))  # the user's files, another live run
            if run_dir.is_dir():
                held.enter_context(lock)  # before recover(): never touch a folder another run is writing
                for note in ckpt_mod.recover(run_dir):  # finish or drop a checkpoint set a kill interrupted
                    _logger.warning("%s: %s", run_dir, note)
        if d.distributed:
            dist.barrier()
        ckpt = ckpt_mod.load_checkpoint(resume_path(resume)) if resume else None  # fail before touching anything
        run_dir = run_dir_for(run_cfg, name, ckpt is not None, resume, task.command)
        task.run_dir = run_dir  # type: ignore[attr-defined]  (a task may log into its run folder)
        built = task.build(recipe, d.device, d.rank, d.world_size)
        _check_batch_fits(built, run_cfg, task.command)
        if ckpt is not None:
            check_resume(task, built, ckpt, recipe, resume)
        if d.primary and not lock.held:
            held.enter_context(lock)  # a new folder: created and locked now that every input check has passed
        prepare_run_dir(run_dir, recipe, ckpt is not None, d)
        parts = _build(run_cfg, d, built, task)
        start_epoch, best, position = (_resume_into(parts, ckpt, run_cfg, d, resume) if ckpt is not None
                                       else (0, None, None))
        del ckpt
        parts.ctx.model = wrap_ddp(parts.model, d.device, run_cfg.sync_bn, d.distributed)
        if run_cfg.compile:
            parts.ctx.model = torch.compile(parts.ctx.model)
        if d.primary:
            _logger.info("%s: %s; %d process(es) on %s; global batch %d; lr %.3g; epochs %d -> %d; run folder %s",
                         task.command, name, d.world_size, d.device, run_cfg.batch_size * d.world_size
                         * run_cfg.grad_accum, parts.lr, start_epoch, parts.num_epochs, run_dir)
        with StopSignals(d, command=task.command) as stop:
            return _run_epochs(task, parts, recipe, d, run_dir, start_epoch, best or {"score": None, "epoch": 0},
                               show_bar, position, stop)


def batch_too_large(num_samples: int | None, batch_size: int) -> str | None:
    """Why a per-process batch of ``batch_size`` does not fit a training set of ``num_samples`` (None: it fits)."""
    if num_samples is None or batch_size <= num_samples:
        return None
    return (f"batch_size = {batch_size} is larger than the training set ({num_samples} samples): every batch would "
            f"repeat samples; set --batch-size {num_samples} or less")


def _check_batch_fits(built: Built, run_cfg: RunSection, command: str) -> None:
    """Every trainer: a per-process batch larger than the training set is refused (as ``regla distill`` does)."""
    dataset = getattr(built.train_loader, "dataset", None)
    size = len(dataset) if hasattr(dataset, "__len__") else None
    why = batch_too_large(size, run_cfg.batch_size)
    if why:
        raise RunError(f"{command}: {why}")


def check_resume(task: Task, built: Built, ckpt: dict[str, Any], recipe: Recipe, path) -> None:
    """The task's own check (``task.check_resume``) or: the checkpoint's ``arch`` equals this run's (every key of
    ``Built.arch``; an empty one checks nothing)."""
    own = getattr(task, "check_resume", None)
    if own is not None:
        own(ckpt, recipe, path)
        return
    arch = built.arch
    saved = ckpt.get("arch") or {}
    differ = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in arch.items() if saved.get(k) != v]
    if differ:
        raise ckpt_mod.CheckpointError(f"{resume_path(path)} is from another run ({'; '.join(differ)})")


def _build(run_cfg: RunSection, d: Dist, built: Built, task: Task) -> Parts:
    """Model on its device, EMA (before SyncBN/DDP, as timm's train.py), optimizer, schedule and scaler."""
    from timm.utils import ModelEmaV3, NativeScaler

    updates_per_epoch = len(built.train_loader) // run_cfg.grad_accum
    if updates_per_epoch == 0:
        raise RunError(f"the training set ({len(built.train_loader)} batches per process) is smaller than one "
                       f"update ({run_cfg.grad_accum} accumulated batches)")
    model = built.model.to(d.device)
    if run_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEmaV3(model, decay=run_cfg.model_ema_decay, use_warmup=run_cfg.model_ema_warmup) \
        if run_cfg.model_ema else None
    lr = scaled_lr(run_cfg, d.world_size)
    params = built.param_groups if built.param_groups is not None else model
    optimizer, scheduler, num_epochs = build_optimizer_and_schedule(run_cfg, params, lr, updates_per_epoch)
    dtype = amp_dtype(run_cfg)
    scaler = NativeScaler(device=d.device.type) if dtype == torch.float16 else None
    ctx = StepContext(model=model, step=task.step, optimizer=optimizer, device=d.device,
                      scaler=scaler, amp_dtype=dtype, clip_grad=run_cfg.clip_grad, clip_mode=run_cfg.clip_mode,
                      grad_accum=run_cfg.grad_accum)
    return Parts(built=built, model=model, ema=ema, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                 ctx=ctx, lr=lr, num_epochs=num_epochs, updates_per_epoch=updates_per_epoch)


def _resume_into(parts: Parts, ckpt: dict[str, Any], run_cfg: RunSection, d: Dist,
                 resume) -> tuple[int, dict, dict | None]:
    """Restore a checkpoint into ``parts``; returns the epoch to start from, the best score and, for a run stopped
    inside an epoch, where in it to continue."""
    changed = schedule_changed(ckpt["cfg"], run_cfg)
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
    done_updates = position["step"] // run_cfg.grad_accum if position else 0
    if run_cfg.sched_on_updates:
        parts.scheduler.step_update(start_epoch * parts.updates_per_epoch + done_updates)
    else:
        parts.scheduler.step(start_epoch)
    return start_epoch, dict(ckpt["best"]), position


def _run_epochs(task: Task, parts: Parts, recipe: Recipe, d: Dist, run_dir: Path, start_epoch: int,
                best: dict, show_bar: bool, position: dict | None, stop: StopSignals) -> RunResult:
    """Train, evaluate, log and checkpoint each remaining epoch; a stop signal saves where it stopped."""
    # rows after the checkpoint's epoch (all rows, for a new run) are from a run that died: they are dropped
    logger = MetricsLogger(run_dir, resume_epoch=start_epoch) if d.primary else None
    result = RunResult(run_dir=run_dir, epochs=parts.num_epochs, best=dict(best))
    try:
        for epoch in range(start_epoch, parts.num_epochs):
            if stop.requested(d):  # a signal between epochs: save the state as it is
                _save(task, parts, recipe, run_dir, epoch - 1, best, ckpt_mod.gather_rng_states(d.distributed), False,
                      d)
                raise stop.stopped(run_dir, epoch, 0)
            row = _train_and_eval_epoch(task, parts, recipe.run, d, epoch, show_bar, position, stop)
            position = None
            if "stopped_at" in row:
                _save(task, parts, recipe, run_dir, epoch - 1, best, ckpt_mod.gather_rng_states(d.distributed), False,
                      d, position=row)
                raise stop.stopped(run_dir, epoch, row["stopped_at"])
            key = task.score_key + ("_ema" if parts.ema is not None else "")
            score = row.get(key)
            # a NaN score (mmseg's mIoU of a set without a labelled pixel) is never the best
            is_best = score is not None and score == score and (best["score"] is None or score > best["score"])
            if is_best:
                best = {"score": score, "epoch": epoch + 1}
            row[f"best_{task.score_key}"] = best["score"]
            annotate = getattr(task, "annotate", None)
            if annotate is not None:
                annotate(row)
            rng_states = ckpt_mod.gather_rng_states(d.distributed)  # every rank takes part
            if d.primary:
                _report(task, row)
                logger.log(row)  # before the checkpoint: a resume truncates rows of unfinished epochs
            _save(task, parts, recipe, run_dir, epoch, best, rng_states, is_best, d)
            result.last = row
    finally:
        if logger is not None:
            logger.close()
    result.best = best
    return result


def _train_and_eval_epoch(task: Task, parts: Parts, run_cfg: RunSection, d: Dist, epoch: int, show_bar: bool,
                          position: dict | None, stop: StopSignals) -> dict:
    """One epoch of training, the per-epoch schedule step, BN sync and evaluation; returns the metrics row.

    If a stop signal ends the epoch early, the row holds ``stopped_at`` (batches done) and what a resume needs.
    """
    from timm.utils import distribute_bn

    loader = parts.built.train_loader
    if hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)  # DistributedSampler order is a function of (seed, epoch)
    if position is not None:  # the epoch's batch order and augmentation come from its starting RNG state
        ckpt_mod.set_rng_state(position["epoch_rng"][d.rank])
    epoch_rng = ckpt_mod.gather_rng_states(d.distributed)
    pos = EpochPosition(should_stop=_stop_check(stop, d, run_cfg.log_every))
    if position is not None:
        rng_now = position["rng"][d.rank]
        pos = EpochPosition(start_batch=position["step"], meters=position["meters"], seen=position["seen"],
                            after_skip=lambda: ckpt_mod.set_rng_state(rng_now), should_stop=pos.should_stop)
    stats = train_one_epoch(parts.ctx, loader, epoch, scheduler=parts.scheduler, ema=parts.ema,
                            updates_per_epoch=parts.updates_per_epoch, sched_on_updates=run_cfg.sched_on_updates,
                            show_bar=show_bar and d.primary, log_every=run_cfg.log_every, position=pos)
    if "stopped_at" in stats:
        return dict(stats, epoch_rng=epoch_rng)
    if not run_cfg.sched_on_updates:
        parts.scheduler.step(epoch + 1)
    if d.distributed and not run_cfg.sync_bn:
        distribute_bn(parts.model, d.world_size, reduce=True)  # same BN statistics on every rank
    return {"epoch": epoch + 1, **stats, **_evaluate(task, parts, run_cfg, epoch)}


def _evaluate(task: Task, parts: Parts, run_cfg: RunSection, epoch: int) -> dict[str, Any]:
    """The task's metrics for the model (and its EMA, keys suffixed ``_ema``) every ``eval_every`` epochs and after
    the last; {} in between."""
    if (epoch + 1) % run_cfg.eval_every and epoch + 1 != parts.num_epochs:
        return {}
    row = dict(task.evaluate(parts.model, epoch))
    if parts.ema is not None:
        row.update({f"{k}_ema": v for k, v in task.evaluate(parts.ema.module, epoch).items()})
    return row


def _stop_check(stop: StopSignals, d: Dist, log_every: int):
    """``should_stop`` for the engine: every update, or under DDP on GPU every ``log_every`` updates (a collective
    call each time; every rank calls it at the same updates, so all stop after the same step)."""
    every = max(1, log_every) if d.distributed and d.device.type == "cuda" else 1
    calls = [0]

    def check() -> bool:
        calls[0] += 1
        return calls[0] % every == 0 and stop.requested(d)

    return check


def _save(task: Task, parts: Parts, recipe: Recipe, run_dir: Path, epoch: int, best: dict, rng_states: list,
          is_best: bool, d: Dist, position: dict | None = None) -> None:
    """Rank 0 writes the checkpoint set of ``epoch + 1`` finished epochs (plus a position inside the next)."""
    if position is not None:
        position = {"step": position["stopped_at"], "meters": position["meters"], "seen": position["seen"],
                    "epoch_rng": position["epoch_rng"], "rng": rng_states}
    if d.primary:
        b = parts.built
        state = ckpt_mod.make_checkpoint(model=parts.model, ema=parts.ema, optimizer=parts.optimizer,
                                         scheduler=parts.scheduler, scaler=parts.scaler, epoch=epoch + 1,
                                         cfg=recipe.flat(), arch=b.arch, best=best,
                                         rng_states=rng_states, extra=b.extra, position=position)
        source = parts.ema.module if parts.ema is not None else parts.model
        weights = task.export_state(source)
        info = task.weights_info(source, recipe) if weights is not None else None
        ckpt_mod.save_checkpoint(state, run_dir, is_best, weights=weights, info=info)
    if d.distributed:
        dist.barrier()


def _report(task: Task, row: dict[str, Any]) -> None:
    """The task's epoch line (``task.report(row)``), or a generic one."""
    own = getattr(task, "report", None)
    if own is not None:
        own(row)
        return
    metrics = " ".join(f"{k} {v:.4g}" for k, v in row.items()
                       if isinstance(v, float) and k not in ("lr", "train_img_s", "epoch_time_s"))
    _logger.info("epoch %d: %s | lr %.3g | %.0f img/s", row["epoch"], metrics, row["lr"], row["train_img_s"])
