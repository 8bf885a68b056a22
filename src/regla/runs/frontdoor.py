"""The one front door of every trainer: ``regla train``, ``regla distill``, ``regla det train``, ``regla seg train``,
``regla sam distill`` and the demo trainer of ``regla sam --demo``.

A trainer is a :class:`Trainer` declaration: its schema, its extra flags (and the recipe values they give), its task
factory, its extra checks, its summary and its demo. This module owns what they share:

* the shared flags (:func:`add_arguments`): ``-c/--config``, ``--set``, ``--resume``, ``--demo``,
  ``--print-config``, ``--output``, ``--no-progress`` and the run section's shortcuts (``--epochs``, ``--batch-size``,
  ``--lr``, ``--device``, ``--workers``, ``--seed``, ``--amp``);
* the recipe (:func:`resolve`): defaults < the demo's recipe < the resumed run's recipe < ``--config`` < flags <
  ``--set`` (:func:`regla.runs.config.resolve_recipe`);
* logging (:func:`setup_logging`): one format (the message alone), INFO on rank 0 and warnings only on the other
  ranks, to **stdout**. The epoch lines and the closing line are the command's output, so they go where its output
  goes; stderr is kept for what needs the user's attention: the one-line error of :mod:`regla.errors`, warnings
  and skipped inputs. ``regla train ... 2>/dev/null`` then shows the run and nothing else, and a failed run's stderr
  is its error alone;
* device resolution (:func:`resolve_device`), the output checks (:func:`regla.runs.config.check_output`), the
  harness call (:func:`regla.runs.harness.run`) and the closing ``done: ...`` line, printed on rank 0.

The demo form is the same for every trainer: ``regla <task> --demo`` (``regla train --demo``, ``regla distill
--demo``, ``regla det --demo``, ``regla seg --demo``, ``regla sam --demo``). Where the trainer is a subcommand
(``det train``, ``seg train``), :func:`add_demo_arguments` puts ``--demo`` on the parent too, and the longer
``regla det train --demo`` keeps working with every flag of ``det train``.

Recipe keys are read in two small functions only (:func:`run_name`, :func:`_check_shared`), so the move to typed
recipes touches this module in two places.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from regla.errors import UsageError

#: The run section's shortcut flags every trainer has: flag (argparse dest) -> recipe key.
RUN_SHORTCUTS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "device": "device",
                 "workers": "workers", "seed": "seed"}


@dataclass
class Finished:
    """What a trainer's summary (or its demo's finish) is given: the run's result, recipe, task and flags."""

    result: Any  # regla.runs.harness.RunResult
    cfg: Any
    task: Any
    args: argparse.Namespace
    seconds: float


@dataclass(frozen=True)
class Demo:
    """A trainer's ``--demo``: its recipe (``base(args)``: the demo's recipe keys, its data prepared unless
    ``args.print_config``) and, optionally, its report (``finish``: the closing line's text; else the trainer's
    summary)."""

    help: str
    base: Callable[[argparse.Namespace], dict[str, Any]]
    finish: Callable[[Finished], str | None] | None = None
    progress: bool = True  # False: no progress bar even without --no-progress
    short: str = ""  # the parent's form (``regla det --demo``) of a trainer that is a subcommand (``det train``)


@dataclass(frozen=True)
class Trainer:
    """One trainer, declared: everything :func:`run` needs that is not shared.

    ``schema()`` returns the recipe schema (lazily: it may import torch); ``task(cfg, args)`` builds the harness
    task (it may run the checks that need the task, e.g. reading the data); ``complete(cfg)`` returns the recipe
    with the keys it leaves unset filled from others (recipes are frozen: ``regla train``'s transform keys from the
    model's pretrained_cfg), before the task is built; ``check(cfg, args)`` runs the trainer's own checks before
    any work; ``summary(finished)`` is the text of the closing ``done: ...`` line (None: no line). ``name_key`` is
    the recipe key that names the run (the default run folder ``runs/<name>``).
    """

    command: str
    schema: Callable[[], Any]
    task: Callable[[Any, argparse.Namespace], Any]
    summary: Callable[[Finished], str | None]
    configs_dir: str = ""
    config_help: str = "recipe YAML (the keys of --print-config)"
    output_help: str = "run folder (default runs/<model>)"
    name_key: str = "model"
    add_flags: Callable[[argparse.ArgumentParser], None] | None = None
    flags: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    check: Callable[[Any, argparse.Namespace], None] | None = None
    demo: Demo | None = None
    device_help: str = "auto (a CUDA GPU if there is one, else the CPU) | cpu | cuda | cuda:N | mps"
    run_label: str = ""  # the run's name when no recipe key gives it (``sam --demo``: ``sam_demo``)
    complete: Callable[[Any], Any] | None = None


# --- flags --------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, trainer: Trainer) -> None:
    """The shared flags, then the trainer's own (``trainer.add_flags``)."""
    parser.add_argument("-c", "--config", help=trainer.config_help)
    parser.add_argument("-o", "--output", dest="output", help=trainer.output_help)
    if trainer.add_flags is not None:
        trainer.add_flags(parser)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--lr", type=float, help="absolute learning rate (default: the recipe's)")
    parser.add_argument("--device", help=f"{trainer.device_help} (checked before training starts)")
    parser.add_argument("--workers", type=int, help="data loader processes per rank")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision (fp16 adds a loss scaler)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe key (repeatable), e.g. --set epochs=3 --set lr=1e-4")
    parser.add_argument("--resume", metavar="RUN_DIR|CKPT", help="continue a run from RUN_DIR/last.pth or a file")
    if trainer.demo is not None:
        short = f"; the same as `{trainer.demo.short}`" if trainer.demo.short else ""
        parser.add_argument("--demo", action="store_true", help=trainer.demo.help + short)
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_demo_arguments(parent: argparse.ArgumentParser, trainer: Trainer) -> None:
    """``regla <task> --demo`` on a parent whose trainer is a subcommand (or that has no other trainer flags):
    ``--demo`` with ``-o/--output``, ``--resume``, ``--set``, ``--print-config`` and ``--no-progress``.

    Their destinations are ``demo_*``: a subcommand's defaults would overwrite the parent's values of the same name.
    """
    assert trainer.demo is not None
    note = f"; the same as `{trainer.command} --demo`, which also takes its flags" if trainer.demo.short else ""
    parent.add_argument("--demo", dest="demo_here", action="store_true", help=trainer.demo.help + note)
    parent.add_argument("--output", "-o", dest="demo_output", default=None, metavar="DIR",
                        help="--demo: run folder (must not hold another run)")
    parent.add_argument("--resume", dest="demo_resume", default=None, metavar="DIR",
                        help="--demo: continue a stopped demo run")
    parent.add_argument("--set", dest="demo_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="--demo: override a recipe key, e.g. --set epochs=5")
    parent.add_argument("--print-config", dest="demo_print_config", action="store_true",
                        help="--demo: print the demo's recipe and exit")
    parent.add_argument("--no-progress", dest="demo_no_progress", action="store_true", help="--demo: no progress bar")


def demo_requested(args: argparse.Namespace, command: str | None, trainer: Trainer) -> bool:
    """Whether the parent's ``--demo`` was given; it runs on its own (``command``: the subcommand given, if any)."""
    if not getattr(args, "demo_here", False):
        return False
    if command is not None:
        hint = f" (`{trainer.command} --demo` takes {trainer.command}'s flags)" if trainer.demo.short else ""
        raise UsageError(f"--demo runs on its own; it does not combine with the subcommand {command!r}{hint}")
    return True


def run_demo(args: argparse.Namespace, trainer: Trainer) -> int:
    """``regla <task> --demo`` from the parent's flags: :func:`run` with the trainer's defaults for the rest."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser, trainer)
    own = parser.parse_args([])
    own.demo = True
    own.output, own.resume, own.overrides = args.demo_output, args.demo_resume, list(args.demo_overrides)
    own.print_config, own.no_progress = args.demo_print_config, args.demo_no_progress
    return run(own, trainer)


def shortcut_values(args: argparse.Namespace, trainer: Trainer) -> dict[str, Any]:
    """The recipe values the flags give: the run shortcuts, ``--output``, ``--amp``, then the trainer's own."""
    out = {key: getattr(args, flag) for flag, key in RUN_SHORTCUTS.items() if getattr(args, flag, None) is not None}
    if args.output is not None:
        out["output"] = args.output
    if getattr(args, "amp", None):
        out.update(amp=True, amp_dtype="bfloat16" if args.amp == "bf16" else "float16")
    if trainer.flags is not None:
        out.update(trainer.flags(args))
    return out


# --- recipe, checks, logging, device -----------------------------------------------------------------------------


def demo_base(args: argparse.Namespace, trainer: Trainer) -> dict[str, Any] | None:
    """The demo's recipe keys when ``--demo`` was given (its data prepared unless only the recipe is printed)."""
    if not getattr(args, "demo", False):
        return None
    assert trainer.demo is not None
    return trainer.demo.base(args)


def resolve(args: argparse.Namespace, trainer: Trainer, base: Mapping[str, Any] | None = None) -> Any:
    """The recipe this invocation runs: defaults < ``base`` (the demo's) < the resumed run's recipe < ``--config``
    (a YAML, or a name under ``configs/<configs_dir>/``) < the flags < each ``--set key=value``."""
    from .config import resolve_recipe

    return resolve_recipe(trainer.schema(), args.config, list(args.overrides), flags=shortcut_values(args, trainer),
                          base=dict(base or {}), resume=args.resume, output=args.output,
                          configs_dir=trainer.configs_dir)


def run_name(cfg: Any, trainer: Trainer) -> str:
    """The run's name, which the harness takes beside the recipe (the default run folder ``runs/<name>`` and the
    first log line): the recipe key the trainer names it by (``model``, ``backbone``, ``sam distill``'s
    ``student``), or a fixed label (``run_label``, e.g. the SAM demo's)."""
    return trainer.run_label or str(getattr(cfg.task, trainer.name_key))


def _check_shared(cfg: Any, args: argparse.Namespace, trainer: Trainer) -> None:
    """The checks every trainer shares: the device (this machine has it) and the run folder (new, or the resumed
    run's; :func:`regla.runs.config.check_output`)."""
    from regla.preflight import check_device

    from .config import check_output

    check_device(cfg.run.device)
    check_output(cfg.run, run_name(cfg, trainer), args.resume, trainer.command)


def setup_logging() -> None:
    """One format (the message), INFO on rank 0 and warnings only on the others, to stdout (see the module's
    docstring for why stdout)."""
    level = logging.INFO if rank() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout)


def rank() -> int:
    """This process's rank in a torchrun job (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(name: str, flag: str = "--device") -> str:
    """A device name checked on this machine (:func:`regla.preflight.check_device`), ``auto`` resolved as the run
    harness does (:func:`regla.runs.distributed.resolve_device`: a CUDA GPU if there is one, else the CPU)."""
    from regla.preflight import check_device

    from .distributed import resolve_device as harness_device

    return harness_device(check_device(name, flag))


def print_recipe(cfg: Any) -> int:
    """``--print-config``: the resolved recipe as YAML (the form of ``config.yaml``)."""
    from regla.config import dump

    print(dump(cfg), end="")
    return 0


# --- the run ------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, trainer: Trainer) -> int:
    """Resolve the recipe, run every check, run the task on the harness, print the closing line on rank 0."""
    setup_logging()
    started = time.perf_counter()
    cfg = resolve(args, trainer, demo_base(args, trainer))
    if args.print_config:
        return print_recipe(cfg)
    _check_shared(cfg, args, trainer)
    if trainer.check is not None:
        trainer.check(cfg, args)
    if trainer.complete is not None:
        cfg = trainer.complete(cfg)
    task = trainer.task(cfg, args)  # may read the data and refuse it, before the run starts
    from . import harness

    demo = trainer.demo if getattr(args, "demo", False) else None
    show_bar = not args.no_progress and (demo is None or demo.progress)
    result = harness.run(task, cfg, run_name(cfg, trainer), resume=args.resume, show_bar=show_bar)
    if rank() != 0:
        return 0
    finished = Finished(result, cfg, task, args, time.perf_counter() - started)
    text = demo.finish(finished) if demo is not None and demo.finish is not None else trainer.summary(finished)
    if text:
        print(f"done: {text}")
    return 0
