"""``dmd synth``: write a synthetic MOSI/MOSEI file in the MMSA format (see :mod:`dmd_core.data.synth`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import SPLIT_SIZES
from ..data.synth import SynthSpec, default_path, write_mmsa
from . import run_command
from .options import add_alignment


def add_cli(subparsers) -> None:
    """Register ``dmd synth``."""
    defaults = SynthSpec()
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic MOSI/MOSEI file in the MMSA pickle format",
        description="Write a synthetic CMU-MOSI or CMU-MOSEI file in exactly the MMSA layout "
        "(aligned_50.pkl / unaligned_50.pkl), with a planted, documented structure: one sentiment "
        "factor shared by the modalities with a strength per modality, modality-exclusive factors that "
        "carry no label information, and incongruent samples where vision or audio carries information "
        "the words do not. See the dmd_core.data.synth module docstring for the formulas.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        choices=sorted(SPLIT_SIZES),
        default=defaults.dataset,
        help="which dataset's sequence lengths, feature sizes, split sizes and label grid to copy",
    )
    add_alignment(p, True, verb="write a file")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--scale",
        type=float,
        default=defaults.scale,
        help="fraction of the official split sizes (MOSI 1284/229/686, MOSEI 16326/1871/4659)",
    )
    size.add_argument(
        "--sizes",
        type=int,
        nargs=3,
        metavar=("TRAIN", "VALID", "TEST"),
        help="explicit split sizes (overrides --scale)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed; the same seed gives the same file")
    p.add_argument(
        "--strengths",
        type=float,
        nargs=3,
        default=defaults.strengths,
        metavar=("L", "V", "A"),
        help="how strongly language, vision and audio express the sentiment factor; e.g. "
        "--strengths 0.2 0.3 1.0 makes audio carry the signal",
    )
    p.add_argument(
        "--incongruent",
        type=float,
        default=defaults.incongruent,
        help="fraction of samples whose words express an unrelated sentiment while the "
        "--incongruent-modality expresses the true one",
    )
    p.add_argument(
        "--incongruent-modality",
        choices=("V", "A"),
        default=defaults.incongruent_modality,
        help="the modality that carries the signal on incongruent samples",
    )
    p.add_argument(
        "--incongruent-strength",
        type=float,
        default=defaults.incongruent_strength,
        help="its strength on those samples",
    )
    p.add_argument(
        "--exclusive",
        type=int,
        default=defaults.n_exclusive,
        help="number of modality-exclusive factors per modality (0-4), label-free",
    )
    p.add_argument("--noise", type=float, default=defaults.frame_noise, help="per-frame noise of vision and audio")
    p.add_argument(
        "--out", type=Path, default=None, help="output path (default: data/synth_<dataset>_<aligned|unaligned>_50.pkl)"
    )
    p.set_defaults(func=run_command(_synth))


def _synth(args: argparse.Namespace) -> int:
    spec = SynthSpec(
        dataset=args.dataset, aligned=args.aligned, scale=args.scale, sizes=tuple(args.sizes) if args.sizes else None,
        seed=args.seed, strengths=tuple(args.strengths), incongruent=args.incongruent,
        incongruent_modality=args.incongruent_modality, incongruent_strength=args.incongruent_strength,
        n_exclusive=args.exclusive, frame_noise=args.noise,
    )  # fmt: skip
    write_mmsa(args.out or default_path(spec), spec)
    return 0
