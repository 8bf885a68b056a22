"""The ``regla`` command line: one entry point, one subcommand per capability.

Each subcommand lives in the package that owns the capability and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Only the subcommand being run is imported (``regla --help``
imports no torch), and heavy imports happen inside ``run``.

Errors follow :mod:`regla.errors`: ``run`` raises a :class:`~regla.errors.ReglaError` and :func:`main` prints one
line ``regla <command>: error: <message>`` and returns its exit code (2 bad input, 1 runtime failure); Ctrl-C
returns 130; anything else is an internal error (exit 1). The traceback is printed only with ``regla --debug``
or ``REGLA_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from .errors import EXIT_FAILURE, EXIT_SIGINT, EXIT_USAGE, ReglaError, Stopped

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("regla.models.cli", "list registered models with params, MACs and the paper's figures"),
    "train": ("regla.train.cli", "train a backbone: Table 2 recipes, your own image folder, or --demo"),
    "eval": ("regla.eval.cli", "top-1/top-5 and throughput of any weights file (training-time or fused) on a folder"),
    "knn": ("regla.eval.cli_knn", "weighted k-NN top-1/top-5 of frozen features (DINO, k=20): bank vs queries"),
    "distill": ("regla.distill.cli", "multi-teacher feature distillation (ReGLA §3.5, Table 8), or --demo"),
    "plot": ("regla.bench.paper_figures", "draw the training curves of run folders, or ReGLA's Fig. 1/4, to a PNG"),
    "bench": ("regla.bench.cli", "params, MACs, CPU latency (ORT, PyTorch, ExecuTorch; fp32, int8), memory vs peers"),
    "export": ("regla.deploy.cli", "fused export to ONNX, ExecuTorch, Core ML or TorchScript (int8 too), checked"),
    "sam": ("regla.sam.cli", "segment anything on a fast encoder (RepViT-SAM, ReGLA-SAM): predict, export, distill"),
    "det": ("regla.dense.cli_det", "Mask R-CNN on COCO-format data with any backbone: train, eval, predict, --demo"),
    "seg": ("regla.dense.cli_seg", "Semantic FPN on ADE-format data with any backbone: train, eval, predict, --demo"),
}

MAX_MESSAGE_LINES = 2


class Parser(argparse.ArgumentParser):
    """``argparse`` with a one-line error (and exit code 2) instead of the usage block followed by the error."""

    def error(self, message: str):  # noqa: ANN201 - argparse's signature (NoReturn)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``regla`` parser; only the subcommands in ``commands`` get their options (all of them when ``None``)."""
    parser = Parser(prog="regla", description="ReGLA backbones: train, compare, deploy.",
                    epilog="Exit codes: 0 success, 1 runtime failure, 2 bad input, 130/143 stopped by a signal.")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error (also: REGLA_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", dest="debug_after_command", help=argparse.SUPPRESS)
        if commands is None or name in commands:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: the first argument that is not a global option (``None`` if none)."""
    return next((a for a in argv if not a.startswith("-")), None)


def debug_enabled(argv: Sequence[str]) -> bool:
    """``regla --debug ...`` (before or after the subcommand) or ``REGLA_DEBUG`` set to anything but ``""``/``0``."""
    return "--debug" in argv or os.environ.get("REGLA_DEBUG", "") not in ("", "0")


def _one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    if len(lines) > 2 and lines[0].startswith("Caught ") and lines[1].startswith("Original Traceback"):
        # raised in a DataLoader worker: torch re-raises it with the worker's traceback as the message; the
        # error's own message is the last line, after "<module>.<Class>: "
        return lines[-1].split(": ", 1)[-1] + f" ({lines[0].removeprefix('Caught ').rstrip('.')})"
    return "\n".join(lines[:MAX_MESSAGE_LINES])


def report(command: str, exc: BaseException, debug: bool) -> int:
    """Print ``exc`` as the convention says and return the exit code it stands for."""
    prefix = f"regla {command}" if command else "regla"
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prefix}: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    if isinstance(exc, Stopped):  # a clean stop, not an error: where it stopped and how to resume
        print(f"{prefix}: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, ReglaError):
        print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    first = (str(exc).strip().splitlines() or [""])[0]
    hint = "" if debug else f"; rerun with `regla --debug {command} ...` (or REGLA_DEBUG=1) for the traceback"
    print(f"{prefix}: internal error: {type(exc).__name__}: {first}{hint}", file=sys.stderr)
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``regla ARGV``; returns the exit code (argparse's ``--help`` and usage errors included)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command_of(argv)
    debug = debug_enabled(argv)
    try:
        parser = build_parser([command] if command in COMMANDS else [])
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help (0) or a usage error (2), already printed
            return e.code if isinstance(e.code, int) else EXIT_USAGE
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return int(args._module.run(args) or 0)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - the one place errors become exit codes
        return report(command or "", e, debug)


if __name__ == "__main__":
    sys.exit(main())
