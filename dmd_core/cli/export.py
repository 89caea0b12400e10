"""``dmd export``: a run's weights as a shareable Hugging Face-style folder with a model card (:mod:`dmd_core.export`)."""

from __future__ import annotations

import argparse

from ..export import TRAINING, export_run, push_folder, read_training
from ..hub import CARD, CONFIG, WEIGHTS, require_hub
from . import run_command

EPILOG = f"""\
examples:
  dmd export runs/mosi --out exports/dmd-mosi               # the seed with the lowest validation loss
  dmd export runs/mosi --seed 1112 --out exports/dmd-mosi-1112
  dmd export runs/mosi --out exports/dmd-mosi --push-to-hub user/dmd-mosi

The folder holds {CONFIG} (the model config; BERT's config too when it has BERT), {WEIGHTS} (every
weight, BERT's included), {CARD} (the model card: data, preset, recipe, test metrics over seeds,
mean GD-Unit graphs, how to load it) and {TRAINING} (the same, as JSON). Load it with
dmd_core.DMD.from_pretrained(folder) or use it with dmd predict --model folder.
"""


def _cli_export(args: argparse.Namespace) -> int:
    if args.push_to_hub:
        require_hub(f"push to {args.push_to_hub!r}")  # before writing anything
    out = export_run(args.run, args.out, seed=args.seed, which=args.which, overwrite=args.overwrite)
    info = read_training(out)
    print(f"{out}: the {info['weights']} weights (epoch {info['epoch']}) of seed {info['seed']} of {args.run} "
          f"({info['selection']}): {CONFIG}, {WEIGHTS}, {CARD}, {TRAINING}")  # fmt: skip
    if args.push_to_hub:
        print(f"pushed: {push_folder(out, args.push_to_hub, private=args.private or None)}")
    return 0


def add_cli(subparsers) -> None:
    """Register ``dmd export``."""
    p = subparsers.add_parser(
        "export", help="turn a run into a shareable model folder (config.json, safetensors, model card)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Write the best (or last) weights of one seed of a run folder as a Hugging Face-style "
                    "folder that DMD.from_pretrained loads, with a model card generated from the run.",
    )  # fmt: skip
    p.add_argument("run", metavar="RUN_DIR", help="a run folder written by dmd train (one seed, or seed_<n> folders)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must be empty or new)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="which seed (default: the one with the lowest validation loss; the test split never chooses)")  # fmt: skip
    p.add_argument("--which", choices=("best", "last"), default="best",
                   help="the best-validation weights (default) or those of the last epoch")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="write into --out even if it is not empty")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                   help="also upload the folder to the Hugging Face hub as REPO_ID (needs network and a token)")  # fmt: skip
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.set_defaults(func=run_command(_cli_export))
