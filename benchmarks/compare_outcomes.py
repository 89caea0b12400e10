"""Trained outcomes of the public reference DMD and this package over seeds: same files, same recipe, tested.

Speed is compared elsewhere (``compare_reference.py``); this asks whether ``dmd_core`` trains DMD as the
reference does, as a researcher sees it: the test metrics of many seeds. It writes two or more synthetic
MOSI-aligned files with ``dmd synth`` (different generator seeds, ``--data-seeds``) and trains both sides on
each file with ``--seeds`` seeds (1111, 1112, ...), with the same recipe: the official MOSI model with its
dropouts on, stored text features, the given mini-batch, learning rate, accumulation and number of epochs, and
the rest of the official recipe (gradient clip 0.6, plateau patience 5 and factor 0.5, early stopping after 10
epochs, the validation loss rounded to 4 decimals); the weights of the best validation epoch are scored on the
test split. Ours drops the leftover mini-batches of an epoch as the reference does (``leftover_step=False``).

* The reference (a checkout of https://github.com/mdswyz/DMD): its own ``run._run`` (data loader, model, both
  GD-Units, ``do_train``, the final ``do_test``) with the run-time adjustments of ``reference_runner.py``
  (``.cuda()`` a no-op, ``ReduceLROnPlateau`` without ``verbose``, PyTorch 1.9's ``CosineEmbeddingLoss`` on 3-D
  inputs) and its ``EpochClock`` to stop after ``--epochs`` epochs. Its per-epoch score of the test split is only
  logged, never used; it is skipped (the test split is then scored once, at the end, by the reference's own
  ``do_test``). Its test predictions are read where its ``do_test`` hands them to its metrics.
* Ours: ``dmd_core.trainer.train`` on the file (``load_mmsa``, ``suggest_config``: the official preset).

Every run is a fresh process with one thread (OMP/MKL too); ``--workers`` processes (default 2) take the runs in
turn from one list that alternates the sides: for each seed, for each file, reference then ours.

Both sides' test predictions are scored with the same code (``dmd_core.metrics``, unrounded). For each file and
metric: mean and standard deviation over seeds (sample, ``ddof=1``) of each side; the difference ours minus
reference with its 95% interval (Welch); Welch's t-test and the Mann-Whitney U test (two-sided, normal
approximation with tie and continuity corrections), each Holm-corrected over the metrics of the file.
Results: ``outcomes.md`` in ``--out`` (default ``benchmarks/results``) with the command that reproduces it, and
the raw record (every run: predictions, per-epoch validation curve, learning rates) in ``--out``/raw.

Run: ``python benchmarks/compare_outcomes.py --reference DIR [--data-seeds 7 8] [--seeds 10]
[--sizes 256 64 686] [--epochs 5] [--lr 1e-3] [--accumulation 1] [--batch-size 16] [--workers 2] [--out DIR]``
(needs ``easydict`` for the reference; about an hour on two cores with the defaults). ``--quick``: a smoke test.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import compare_reference  # noqa: E402  (a sibling script: child processes, commits, failures)
import reference_runner  # noqa: E402  (the reference's run-time adjustments and its epoch limit)

RESULTS = HERE / "results"
SIDES = ("reference", "ours")
FIRST_SEED = 1111
# metric -> (label, scale for display: accuracies and F1 in percent as the paper reports them)
METRICS = {
    "MAE": ("MAE", 1.0),
    "Corr": ("Corr", 1.0),
    "Non0_acc_2": ("Acc-2 (Non0)", 100.0),
    "Non0_F1_score": ("F1 (Non0)", 100.0),
    "Has0_acc_2": ("Acc-2 (Has0)", 100.0),
    "Has0_F1_score": ("F1 (Has0)", 100.0),
    "Mult_acc_7": ("Acc-7", 100.0),
    "Mult_acc_5": ("Acc-5", 100.0),
}
ACC2 = "Non0_acc_2"  # DMD's "Acc-2"
MAX_ACC2_HALF_WIDTH = 3.0  # points: the interval the verdict asks for


@dataclass(frozen=True)
class Recipe:
    """What both sides are given (everything else is the official MOSI recipe on both)."""

    epochs: int = 5
    lr: float = 1e-3
    accumulation: int = 1
    batch_size: int = 16


# ----------------------------------------------------------------------------- statistics


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std: no values")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def welch(a: list[float], b: list[float], level: float = 0.95) -> dict[str, float]:
    """Welch's t-test of ``mean(b) - mean(a)``: the difference, its ``level`` interval, t, degrees of freedom, p.

    ``se = sqrt(s_a^2 / n_a + s_b^2 / n_b)``, Welch-Satterthwaite degrees of freedom, two-sided p. When both
    samples are constant the difference is exact: p is 1 if it is 0, else 0, and the interval is the difference.
    """
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"welch: need at least 2 values per side, got {len(a)} and {len(b)}")
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    diff = mb - ma
    va, vb = sa * sa / len(a), sb * sb / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return {"diff": diff, "low": diff, "high": diff, "t": math.inf if diff else 0.0, "df": math.inf,
                "p": 0.0 if diff else 1.0}  # fmt: skip
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    t = diff / se
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return {"diff": diff, "low": diff - half, "high": diff + half, "t": t, "df": df,
            "p": float(2 * stats.t.sf(abs(t), df))}  # fmt: skip


def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties getting the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def mann_whitney(a: list[float], b: list[float]) -> dict[str, float]:
    """Two-sided Mann-Whitney U test of ``a`` against ``b``: ``U`` of ``b``, z and p.

    Normal approximation with the tie correction of the variance and a continuity correction of 0.5 (what
    ``scipy.stats.mannwhitneyu(..., method="asymptotic")`` computes); fine from about 10 values per side.
    """
    from scipy import stats

    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        raise ValueError("mann_whitney: empty sample")
    r = ranks(list(a) + list(b))
    u = sum(r[na:]) - nb * (nb + 1) / 2  # U of b: pairs (a_i, b_j) with b_j > a_i, ties counting 1/2
    n = na + nb
    counts: dict[float, int] = {}
    for v in list(a) + list(b):
        counts[v] = counts.get(v, 0) + 1
    ties = sum(t**3 - t for t in counts.values())
    var = na * nb / 12 * ((n + 1) - ties / (n * (n - 1)))
    mu = na * nb / 2
    if var == 0.0:
        return {"u": u, "z": 0.0, "p": 1.0}
    z = (abs(u - mu) - 0.5) / math.sqrt(var)
    z = max(z, 0.0)
    return {"u": u, "z": math.copysign(z, u - mu), "p": float(min(1.0, 2 * stats.norm.sf(z)))}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment: ``p_(i) * (m - i + 1)`` in ascending order, kept monotone, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=pvalues.__getitem__)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def compare_file(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per metric: each side's values, mean and std, Welch and Mann-Whitney tests, their Holm adjustments."""
    out: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        ref = [row[metric] for row in per_seed["reference"]]
        ours = [row[metric] for row in per_seed["ours"]]
        out[metric] = {"reference": ref, "ours": ours, "reference_mean_std": mean_std(ref),
                       "ours_mean_std": mean_std(ours), "welch": welch(ref, ours), "mann_whitney": mann_whitney(ref, ours)}  # fmt: skip
    for test in ("welch", "mann_whitney"):
        for metric, p in zip(METRICS, holm([out[m][test]["p"] for m in METRICS])):
            out[metric][test]["p_holm"] = p
    return out


def verdict(files: list[dict[str, Any]]) -> dict[str, Any]:
    """What the comparison must show: no metric at a Holm-corrected p < 0.05 (either test), and on every file
    the 95% interval of the Acc-2 difference containing 0 with a half-width under 3 points."""
    significant = [(f["name"], m, test) for f in files for m, s in f["stats"].items()
                   for test in ("welch", "mann_whitney") if s[test]["p_holm"] < 0.05]  # fmt: skip
    acc2 = []
    for f in files:
        w = f["stats"][ACC2]["welch"]
        scale = METRICS[ACC2][1]
        half = (w["high"] - w["low"]) / 2 * scale
        acc2.append({"file": f["name"], "contains_0": w["low"] <= 0 <= w["high"], "half_width": half,
                     "ok": w["low"] <= 0 <= w["high"] and half < MAX_ACC2_HALF_WIDTH})  # fmt: skip
    return {"significant": significant, "acc2": acc2, "ok": not significant and all(a["ok"] for a in acc2)}


# ----------------------------------------------------------------------------- the runs (one process each)


def job_order(n_files: int, seeds: list[int]) -> list[tuple[int, int, str]]:
    """``(file, seed, side)`` for every run: for each seed, for each file, reference then ours."""
    return [(f, seed, side) for seed in seeds for f in range(n_files) for side in SIDES]


def best_epoch(valid_losses: list[float]) -> int:
    """The reference's choice (``isBetter``, mode min): the first epoch at least 1e-6 below every earlier one."""
    best, epoch = math.inf, 0
    for i, loss in enumerate(valid_losses, 1):
        if loss <= best - 1e-6:
            best, epoch = loss, i
    return epoch


def run_reference(ref_dir: Path, data: Path, seed: int, recipe: Recipe) -> dict[str, Any]:
    """Train the reference on ``data`` (see the module docstring); its test predictions and validation curve."""
    import torch

    reference_runner.adapt_torch_for_reference()
    sys.path.insert(0, str(ref_dir))
    run = importlib.import_module("run")  # the reference's run.py
    from config import get_config_regression

    trainer_module = importlib.import_module("trains.singleTask.DMD")
    schedulers: list[Any] = []

    def plateau(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        schedulers.append(reference_runner.plateau_ignoring_verbose(optimizer, *args, **kwargs))
        return schedulers[-1]

    trainer_module.ReduceLROnPlateau = plateau
    run.time = types.SimpleNamespace(sleep=lambda seconds: None)  # _run pauses 1 s after training
    args = get_config_regression("dmd", "mosi", ref_dir / "config" / "config.json")
    args.update(model_name="dmd", dataset_name="mosi", is_distill=True, mode="train", device=torch.device("cpu"),
                train_mode="regression", feature_T="", feature_A="", feature_V="", cur_seed=1,
                need_data_aligned=True, featurePath=str(data), feature_dims=list(args.feature_dims), use_bert=False,
                learning_rate=recipe.lr, update_epochs=recipe.accumulation, batch_size=recipe.batch_size)  # fmt: skip
    make_loaders = run.MMDataLoader

    def limited_loaders(args_: Any, num_workers: int) -> dict[str, Any]:
        loaders = make_loaders(args_, num_workers)
        loaders["train"] = reference_runner.EpochClock(loaders["train"], recipe.epochs, args_)
        return loaders

    run.MMDataLoader = limited_loaders
    curve: list[dict[str, float]] = []
    final: dict[str, list[float]] = {}
    training = [True]
    trainer_class = trainer_module.DMD
    do_test, do_train = trainer_class.do_test, trainer_class.do_train

    def recorded_test(self: Any, model: Any, loader: Any, mode: str = "VAL", return_sample_results: bool = False):
        if mode == "TEST" and training[0]:
            return {}  # the per-epoch test score: only logged by the reference, skipped
        seen: dict[str, Any] = {}
        metrics = self.metrics

        def recording(pred: Any, true: Any) -> Any:
            seen.update(pred=pred, true=true)
            return metrics(pred, true)

        self.metrics = recording
        try:
            res = do_test(self, model, loader, mode=mode, return_sample_results=return_sample_results)
        finally:
            self.metrics = metrics
        if mode == "VAL":
            curve.append({"epoch": len(curve) + 1, "valid_loss": float(res["Loss"]),
                          "lr": schedulers[0].optimizer.param_groups[0]["lr"],
                          "valid_acc2": float(res["Acc_2"]), "valid_mae": float(res["MAE"])})  # fmt: skip
        else:
            final.update(prediction=seen["pred"].view(-1).tolist(), label=seen["true"].view(-1).tolist())
        return res

    def recorded_train(self: Any, *args_: Any, **kwargs: Any) -> Any:
        try:
            return do_train(self, *args_, **kwargs)
        finally:
            training[0] = False

    trainer_class.do_test, trainer_class.do_train = recorded_test, recorded_train
    run.setup_seed(seed)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the reference writes ./pt/<epoch>.pth and ./pt/dmd.pth
        os.mkdir("pt")
        try:
            run._run(args, num_workers=0)
        finally:
            os.chdir(cwd)
    if not final:
        raise RuntimeError("the reference's final test did not run")
    return {**final, "curve": curve, "best_epoch": best_epoch([row["valid_loss"] for row in curve])}


def run_ours(data: Path, seed: int, recipe: Recipe) -> dict[str, Any]:
    """Train this package on ``data``: ``dmd_core.trainer.train`` with the official preset for the file."""
    import dmd_core
    from dmd_core.trainer import train

    ds = dmd_core.load_mmsa(data, text="features")
    cfg = ds.suggest_config()
    tc = dmd_core.TrainConfig(batch_size=recipe.batch_size, lr=recipe.lr, accumulation=recipe.accumulation,
                              max_epochs=recipe.epochs, seeds=(seed,), leftover_step=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, ds, tc, Path(tmp) / "run", seed=seed, device="cpu", progress=False)
        preds = result.run.test_predictions
    curve = [{"epoch": int(r["epoch"]), "valid_loss": float(r["valid_loss"]), "lr": float(r["lr"]),
              "valid_acc2": float(r["valid_Non0_acc_2"]), "valid_mae": float(r["valid_MAE"]),
              "train_total": float(r["train_total"])} for r in result.history]  # fmt: skip
    return {"prediction": preds["prediction"].astype(float).tolist(), "label": preds["label"].astype(float).tolist(),
            "curve": curve, "best_epoch": int(result.best_epoch)}  # fmt: skip


def job_main(argv: list[str]) -> None:
    """``compare_outcomes.py job SIDE --data FILE --seed N --recipe JSON --out FILE [--reference DIR]``."""
    parser = argparse.ArgumentParser(prog="compare_outcomes.py job")
    parser.add_argument("side", choices=SIDES)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--recipe", required=True, help="Recipe fields as JSON")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", type=Path)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    recipe = Recipe(**json.loads(args.recipe))
    start = time.perf_counter()
    if args.side == "reference":
        if args.reference is None:
            parser.error("side 'reference' needs --reference DIR")
        out = run_reference(args.reference.resolve(), args.data.resolve(), args.seed, recipe)
    else:
        out = run_ours(args.data.resolve(), args.seed, recipe)
    out.update(side=args.side, seed=args.seed, seconds=round(time.perf_counter() - start, 1))
    args.out.write_text(json.dumps(out) + "\n")


# ----------------------------------------------------------------------------- the comparison


def write_synth(data_seed: int, sizes: tuple[int, int, int], path: Path, env: dict[str, str]) -> list[str]:
    """A synthetic MOSI-aligned file from generator seed ``data_seed``; returns the ``dmd synth`` arguments."""
    args = ["synth", "--dataset", "mosi", "--aligned", "--sizes", *map(str, sizes), "--seed", str(data_seed)]
    cmd = [*compare_reference.DMD, *args, "--out", str(path)]
    done = subprocess.run(cmd, env=env, cwd=path.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise compare_reference.failure(cmd, done.returncode, done.stderr)
    return args


def run_job(cmd: list[str], env: dict[str, str], out: Path) -> dict[str, Any]:
    """One run in a fresh process; its record, or ``{"error": ...}``."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        return {"error": str(compare_reference.failure(cmd, done.returncode, done.stderr))}
    return json.loads(out.read_text())


def score(record: dict[str, Any]) -> dict[str, float]:
    """Every metric of :data:`METRICS`, unrounded, from a run's test predictions and labels."""
    from dmd_core.metrics import regression_metrics

    values = regression_metrics(record["prediction"], record["label"], round_to=None)
    return {m: values[m] for m in METRICS}


def fmt(value: float, metric: str, signed: bool = False) -> str:
    scale = METRICS[metric][1]
    digits = 1 if scale == 100.0 else 3
    return f"{value * scale:{'+' if signed else ''}.{digits}f}"


def fmt_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def markdown(result: dict[str, Any]) -> str:
    """``outcomes.md``: what was run, the verdict, per file the statistics and the per-seed values."""
    r, m, ref = result["recipe"], result["machine"], result["reference"]
    ref_id = ref["commit"][:12] if ref["commit"] else f"files sha256 {ref['files_sha256']}"
    v = result["verdict"]
    lines = [
        "# Trained outcomes: the reference implementation and dmd_core over seeds\n",
        f"Written by `benchmarks/compare_outcomes.py` (its docstring says what is run and how it is tested) on "
        f"{m['date']}: ours {result['ours_commit']}, reference {ref_id}; {m['cpu']}, {m['cpus']} cores, "
        f"{result['workers']} worker processes of one thread; python {m['python']}, torch {m['torch']}; "
        f"{result['total_s'] / 60:.0f} min.\n",
        f"Command: `{result['command']}`\n",
        f"Recipe on both sides: the official MOSI model (dropouts on, stored text features), mini-batch "
        f"{r['batch_size']}, learning rate {r['lr']:g}, accumulation {r['accumulation']}, {r['epochs']} epochs, "
        "gradient clip 0.6, plateau patience 5, validation loss rounded to 4 decimals, the best validation epoch's "
        f"weights tested; seeds {result['seeds'][0]}-{result['seeds'][-1]} on each side, runs alternating "
        "reference, ours. Accuracies and F1 in percent; \"difference\" is ours minus reference with its 95% "
        "interval (Welch); p-values two-sided, Holm-corrected over the metrics of a file.\n",
        "Verdict: " + ("met" if v["ok"] else "NOT met") + ". Metrics at a Holm-corrected p < 0.05: "
        + (", ".join(f"{f} {METRICS[x][0]} ({t})" for f, x, t in v["significant"]) or "none") + ". Acc-2 (Non0) "
        "difference intervals: "
        + "; ".join(f"{a['file']}: half-width {a['half_width']:.1f} points, "
                    f"{'contains' if a['contains_0'] else 'excludes'} 0" for a in v["acc2"]) + ".\n",
    ]  # fmt: skip
    for f in result["files"]:
        lines += [
            f"## {f['name']}: `dmd {shlex.join(f['synth'])}`\n",
            "| metric | reference | ours | difference [95% CI] | Welch p | Holm | Mann-Whitney p | Holm |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for metric, s in f["stats"].items():
            (rm, rs), (om, os_), w, mw = s["reference_mean_std"], s["ours_mean_std"], s["welch"], s["mann_whitney"]
            lines.append(
                f"| {METRICS[metric][0]} | {fmt(rm, metric)} ± {fmt(rs, metric)} | {fmt(om, metric)} ± "
                f"{fmt(os_, metric)} | {fmt(w['diff'], metric, True)} [{fmt(w['low'], metric, True)}, "
                f"{fmt(w['high'], metric, True)}] | {fmt_p(w['p'])} | {fmt_p(w['p_holm'])} | {fmt_p(mw['p'])} "
                f"| {fmt_p(mw['p_holm'])} |"
            )
        lines += ["", "Per seed (test split, best validation epoch):", "",
                  "| seed | side | best epoch | " + " | ".join(label for label, _ in METRICS.values()) + " |",
                  "|---|---|---|" + "---|" * len(METRICS)]  # fmt: skip
        for run in sorted(f["runs"], key=lambda x: (x["seed"], x["side"] != "reference")):
            if "error" in run:
                lines.append(f"| {run['seed']} | {run['side']} | failed | " + " | ".join("" for _ in METRICS) + " |")
                continue
            cells = " | ".join(fmt(run["metrics"][x], x) for x in METRICS)
            lines.append(f"| {run['seed']} | {run['side']} | {run['best_epoch']} | {cells} |")
        lines.append("")
    lines.append(f"Raw record (predictions, per-epoch validation curves): `raw/{result['raw_name']}`.\n")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of https://github.com/mdswyz/DMD")
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[7, 8],
                        help="generator seeds of the synthetic files, one file each (at least two)")  # fmt: skip
    parser.add_argument("--sizes", type=int, nargs=3, default=[256, 64, 686], metavar=("TRAIN", "VALID", "TEST"),
                        help="split sizes of each file")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=10, help="training seeds per side and file (1111, 1112, ...)")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--lr", type=float, default=Recipe.lr)
    parser.add_argument("--accumulation", type=int, default=Recipe.accumulation)
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    parser.add_argument("--workers", type=int, default=2, help="runs at a time, each a process with one thread")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of outcomes.md (raw record in OUT/raw)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, 1 epoch, 32/16/16 samples")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.sizes = 2, 1, [32, 16, 16]
    if len(set(args.data_seeds)) < 2:
        parser.error(f"--data-seeds {args.data_seeds}: give at least two different generator seeds")
    if args.seeds < 2:
        parser.error(f"--seeds {args.seeds}: the tests need at least 2 seeds per side")
    for name in ("epochs", "accumulation", "batch_size", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive integer")
    if min(args.sizes) < 2:
        parser.error(f"--sizes {args.sizes}: every split needs at least 2 samples")
    ref = args.reference.resolve()
    if not (ref / "run.py").is_file() or not (ref / "config" / "config.json").is_file():
        parser.error(f"--reference {args.reference}: not a checkout of mdswyz/DMD (no run.py, config/config.json)")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["job"]:
        job_main(argv[1:])
        return
    args = parse_args(argv)
    import torch

    from dmd_core.bench import machine_info

    recipe = Recipe(epochs=args.epochs, lr=args.lr, accumulation=args.accumulation, batch_size=args.batch_size)
    seeds = [FIRST_SEED + i for i in range(args.seeds)]
    ref = args.reference.resolve()
    env = compare_reference.child_env(1)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()
    files: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dmd-outcomes-") as tmp_name:
        tmp = Path(tmp_name)
        for i, data_seed in enumerate(args.data_seeds):
            path = tmp / f"file{i + 1}.pkl"
            synth = write_synth(data_seed, tuple(args.sizes), path, env)
            files.append({"name": f"file {i + 1} (generator seed {data_seed})", "synth": synth, "path": path,
                          "runs": []})  # fmt: skip
        jobs = job_order(len(files), seeds)
        print(f"{len(jobs)} runs on {args.workers} workers: {len(files)} files x {len(seeds)} seeds x 2 sides",
              flush=True)  # fmt: skip

        def launch(k: int, f: int, seed: int, side: str) -> tuple[int, dict[str, Any]]:
            out = tmp / f"run-{k}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "job", side, "--data", str(files[f]["path"]),
                   "--seed", str(seed), "--recipe", json.dumps(asdict(recipe)), "--out", str(out),
                   *(["--reference", str(ref)] if side == "reference" else [])]  # fmt: skip
            record = run_job(cmd, env, out)
            record.update(side=side, seed=seed, order=k)
            return f, record

        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            futures = [pool.submit(launch, k, *job) for k, job in enumerate(jobs)]
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                f, record = future.result()
                if "error" not in record:
                    record["metrics"] = score(record)
                files[f]["runs"].append(record)
                what = (f"failed: {record['error'].splitlines()[0]}" if "error" in record else
                        f"{record['seconds']:6.0f} s, best epoch {record['best_epoch']}, "
                        f"Acc-2 {100 * record['metrics'][ACC2]:.1f}, MAE {record['metrics']['MAE']:.3f}")  # fmt: skip
                print(f"[{done}/{len(jobs)}, {(time.perf_counter() - started) / 60:5.1f} min] file {f + 1} seed "
                      f"{record['seed']} {record['side']:9s} {what}", flush=True)  # fmt: skip
    failed = [(f["name"], r["side"], r["seed"]) for f in files for r in f["runs"] if "error" in r]
    for f in files:
        f["path"] = str(f["path"].name)
        per_seed = {side: [r["metrics"] for r in sorted(f["runs"], key=lambda x: x["seed"])
                           if r["side"] == side and "error" not in r] for side in SIDES}  # fmt: skip
        f["stats"] = compare_file(per_seed)
    result = {
        "command": shlex.join(["python", "benchmarks/compare_outcomes.py", *argv]),
        "stamp": stamp, "machine": machine_info(torch.device("cpu")), "workers": args.workers,
        "recipe": asdict(recipe), "seeds": seeds, "sizes": args.sizes, "data_seeds": args.data_seeds,
        "ours_commit": compare_reference.our_commit(),
        "reference": {"path": str(args.reference), **compare_reference.reference_version(ref)},
        "files": files, "failed": failed, "total_s": round(time.perf_counter() - started, 1),
        "raw_name": f"outcomes-{stamp}.json",
    }  # fmt: skip
    result["verdict"] = verdict(files)
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    (args.out / "raw" / result["raw_name"]).write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "outcomes.md").write_text(markdown(result))
    print(markdown(result))
    print(
        f"{result['total_s'] / 60:.1f} min; wrote {args.out / 'outcomes.md'} and {args.out / 'raw' / result['raw_name']}"
    )
    if failed:
        sys.exit(f"{len(failed)} runs failed: {failed}")


if __name__ == "__main__":
    main()
