"""The ``regla`` command line: one entry point, one subcommand per capability.

Each subcommand lives in the package that owns the capability and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("regla.models.cli", "list registered models with params, MACs and the paper's figures"),
    "train": ("regla.train.cli", "train a backbone: Table 2 recipes, your own image folder, or --demo"),
    "eval": ("regla.eval.cli", "top-1/top-5 and throughput of any weights file (training-time or fused) on a folder"),
    "plot": ("regla.train.plot_cli", "draw the training curves of run folders to a PNG"),
    "bench": ("regla.bench.cli", "measure params, MACs, CPU latency (ONNX Runtime, PyTorch) and memory vs peers"),
    "export": ("regla.deploy.cli", "export a fused model to ONNX, Core ML (.mlpackage) or TorchScript, checked"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regla", description="ReGLA backbones: train, compare, deploy.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
