"""``dmd train`` and ``dmd test``: the recipe on an MMSA file, and evaluation of runs or reference checkpoints."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import runs
from ..config import DMDConfig, TrainConfig
from ..data import MMSADataset, load_mmsa
from ..devices import pick_device
from ..evaluation import evaluate, missing_modality_table
from ..export import load_model
from ..model import DMD
from ..seeds import train_seeds
from ..tensorboard import require_tensorboard
from ..text_encoder import bert_spec
from . import run_command
from .options import add_data_options, add_precision, positive_int

log = logging.getLogger(__name__)

TRAIN_EPILOG = """\
examples:
  dmd synth --dataset mosi --aligned --out data/mosi_synth.pkl
  dmd train --data data/mosi_synth.pkl --seeds 1111 --max-epochs 20 --out runs/mosi_synth
  dmd train --data aligned_50.pkl --bert /models/bert-base-uncased --out runs/mosi_bert   # the paper's recipe
  dmd train --data aligned_50.pkl --out runs/mosi --resume          # continue an interrupted run
  dmd train --data aligned_50.pkl --out runs/mosi --tensorboard runs/tb   # then: tensorboard --logdir runs/tb
  torchrun --nproc_per_node 4 -m dmd_core.cli train --data aligned_50.pkl --out runs/ddp   # DDP
  torchrun --nproc_per_node 5 -m dmd_core.cli train --data aligned_50.pkl --parallel-seeds --out runs/seeds

The run folder holds seed_<n>/ per seed (config.json, history.csv, best.pt, last.pt, test_metrics.json,
test_predictions.csv) and summary.json / summary.csv (mean and std over seeds). Read it back with
dmd_core.runs.load_seeds(folder) or load_run(folder/seed_<n>).
"""

TEST_EPILOG = """\
examples:
  dmd test runs/mosi                              # every seed of a run folder, best weights, test split
  dmd test runs/mosi/seed_1111 --missing          # plus metrics with modalities zeroed
  dmd test --checkpoint dmd-mosi.pth --reference-config config.json --data aligned_50.pkl \\
           --bert /models/bert-base-uncased      # a checkpoint of the reference implementation
"""


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs for :class:`DMDConfig`; values are read as JSON when they parse (numbers, lists)."""
    import dataclasses
    import json

    known = {f.name for f in dataclasses.fields(DMDConfig)} - {"bert"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def _decimals(text: str) -> int | None:
    """``--valid-loss-decimals``: an integer >= 0, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'none', found {text!r}")
    return value


def _train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = TrainConfig()
    return base.replace(
        batch_size=args.batch_size, lr=args.lr, accumulation=args.accumulation, grad_clip=args.grad_clip,
        plateau_patience=args.patience, early_stop=args.early_stop, max_epochs=args.max_epochs,
        seeds=tuple(args.seeds), leftover_step=not args.no_leftover_step, eval_batch_size=args.eval_batch_size,
        valid_loss_decimals=args.valid_loss_decimals,
        precision=args.precision, tf32=not args.no_tf32, compile=args.compile,
    )  # fmt: skip


def _check_aligned(ds: MMSADataset, aligned: bool | None, path: str) -> None:
    if aligned is not None and bool(ds.aligned) != aligned:
        found = "aligned" if ds.aligned else "unaligned"
        raise ValueError(f"{path}: --{'aligned' if aligned else 'unaligned'} given, but the file is {found}")


def _cli_train(args: argparse.Namespace) -> int:
    overrides = _parse_overrides(args.set or [])
    bert, bert_dim = bert_spec(args.bert)  # before loading data: fail fast without BERT
    if args.tensorboard:
        require_tensorboard()  # likewise without the tensorboard extra
    ds = load_mmsa(args.data, text="bert" if bert is not None else "features", mmap_dir=args.mmap_dir)
    _check_aligned(ds, args.aligned, args.data)
    cfg = ds.suggest_config(args.dataset, bert=bert, text_dim=bert_dim, **overrides)
    tcfg = _train_config_from_args(args)
    out = Path(args.out or Path("runs") / Path(args.data).stem)
    data = ds if args.workers == 1 else args.data  # worker processes read the file themselves
    result = train_seeds(cfg, data, tcfg, out, seeds=tcfg.seeds, device=args.device, resume=args.resume,
                         progress=not args.no_progress, parallel=args.parallel_seeds, text=ds.text_mode,
                         mmap_dir=args.mmap_dir, tensorboard=args.tensorboard, workers=args.workers)  # fmt: skip
    if result.summary is not None:
        _print_metrics({k: v["mean"] for k, v in result.summary["metrics"].items()},
                       {k: v["std"] for k, v in result.summary["metrics"].items()},
                       title=f"{out}: test, mean (std) over {len(tcfg.seeds)} seed(s)")  # fmt: skip
    return 0


def _print_metrics(values: dict[str, float], std: dict[str, float] | None = None, title: str = "") -> None:
    """The CLI's result table (stdout, the one place the package prints): one metric per line."""
    if title:
        print(title)
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        shown = f"{v:10d}" if isinstance(v, int) else f"{v:10.4f}"
        print(f"  {k:<14} {shown}" + (f"  ({std[k]:.4f})" if std and k in std else ""))


def _cli_test(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {}
    if args.checkpoint:
        if not args.reference_config or not args.data:
            raise ValueError("--checkpoint needs --reference-config (the reference's config.json) and --data")
        from ..reference import config_from_json, load_state_dict

        aligned = True if args.aligned is None else args.aligned
        cfg = config_from_json(args.reference_config, args.dataset or "mosi", aligned)
        if cfg.bert is not None:
            bert, _ = bert_spec(args.bert or cfg.bert.name_or_path)
            cfg = cfg.replace(bert=bert)
        ds = load_mmsa(args.data, text="bert" if cfg.use_bert else "features", config=cfg, mmap_dir=args.mmap_dir)
        _check_aligned(ds, args.aligned, args.data)
        model = DMD(cfg)
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        load_state_dict(model, state)  # the GD-Units are not in a reference checkpoint: their edges are random
        log.info("loaded reference checkpoint %s (GD-Units not included: edges are not meaningful)", args.checkpoint)
        targets = {str(args.checkpoint): (model, ds)}
    else:
        if not args.run:
            raise ValueError("give a run folder, or --checkpoint with --reference-config and --data")
        folder = Path(args.run)
        run_list = (
            list(runs.load_seeds(folder).runs.values())
            if not (folder / runs.CONFIG).is_file()
            else [runs.load_run(folder)]
        )
        targets = {}
        for run in run_list:
            if run.config.bert is not None and run.config.bert.name_or_path is not None:
                bert_spec(args.bert or run.config.bert.name_or_path)
            data = args.data or run.data
            if data is None:
                raise ValueError(f"{run.path}: no data file recorded in config.json; give --data")
            text = "bert" if run.config.use_bert else "features"
            ds = load_mmsa(data, text=text, config=run.config, mmap_dir=args.mmap_dir)
            targets[str(run.path)] = (load_model(run, args.which, device=pick_device(args.device)), ds)
    device = pick_device(args.device)
    for name, (model, ds) in targets.items():
        split = ds[args.split]
        entry: dict[str, Any] = {"metrics": evaluate(model, split, device=device, batch_size=args.batch_size)}
        _print_metrics(entry["metrics"], title=f"{name}: {args.split} split ({len(split)} samples)")
        if args.missing:
            table = missing_modality_table(model, split, device=device, batch_size=args.batch_size)
            entry["missing_modality"] = table.to_dict(orient="records")
            print(table[["present", "zeroed", "MAE", "Corr", "Non0_acc_2", "Non0_F1_score", "Mult_acc_7"]]
                  .to_string(index=False, float_format=lambda x: f"{x:.4f}"))  # fmt: skip
        results[name] = entry
    if args.json:
        runs.write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


def add_cli(subparsers) -> None:
    """Register ``dmd train`` and ``dmd test``."""
    d = TrainConfig()
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "train", help="train DMD on an MMSA pickle (one folder per run)", formatter_class=fmt, epilog=TRAIN_EPILOG,
        description="Train DMD with the published recipe (Adam 1e-4, gradients summed over 10 mini-batches and "
                    "clipped by value 0.6, ReduceLROnPlateau and early stopping on the validation L1 loss), "
                    "one run per seed, then test the best-validation weights.",
    )  # fmt: skip
    p.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help="MMSA pickle: aligned_50.pkl / unaligned_50.pkl of MOSI or MOSEI, or a `dmd synth` file",
    )
    add_data_options(p)
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(d.seeds),
        metavar="N",
        help=f"seeds, run one after another (default: {' '.join(map(str, d.seeds))})",
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        metavar="N",
        help="stop after N epochs at the latest (default: no bound, early stopping only)",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/<data file name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the runs in --out from their last completed epoch (same config and seeds; "
                        "--max-epochs may be raised); finished seeds are only re-tested")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"mini-batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument(
        "--accumulation",
        type=int,
        default=d.accumulation,
        help=f"mini-batches whose gradients are summed per optimizer step (default {d.accumulation})",
    )
    p.add_argument(
        "--grad-clip",
        type=float,
        default=d.grad_clip,
        help=f"clip gradients by value after every backward; <= 0 turns it off (default {d.grad_clip})",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=d.plateau_patience,
        help=f"ReduceLROnPlateau patience in epochs (default {d.plateau_patience})",
    )
    p.add_argument(
        "--early-stop",
        type=int,
        default=d.early_stop,
        help=f"stop after this many epochs without a better validation loss (default {d.early_stop})",
    )
    p.add_argument(
        "--eval-batch-size", type=int, default=None, help="batch size for validation and test (default: --batch-size)"
    )
    p.add_argument("--valid-loss-decimals", type=_decimals, default=d.valid_loss_decimals, metavar="N|none",
                   help="round the validation loss to N decimals before the learning-rate schedule and early "
                        "stopping see it, as the reference does; 'none' compares the unrounded loss "
                        f"(default {d.valid_loss_decimals})")  # fmt: skip
    p.add_argument("--no-leftover-step", action="store_true",
                   help="drop the gradients of the last, incomplete group of mini-batches of each epoch, as the "
                        "reference does (default: they take an optimizer step)")  # fmt: skip
    add_precision(p)
    p.add_argument("--no-tf32", action="store_true", help="keep float32 matmuls exact on CUDA (TF32 is on by default)")
    p.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    p.add_argument(
        "--parallel-seeds",
        action="store_true",
        help="under torchrun: each process trains its own seeds instead of sharing one run (DDP)",
    )
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="train N seeds at once in separate processes on this machine, each with its share of "
                        "the CPU threads (each loads the data file; with --mmap-dir they share it) (default 1)")  # fmt: skip
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a model config field, e.g. --set d=32 --set ort_axis=feature (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write TensorBoard event files to DIR/seed_<n> (loss parts, learning rate, validation "
                        "metrics, GD-Unit edges per epoch; needs the tensorboard extra): tensorboard --logdir DIR")  # fmt: skip
    p.set_defaults(func=run_command(_cli_train))

    t = subparsers.add_parser(
        "test", help="evaluate a run folder or a reference checkpoint", formatter_class=fmt, epilog=TEST_EPILOG,
        description="Evaluate trained weights on a split of an MMSA file: MMSA's metrics (Has0/Non0 Acc-2 and "
                    "F1, Acc-5, Acc-7, MAE, Corr) and the L1 loss; optionally with modalities zeroed.",
    )  # fmt: skip
    t.add_argument(
        "run",
        nargs="?",
        metavar="RUN_DIR",
        help="a run folder written by dmd train (one seed, or a folder of seed_<n> runs)",
    )
    t.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="MMSA pickle (default for a run folder: the file it was trained on)",
    )
    add_data_options(t)
    t.add_argument(
        "--checkpoint",
        default=None,
        metavar="FILE",
        help="a state dict saved by the reference implementation (GD-Units not included)",
    )
    t.add_argument("--reference-config", default=None, metavar="FILE",
                   help="the reference's config.json (with --checkpoint; --dataset and --aligned/--unaligned pick "
                        "its section, default mosi aligned)")  # fmt: skip
    t.add_argument("--split", choices=("test", "valid", "train"), default="test", help="which split (default test)")
    t.add_argument("--which", choices=("best", "last"), default="best", help="which weights of a run (default best)")
    t.add_argument(
        "--missing",
        action="store_true",
        help="also evaluate with every subset of modalities zeroed at test time (7 rows)",
    )
    t.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default 64)")
    t.add_argument("--json", default=None, metavar="FILE", help="also write the results to FILE as JSON")
    t.set_defaults(func=run_command(_cli_test))
