"""The ``dmd`` command: ``dmd synth``, ``dmd train``, ``dmd test``, ``dmd predict``, ``dmd export``, ``dmd bench``.

One module per command family (:mod:`~dmd_core.cli.synth`, :mod:`~dmd_core.cli.train`,
:mod:`~dmd_core.cli.predict`, :mod:`~dmd_core.cli.export`, :mod:`~dmd_core.cli.bench`), options
shared by several commands in :mod:`~dmd_core.cli.options`, and one error wrapper
(:func:`run_command`) for every command: the errors a user can fix end in one clear message and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger("dmd_core.cli")

COMMAND_MODULES = ("dmd_core.cli.synth", "dmd_core.cli.train", "dmd_core.cli.predict", "dmd_core.cli.export",
                   "dmd_core.cli.bench")  # fmt: skip


def run_command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: the errors a user can fix become one logged message and an exit code.

    2: bad input (a missing or malformed file, an unknown option value, BERT, a hub model or an optional
    package not available);
    3: training diverged (non-finite loss); 130: interrupted.
    """
    from ..tensorboard import TensorBoardUnavailableError
    from ..text_encoder import BertUnavailableError
    from ..trainer import NonFiniteLossError

    def wrapper(args: argparse.Namespace) -> int:
        if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 talks
            logging.getLogger().setLevel(logging.WARNING)
        try:
            return int(func(args) or 0)
        except (BertUnavailableError, TensorBoardUnavailableError) as err:
            log.error("%s", err)
            return 2
        except NonFiniteLossError as err:
            log.error("%s", err)
            return 3
        except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:  # DataFormatError is a ValueError
            log.error("%s", err.args[0] if isinstance(err, KeyError) and err.args else err)
            return 2
        except KeyboardInterrupt:
            log.error("interrupted; a training run continues later with --resume (the last completed epoch is saved)")
            return 130

    return wrapper


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


def run(argv: list[str] | None = None) -> None:
    """The ``dmd`` console script (and ``python -m dmd_core.cli``): :func:`main`, then the process exits.

    Every object alive at that point lives until the exit anyway; ``gc.freeze()`` spares the
    interpreter's final garbage collections the walk over them (PyTorch's many objects: a few tenths
    of a second at the end of every command). In-process callers (tests, notebooks) call
    :func:`main`, which freezes nothing.
    """
    code = main(argv)
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
