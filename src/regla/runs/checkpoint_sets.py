"""Run checkpoints of every trainer: atomic checkpoint sets, full-state resume, clear errors for foreign files.

Each epoch writes ``last.pth`` (and ``best.pth`` when the task's score improves) through
:func:`regla.outputs.atomic_write_bytes` (write a temporary file, fsync, rename), so a run killed at any moment
leaves the previous checkpoint intact. A checkpoint holds the model, EMA, optimizer, scheduler, loss scaler, the
number of finished epochs and every rank's RNG state (python, numpy, torch, CUDA); the training sampler's order is a
function of that state and the epoch, so a resumed run continues on the same curve.

``last.safetensors`` / ``best.safetensors`` hold the weights the task exports (EMA if enabled): for ``regla train``
the plain classifier, loadable with ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=path, num_classes=N))``.
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regla.checkpoints import (
    TRAIN_FORMAT,
    CheckpointError,
    WeightsInfo,
    load_weights,
    read_train_checkpoint,
    safetensors_bytes,
)
from regla.outputs import atomic_write_bytes

__all__ = ["CheckpointError", "load_checkpoint", "recover", "restore", "save_checkpoint"]

FORMAT = TRAIN_FORMAT


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict[str, Any]:
    """This process's RNG state (python, numpy, torch CPU and CUDA) in a form ``torch.load(weights_only)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from :func:`rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def gather_rng_states(distributed: bool) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (one entry when not distributed)."""
    state = rng_state()
    if not distributed:
        return [state]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def make_checkpoint(*, model: nn.Module, ema: Any, optimizer: Any, scheduler: Any, scaler: Any, epoch: int,
                    cfg: dict[str, Any], arch: dict[str, Any], best: dict[str, Any], rng_states: list[dict[str, Any]],
                    extra: dict[str, Any] | None = None, position: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a resume needs; ``epoch`` is the number of finished epochs.

    ``arch`` names what was trained (checked on resume by the task); ``extra`` is the task's own state (the class
    map of ``regla train``, teacher names of ``regla distill`` ...), stored as top-level keys.
    ``position`` is set for a run stopped inside an epoch (SIGINT/SIGTERM): the batches done in the current epoch,
    every rank's RNG state at the epoch's start (to rebuild the same batch order and augmentation) and the loss
    meters, so that a resume continues at the next batch exactly.
    """
    return {
        "format": FORMAT,
        "arch": dict(arch),
        "epoch": epoch,
        "model": unwrap(model).state_dict(),
        "model_ema": unwrap(ema.module).state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "best": dict(best),
        "rng": rng_states,
        "cfg": dict(cfg),
        "position": position,
        **(extra or {}),
    }


#: The files of one checkpoint set. ``best.*`` are rewritten only in an epoch that improves the best score.
SET_FILES = ("last.pth", "last.safetensors", "best.pth", "best.safetensors")
COMMIT_LOG = "checkpoint.commit.json"
_PENDING = ".{name}.pending"


def _pending(run_dir: Path, name: str) -> Path:
    return run_dir / _PENDING.format(name=name)


def _step(hook: Any, what: str) -> None:
    """A point of the save protocol where a test may inject a failure (``hook(what)`` raises)."""
    if hook is not None:
        hook(what)


def save_checkpoint(ckpt: dict[str, Any], run_dir: Path, is_best: bool,
                    weights: dict[str, torch.Tensor] | None = None, info: WeightsInfo | None = None,
                    hook: Any = None) -> None:
    """Write ``last`` (and ``best``) ``.pth`` + ``.safetensors`` as ONE consistent set, by a redo log.

    1. every new file is written beside its target as ``.NAME.pending`` (atomic write: temp, fsync, rename);
    2. ``checkpoint.commit.json`` is written atomically, naming them: the commit point;
    3. each pending file is renamed over its target; 4. the log is removed.

    A kill before 2 leaves the previous set untouched (the pending files are deleted by :func:`recover`); a kill
    after 2 is completed by :func:`recover`, which every resume runs first. ``weights`` (None: none) go to the
    ``.safetensors`` files with ``info`` as metadata. ``hook`` is for fault-injection tests.
    """
    data = to_bytes(ckpt)
    names = {"last.pth": data}
    if weights is not None:
        names["last.safetensors"] = safetensors_bytes(weights, info)
    if is_best:
        names.update({n.replace("last", "best"): v for n, v in names.items()})
    for name, payload in names.items():
        _step(hook, f"write {name}")
        atomic_write_bytes(_pending(run_dir, name), payload)
    _step(hook, "commit")
    atomic_write_bytes(run_dir / COMMIT_LOG, json.dumps({"epoch": ckpt["epoch"], "files": sorted(names)}).encode())
    _finish(run_dir, sorted(names), hook)


def _finish(run_dir: Path, names: list[str], hook: Any = None) -> None:
    """Steps 3-4 of :func:`save_checkpoint` (idempotent: a pending file already renamed is skipped)."""
    for name in names:
        _step(hook, f"rename {name}")
        if _pending(run_dir, name).exists():
            os.replace(_pending(run_dir, name), run_dir / name)
    _step(hook, "clear log")
    (run_dir / COMMIT_LOG).unlink(missing_ok=True)


def recover(run_dir: Path) -> list[str]:
    """Bring a run folder back to one consistent checkpoint set after a kill; returns what was done.

    A commit log completes its set (redo); pending files without one are the uncommitted start of a set and are
    removed, as are temporary files of interrupted atomic writes of ours.
    """
    done = []
    log = run_dir / COMMIT_LOG
    if log.is_file():
        try:
            names = [n for n in json.loads(log.read_text())["files"] if n in SET_FILES]
        except (ValueError, KeyError, TypeError):
            names = None  # a torn log cannot exist (atomic write), but be safe: treat as uncommitted
        if names is not None:
            _finish(run_dir, names)
            done.append(f"completed the checkpoint set interrupted while being written ({', '.join(names)})")
        else:
            log.unlink()
    for name in SET_FILES:
        if _pending(run_dir, name).exists():
            _pending(run_dir, name).unlink()
            done.append(f"removed the uncommitted {_pending(run_dir, name).name}")
    for tmp in run_dir.glob(".*.tmp"):
        if any(tmp.name.startswith(f".{n}") for n in (*SET_FILES, *(f".{n}.pending" for n in SET_FILES))):
            tmp.unlink(missing_ok=True)
            done.append(f"removed the temporary file {tmp.name}")
    return done


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``regla train`` checkpoint (:func:`regla.checkpoints.read_train_checkpoint`)."""
    return read_train_checkpoint(path)




def restore(ckpt: dict[str, Any], *, model: nn.Module, ema: Any, optimizer: Any, scheduler: Any, scaler: Any,
            rank: int, world_size: int, path: str | Path, restore_scheduler: bool = True) -> None:
    """Put a checkpoint's state back into the live objects (weights, EMA, optimizer, schedule, scaler, RNG).

    With ``restore_scheduler=False`` (the schedule's recipe changed, e.g. more epochs) the new schedule is kept.
    """
    load_weights(unwrap(model), ckpt["model"], source=path)
    if ema is not None:
        if ckpt["model_ema"] is None:
            raise CheckpointError(f"{path} has no EMA weights but this run keeps an EMA (--set model_ema=false?)")
        load_weights(unwrap(ema.module), ckpt["model_ema"], source=path)
    optimizer.load_state_dict(ckpt["optimizer"])
    if restore_scheduler and scheduler is not None and ckpt["scheduler"] is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt["scaler"] is not None:
        scaler.load_state_dict(ckpt["scaler"])
    states = ckpt["rng"]
    if len(states) == world_size:
        set_rng_state(states[rank])
    else:
        import warnings

        warnings.warn(f"{path} was written by {len(states)} process(es), this run has {world_size}: "
                      "RNG streams restart from the seed, so augmentation differs from the original run", stacklevel=2)
