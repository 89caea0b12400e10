"""One training run on CPU, timed, for ``compare_reference.py``: the public reference DMD or this package.

``python benchmarks/reference_runner.py reference --reference DIR --data FILE [--unaligned] [--bert DIR]``
imports the reference implementation (a checkout of https://github.com/mdswyz/DMD) from ``DIR`` at
run time and runs its own training path (``run._run``: its data loader, model, both GD-Units and
its trainer) unchanged. Only the environment around it is adjusted, in this process: ``.cuda()``
returns its receiver, ``pynvml`` may be absent, ``ReduceLROnPlateau`` accepts (and ignores) the
``verbose`` argument newer PyTorch removed, ``CosineEmbeddingLoss`` treats the 3-D ``(T, B, d)``
inputs the reference gives it as PyTorch 1.9 did (cosine over dim 1), and the one-second pause
after a run is skipped. The reference trains until early stopping; here the run ends after
``--epochs`` epochs (after that epoch's validation and test), followed by its final test.

``python benchmarks/reference_runner.py ours --data FILE [--bert DIR]`` runs this package's
trainer on the same file (the ``dmd train`` path: load, preset, ``Trainer.fit``, final test) for
``--epochs`` epochs.

Both time each pass over the train split (forward, losses, backward, clipping, optimizer steps;
no validation, no start-up) and print one JSON line: ``train_loop_s`` per epoch, ``mini_batches``
per epoch, ``train_samples_per_s``, ``wall_s`` (from the runner's first line to the end: torch
import included), ``peak_rss_mb`` and the thread count.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import resource
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

START = time.perf_counter()


# ----------------------------------------------------------------------------- the reference


def plateau_ignoring_verbose(optimizer: Any, *args: Any, verbose: Any = None, **kwargs: Any) -> Any:
    """Stands in for ``ReduceLROnPlateau`` in the reference's trainer module: drops ``verbose``."""
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return ReduceLROnPlateau(optimizer, *args, **kwargs)


def cosine_embedding_loss_torch19(x1: Any, x2: Any, target: Any, margin: float = 0.0, reduction: str = "mean") -> Any:
    """``F.cosine_embedding_loss`` as PyTorch 1.9 computed it for inputs of any rank.

    PyTorch 1.9 took the cosine over the dimension numbered ``target.dim()`` (1 for a 1-D target)
    and broadcast the target against the result; later versions reject inputs of more than 2
    dimensions. For the reference's ``(T, B, d)`` features and target ``[-1]`` this is the mean
    over ``(T, d)`` of ``max(0, cos - margin)``, the cosine taken across the batch dimension.
    """
    import torch

    dim, eps = target.dim(), 1e-12
    dot = (x1 * x2).sum(dim)
    cos = dot / (((x1 * x1).sum(dim) + eps) * ((x2 * x2).sum(dim) + eps)).sqrt()
    zero = torch.zeros_like(cos)
    loss = torch.where(target == 1, 1 - cos, zero) + torch.where(target == -1, (cos - margin).clamp_min(0), zero)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def adapt_torch_for_reference() -> None:
    """The run-time adjustments that let the 2022 reference run on a CPU-only PyTorch of today."""
    import torch
    import torch.nn.functional as F

    def same(obj: Any, *args: Any, **kwargs: Any) -> Any:
        return obj

    torch.Tensor.cuda = same  # the reference moves every tensor and module with .cuda()
    torch.nn.Module.cuda = same
    if importlib.util.find_spec("pynvml") is None:  # imported by its utils, used only to pick a GPU
        sys.modules["pynvml"] = types.ModuleType("pynvml")

    def cosine_forward(self: torch.nn.CosineEmbeddingLoss, x1: Any, x2: Any, target: Any) -> Any:
        if x1.dim() <= 2:
            return F.cosine_embedding_loss(x1, x2, target, margin=self.margin, reduction=self.reduction)
        return cosine_embedding_loss_torch19(x1, x2, target, self.margin, self.reduction)

    torch.nn.CosineEmbeddingLoss.forward = cosine_forward


class EpochClock:
    """Wraps the reference's train ``DataLoader``: times every full pass and ends training after ``limit`` passes.

    The reference's loop only returns through early stopping (``epochs - best_epoch >=
    early_stop``), so once the last allowed pass is over its ``early_stop`` is set to 0 and the
    loop returns at the end of that epoch (after its validation, test and checkpoints).
    """

    def __init__(self, loader: Any, limit: int, args: Any) -> None:
        self.loader, self.limit, self.args = loader, limit, args
        self.dataset = loader.dataset
        self.seconds: list[float] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        start = time.perf_counter()
        yield from self.loader
        self.seconds.append(time.perf_counter() - start)
        if len(self.seconds) >= self.limit:
            self.args.early_stop = 0


def run_reference(ref_dir: Path, data: Path, dataset: str, aligned: bool, bert: Path | None, epochs: int,
                  seed: int) -> dict[str, Any]:  # fmt: skip
    """Train the reference on ``data`` for ``epochs`` epochs; the timings of its train passes."""
    import torch

    adapt_torch_for_reference()
    sys.path.insert(0, str(ref_dir))
    run = importlib.import_module("run")  # the reference's run.py: DMD_run / _run
    from config import get_config_regression

    importlib.import_module("trains.singleTask.DMD").ReduceLROnPlateau = plateau_ignoring_verbose
    run.time = types.SimpleNamespace(sleep=lambda seconds: None)  # _run pauses 1 s after training

    # The fields DMD_run sets before calling _run, for one seed on the CPU.
    args = get_config_regression("dmd", dataset, ref_dir / "config" / "config.json")
    args.update(model_name="dmd", dataset_name=dataset, is_distill=True, mode="train", device=torch.device("cpu"),
                train_mode="regression", feature_T="", feature_A="", feature_V="", cur_seed=1,
                need_data_aligned=aligned, featurePath=str(data), feature_dims=list(args.feature_dims),
                use_bert=bert is not None)  # fmt: skip
    if bert is not None:
        args.pretrained = str(bert)
    clocks: list[EpochClock] = []
    make_loaders = run.MMDataLoader

    def timed_loaders(args_: Any, num_workers: int) -> dict[str, Any]:
        loaders = make_loaders(args_, num_workers)
        clocks.append(EpochClock(loaders["train"], epochs, args_))
        loaders["train"] = clocks[-1]
        return loaders

    run.MMDataLoader = timed_loaders
    run.setup_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the reference writes ./pt/<epoch>.pth and ./pt/dmd.pth
        os.mkdir("pt")
        run._run(args, num_workers=0)
    clock = clocks[0]
    return {"n_train": len(clock.dataset), "mini_batches": len(clock), "train_loop_s": clock.seconds}


# ----------------------------------------------------------------------------- this package


def run_ours(data: Path, bert: Path | None, epochs: int, seed: int) -> dict[str, Any]:
    """Train this package on ``data`` as ``dmd train`` does, timing each ``Trainer.train_epoch``."""
    import dmd_core
    from dmd_core.trainer import Trainer

    ds = dmd_core.load_mmsa(data, text="bert" if bert is not None else "features")
    cfg = ds.suggest_config(bert=dmd_core.BertSpec(name_or_path=str(bert)) if bert is not None else None)
    tcfg = dmd_core.TrainConfig(seeds=(seed,), max_epochs=epochs)
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, ds, tcfg, Path(tmp) / "run", seed, device="cpu", progress=False, distributed=False)
        train_epoch = trainer.train_epoch

        def timed_epoch() -> dict[str, float]:
            start = time.perf_counter()
            row = train_epoch()
            seconds.append(time.perf_counter() - start)
            return row

        trainer.train_epoch = timed_epoch
        trainer.fit()
        out = {"n_train": len(ds["train"]), "mini_batches": math.ceil(len(ds["train"]) / tcfg.batch_size),
               "train_loop_s": seconds}  # fmt: skip
    return out


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=["reference", "ours"])
    parser.add_argument("--reference", type=Path, help="checkout of mdswyz/DMD (side 'reference')")
    parser.add_argument("--data", type=Path, required=True, help="MMSA pickle (e.g. from `dmd synth`)")
    parser.add_argument("--dataset", default="mosi", choices=["mosi", "mosei"])
    parser.add_argument("--unaligned", dest="aligned", action="store_false", help="the file is unaligned")
    parser.add_argument("--bert", type=Path, help="folder of a saved BERT (+ tokenizer); default: stored text")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1111)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    data = args.data.resolve()
    bert = args.bert.resolve() if args.bert is not None else None
    if args.side == "reference":
        if args.reference is None:
            parser.error("side 'reference' needs --reference DIR")
        out = run_reference(args.reference.resolve(), data, args.dataset, args.aligned, bert, args.epochs, args.seed)
    else:
        out = run_ours(data, bert, args.epochs, args.seed)
    loop = out["train_loop_s"]
    print(json.dumps({
        "side": args.side, "epochs": len(loop), "n_train": out["n_train"], "mini_batches": out["mini_batches"],
        "train_loop_s": [round(s, 3) for s in loop],
        "train_samples_per_s": round(out["n_train"] * len(loop) / sum(loop), 3) if loop else None,
        "wall_s": round(time.perf_counter() - START, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
