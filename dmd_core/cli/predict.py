"""``dmd predict``: score every sample of an MMSA-format file, with or without labels, with a trained DMD."""

from __future__ import annotations

import argparse
import logging

from .. import runs
from ..data import load_mmsa
from ..devices import pick_device
from ..distill import EDGE_NAMES
from ..evaluation import predict, scores
from ..export import load_model
from . import run_command
from .options import add_device

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  dmd predict --model exports/dmd-mosi --data new_clips.pkl --out predictions.csv   # a folder of dmd export
  dmd predict --model runs/mosi --data aligned_50.pkl --split test --out test.csv   # a run folder (best seed)
  dmd predict --model user/dmd-mosi --data new_clips.pkl --out predictions.csv      # a hub id (needs network)

The file is in the MMSA format (a dict of splits, each a dict of arrays: id, raw_text, audio, vision,
text or text_bert); its splits may have any names, and labels (regression_labels) may be absent.
predictions.csv holds one row per sample: split, id, label (when the file has labels), prediction,
and the six edges of each GD-Unit (homo_<edge>, hetero_<edge>). With labels, the metrics of each
split are printed (and written with --metrics) exactly as dmd test computes them.
"""


def print_metrics(name: str, values: dict[str, float]) -> None:
    print(f"{name}: {values['n']} samples")
    for k, v in values.items():
        if k != "n":
            print(f"  {k:<14} {v:10.4f}")


def _cli_predict(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    model = load_model(args.model, which=args.which, seed=args.seed, device=device)
    cfg = model.config
    ds = load_mmsa(args.data, text="bert" if cfg.use_bert else "features", config=cfg,
                   splits=args.split or "all", labels="optional")  # fmt: skip
    rows, metrics = [], {}
    for name, split in ds.splits.items():
        pred = predict(model, split, device=device, batch_size=args.batch_size)
        rows += [{"split": name, **row} for row in pred.rows()]
        if pred.has_labels:
            metrics[name] = scores(pred)
            print_metrics(f"{args.data}: split {name!r}", metrics[name])
        else:
            log.info("%s: split %r has no labels: predictions only", args.data, name)
    columns = ["split", "id", *(["label"] if metrics else []), "prediction"]
    columns += [f"{unit}_{e}" for unit in ("homo", "hetero") for e in EDGE_NAMES]
    runs.write_csv(args.out, rows, columns)
    print(f"wrote {args.out}: {len(rows)} rows ({', '.join(f'{k} {len(v)}' for k, v in ds.splits.items())})")
    if args.metrics:
        runs.write_json(args.metrics, metrics)
        print(f"wrote {args.metrics}")
    return 0


def add_cli(subparsers) -> None:
    """Register ``dmd predict``."""
    p = subparsers.add_parser(
        "predict", help="predict every sample of an MMSA-format file (labels optional)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Predictions and the GD-Unit edges of every sample of an MMSA-format file, from an exported "
                    "model folder, a hub id or a run folder; MMSA's metrics for the splits that have labels.",
    )  # fmt: skip
    p.add_argument("--model", required=True, metavar="DIR|RUN_DIR|HUB_ID",
                   help="a folder written by dmd export or DMD.save_pretrained, a run folder of dmd train, or a "
                        "Hugging Face hub id")  # fmt: skip
    p.add_argument("--data", required=True, metavar="FILE", help="an MMSA-format pickle (labels optional)")
    p.add_argument("--out", required=True, metavar="FILE", help="the CSV to write, one row per sample")
    p.add_argument("--split", action="append", default=None, metavar="NAME",
                   help="only this split (repeatable; default: every split in the file)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="with a run folder: which seed (default: the one with the lowest validation loss)")  # fmt: skip
    p.add_argument("--which", choices=("best", "last"), default="best",
                   help="with a run folder: the best-validation weights (default) or the last epoch's")  # fmt: skip
    add_device(p)
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--metrics", default=None, metavar="FILE",
                   help="also write the metrics of the labelled splits to FILE as JSON")  # fmt: skip
    p.set_defaults(func=run_command(_cli_predict))
