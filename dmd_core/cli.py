"""The ``dmd`` command: ``dmd synth``, ``dmd train``, ``dmd test``, ``dmd bench``.

Each subcommand lives beside the code it drives; a module joins the CLI by
defining ``add_cli(subparsers)``, which registers its parser and sets
``func`` to the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = ("dmd_core.synth", "dmd_core.train", "dmd_core.bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmd",
        description="Decoupled Multimodal Distillation (CVPR 2023): data, training, evaluation, benchmarks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
