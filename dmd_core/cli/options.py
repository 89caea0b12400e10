"""Options that several ``dmd`` commands share, defined once."""

from __future__ import annotations

import argparse


def add_alignment(p: argparse.ArgumentParser, default: bool | None, verb: str = "the file must be") -> None:
    """``--aligned`` / ``--unaligned`` (``default`` None: either is accepted)."""
    align = p.add_mutually_exclusive_group()
    align.add_argument("--aligned", dest="aligned", action="store_true", default=default,
                       help=f"{verb} word-aligned (aligned_50.pkl: audio and vision have one frame per word piece)"
                       + (" (default)" if default is True else ""))  # fmt: skip
    align.add_argument("--unaligned", dest="aligned", action="store_false",
                       help=f"{verb} unaligned (unaligned_50.pkl: audio and vision at their own rates, with lengths)"
                       + (" (default)" if default is False else ""))  # fmt: skip


def add_device(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--device", default=default,
                   help="cpu, cuda, cuda:N or mps (default: " + (default or "CUDA if available, then Apple MPS, then CPU")
                   + ")")  # fmt: skip


def add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision {fp32,bf16,fp16,auto}``, and ``--bf16``: a hidden, deprecated alias of ``--precision bf16``."""
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32",
                   help="fp32 (the recipe, default); bf16 or fp16 autocast (fp16 with a gradient scaler); auto: bf16 "
                        "on GPUs that have it, fp16 on older GPUs (T4), fp32 on CPU. Labels, losses and metrics "
                        "stay float32")  # fmt: skip
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help=argparse.SUPPRESS)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """What ``dmd train`` and ``dmd test`` need to read a file and build a model for it."""
    add_device(p)
    p.add_argument("--bert", default=None, metavar="NAME|DIR|none",
                   help="BERT for the text: a local folder with config.json and weights (e.g. saved with "
                        "save_pretrained), a Hugging Face name (needs the network or the local cache), or none "
                        "to use the file's stored text features")  # fmt: skip
    p.add_argument("--dataset", choices=("mosi", "mosei"), default=None,
                   help="which official hyper-parameters (preset) to use (default: guessed from the file)")  # fmt: skip
    add_alignment(p, None)
    p.add_argument("--mmap-dir", default=None, metavar="DIR",
                   help="convert the file once to memory-mapped arrays in DIR (for MOSEI unaligned on little RAM)")  # fmt: skip


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, found {value}")
    return value
