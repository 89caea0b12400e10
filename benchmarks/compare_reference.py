"""The public reference DMD and this package side by side: one machine, one run, same data, as ratios.

For each setting (aligned with stored text features; unaligned, the dataset's full audio and
vision lengths; aligned with a randomly initialised 2-layer x 768 BERT) one synthetic MMSA file of
``--dataset`` (MOSI by default, or MOSEI: its shapes, and both sides take its official recipe)
is written with ``dmd synth`` and both sides train on that same file, CPU only, with OMP/MKL and
torch threads set to ``--threads``, in fresh processes, alternating reference, ours, reference,
ours, ... ``--repeats`` times (a shared machine's speed drifts within minutes, so only
neighbouring measurements compare). Two kinds of measurement:

* whole process: wall time (interpreter start to exit) and peak RSS of one training epoch, from
  start-up through validation, checkpoints and the final test: the reference through
  ``benchmarks/reference_runner.py reference`` (its own ``_run``, unchanged), ours as
  ``dmd train --data FILE --max-epochs 1 --seeds 1111 --bert none|DIR --out TMP``;
* train-loop throughput: train samples/s over the epoch's pass through the train split (no
  start-up, no evaluation): the reference's from the same process, ours from
  ``benchmarks/reference_runner.py ours`` (the ``dmd train`` path with ``Trainer.train_epoch``
  timed the same way).

The BERT setting gives both sides the same saved random BERT folder (``transformers.BertModel``
of ``BertConfig(num_hidden_layers=2, hidden_size=768)`` and a small WordPiece tokenizer): the
reference loads its text encoder with ``from_pretrained(folder)``, so nothing is downloaded.

Every ratio says how many times better ours is (above 1: ours better): train samples/s
ours / reference, wall time and peak RSS reference / ours; each is taken per repeat (the
reference and ours run next to each other) and reported as the median and min-max over repeats.
Results: a dated section of ``benchmarks/results/reference.md`` and the raw record
``benchmarks/results/raw/reference-<time>.json`` (machine, versions, both commits, every run).

Run: ``python benchmarks/compare_reference.py --reference DIR [--dataset mosi|mosei]
[--settings aligned,unaligned,bert] [--repeats 3] [--threads 2] [--train-samples N] [--quick]
[--results DIR]`` where DIR is a checkout of https://github.com/mdswyz/DMD (needs ``easydict``).
``--quick``: 32 samples, one repeat, for smoke tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNNER = Path(__file__).resolve().parent / "reference_runner.py"
SIDES = ("reference", "ours")
SEED = 1111
# `dmd` in the interpreter running this script (the console script may be missing from PATH).
DMD = [sys.executable, "-m", "dmd_core.cli"]


@dataclass(frozen=True)
class Setting:
    """One compared setting: which synthetic file and which text input."""

    name: str
    aligned: bool
    bert: bool
    train_samples: int  # default train split size (the table)
    text: str  # what the text input is

    def title(self, dataset: str) -> str:
        """``"MOSEI unaligned (V 500, A 500 frames), stored text features"``: the label for ``dataset``."""
        from dmd_core.config import SEQ_LENS

        if self.aligned:
            return f"{dataset.upper()} aligned, {self.text}"
        _, vision, audio = SEQ_LENS[(dataset, False)]
        return f"{dataset.upper()} unaligned (V {vision}, A {audio} frames), {self.text}"


SETTINGS = {
    s.name: s
    for s in (
        Setting("aligned", True, False, 640, "stored text features"),
        Setting("unaligned", False, False, 64, "stored text features"),
        Setting("bert", True, True, 640, "BERT 2 layers x 768 (random weights)"),
    )
}
QUICK_TRAIN_SAMPLES = 32

# metric -> (label, which side's value goes on top of the ratio: higher is better for samples/s only)
METRICS = {
    "train_samples_per_s": ("train-loop samples/s", True),
    "wall_s": ("whole-process wall s", False),
    "peak_rss_mb": ("whole-process peak RSS MB", False),
}


# ----------------------------------------------------------------------------- pure parts


def parse_settings(text: str) -> list[Setting]:
    """``"aligned,bert"`` -> those settings, in the given order; unknown or repeated names are errors."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"--settings {text!r}: give distinct names out of {', '.join(SETTINGS)}")
    return [SETTINGS[n] for n in names]


def alternation(repeats: int) -> list[tuple[int, str]]:
    """The measurement order: (repeat, side) for reference, ours, reference, ours, ..."""
    return [(i, side) for i in range(repeats) for side in SIDES]


def ratio(reference: float, ours: float, higher_is_better: bool) -> float:
    """How many times better ours is than the reference (above 1: ours better)."""
    return ours / reference if higher_is_better else reference / ours


def summarize(reference: list[float], ours: list[float], higher_is_better: bool) -> dict[str, Any]:
    """Per-repeat ratios of paired values (same repeat = measured next to each other), their median and range."""
    if len(reference) != len(ours) or not reference:
        raise ValueError(f"need one value per side and repeat, got {len(reference)} and {len(ours)}")
    ratios = [ratio(r, o, higher_is_better) for r, o in zip(reference, ours)]
    return {
        "reference": reference, "ours": ours,
        "reference_median": statistics.median(reference), "ours_median": statistics.median(ours),
        "ratios": [round(r, 4) for r in ratios], "ratio_median": round(statistics.median(ratios), 4),
        "ratio_min": round(min(ratios), 4), "ratio_max": round(max(ratios), 4),
    }  # fmt: skip


def markdown_rows(setting: Setting, n_train: int, metrics: dict[str, dict[str, Any]]) -> list[str]:
    """One table row per metric of a setting."""
    rows = []
    for key, (label, _) in METRICS.items():
        m = metrics[key]
        rows.append(f"| {setting.name} | {n_train} | {label} | {m['reference_median']:.2f} | {m['ours_median']:.2f} "
                    f"| {m['ratio_median']:.2f}x | {m['ratio_min']:.2f}-{m['ratio_max']:.2f}x |")  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- running things


def child_env(threads: int) -> dict[str, str]:
    """Environment of every child process: this dmd_core, the thread counts, no progress bars, no network."""
    import dmd_core

    env = dict(os.environ)
    # Every child imports the dmd_core this process imported, wherever it is run from.
    package_root = str(Path(dmd_core.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_DISABLE="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")  # fmt: skip
    return env


def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` to the end; its wall time, its own peak RSS (``wait4``) and its last JSON line, if any."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise failure(cmd, proc.returncode, stderr)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "report": json.loads(lines[-1]) if lines else None}  # fmt: skip


def failure(cmd: list[str], code: int, stderr: str) -> RuntimeError:
    """An error whose first line is the child's last line of stderr (usually the exception), then the details."""
    lines = stderr.strip().splitlines() or ["(no output on stderr)"]
    return RuntimeError(f"{lines[-1]}\n{shlex.join(cmd)} exited with {code}:\n" + "\n".join(lines[-15:]))


def write_synth(setting: Setting, dataset: str, n_train: int, n_eval: int, path: Path,
                env: dict[str, str]) -> list[str]:  # fmt: skip
    """The setting's synthetic file of ``dataset`` (seed 0); returns the ``dmd synth`` arguments used."""
    args = ["synth", "--dataset", dataset, "--aligned" if setting.aligned else "--unaligned",
            "--sizes", str(n_train), str(n_eval), str(n_eval), "--seed", "0", "--out", str(path)]  # fmt: skip
    cmd = [*DMD, *args]
    done = subprocess.run(cmd, env=env, cwd=path.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise failure(cmd, done.returncode, done.stderr)
    return args


def save_random_bert(folder: Path, layers: int = 2, hidden: int = 768) -> None:
    """A randomly initialised BERT (bert-base's vocabulary size) and a minimal WordPiece tokenizer, saved.

    Both sides load it by folder; the reference also loads the tokenizer (it never uses it:
    the file holds token ids).
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(32))]) + "\n")
    BertTokenizer(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden)  # fmt: skip
    BertModel(config).save_pretrained(folder)


def reference_version(ref: Path) -> dict[str, str | None]:
    """The reference checkout's git commit (if it is a git checkout) and a hash of its .py and .json files."""
    commit = None
    try:
        found = subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = (found.stdout.strip() or None) if found.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    digest = hashlib.sha256()
    for path in sorted(p for p in ref.rglob("*") if p.suffix in (".py", ".json") and ".git" not in p.parts):
        digest.update(path.relative_to(ref).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"commit": commit, "files_sha256": digest.hexdigest()[:16]}


def our_commit() -> str:
    """Short HEAD commit of this repository, with ``+dirty`` when tracked files have changed (outside
    ``benchmarks/results``, which this script and the other benchmarks append to)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def compare_setting(setting: Setting, dataset: str, ref: Path, n_train: int, n_eval: int, repeats: int,
                    threads: int, tmp: Path) -> dict[str, Any]:  # fmt: skip
    """Write the setting's file, run both sides alternately ``repeats`` times; the runs and the ratios."""
    env = child_env(threads)
    data = tmp / f"{setting.name}.pkl"
    synth_args = write_synth(setting, dataset, n_train, n_eval, data, env)
    bert = None
    if setting.bert:
        bert = tmp / "bert-2x768"
        if not bert.exists():
            save_random_bert(bert)
    common = ["--data", str(data), "--epochs", "1", "--threads", str(threads), "--seed", str(SEED)]
    text = ["--bert", str(bert)] if bert is not None else []
    reference_cmd = [sys.executable, str(RUNNER), "reference", "--reference", str(ref), "--dataset", dataset,
                     *common, *text,
                     *([] if setting.aligned else ["--unaligned"])]  # fmt: skip
    loop_cmd = [sys.executable, str(RUNNER), "ours", *common, *text]
    values: dict[str, dict[str, list[float]]] = {side: {key: [] for key in METRICS} for side in SIDES}
    runs: list[dict[str, Any]] = []
    for i, side in alternation(repeats):
        if side == "reference":
            whole = measure(reference_cmd, env, tmp)
            loop = whole["report"]
        else:
            out = tmp / f"run-{setting.name}-{i}"
            whole = measure([*DMD, "train", "--data", str(data), "--max-epochs", "1",
                             "--seeds", str(SEED), "--bert", str(bert) if bert is not None else "none",
                             "--out", str(out), "--device", "cpu", "--no-progress"], env, tmp)  # fmt: skip
            loop = measure(loop_cmd, env, tmp)["report"]
        if loop is None or loop.get("n_train") != n_train or not loop.get("train_samples_per_s"):
            raise RuntimeError(f"{setting.name}, {side}: no train-loop report for {n_train} samples: {loop}")
        values[side]["train_samples_per_s"].append(loop["train_samples_per_s"])
        values[side]["wall_s"].append(whole["wall_s"])
        values[side]["peak_rss_mb"].append(whole["peak_rss_mb"])
        runs.append({"repeat": i, "side": side, "whole_process": {k: whole[k] for k in ("wall_s", "peak_rss_mb")},
                     "train_loop": loop})  # fmt: skip
        print(f"  {setting.name} #{i + 1} {side:9s}: {loop['train_samples_per_s']:8.2f} train samples/s, "
              f"whole process {whole['wall_s']:7.1f} s, {whole['peak_rss_mb']:7.0f} MB", flush=True)  # fmt: skip
    metrics = {key: summarize(values["reference"][key], values["ours"][key], higher)
               for key, (_, higher) in METRICS.items()}  # fmt: skip
    return {"label": setting.title(dataset), "train_samples": n_train, "eval_samples": n_eval,
            "data": "dmd " + shlex.join(synth_args[:-2]), "bert": "2 layers x 768, random" if setting.bert else None,
            "metrics": metrics, "runs": runs}  # fmt: skip


# ----------------------------------------------------------------------------- results


def write_results(result: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """A dated section appended to ``reference.md`` in ``folder``, the raw record in ``raw/reference-<time>.json``."""
    from dmd_core.bench import append_rows

    (folder / "raw").mkdir(parents=True, exist_ok=True)
    json_path = folder / "raw" / f"reference-{result['stamp']}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    m, ref = result["machine"], result["reference"]
    ref_id = ref["commit"][:12] if ref["commit"] else f"files sha256 {ref['files_sha256']}"
    lines = [
        f"\n## {m['date']}: ours {result['ours']['commit']} vs reference {ref_id}\n\n",
        f"{result['dataset'].upper()} file shapes and recipe; "
        f"{m['cpu']}, {m['cpus']} cores, {result['threads']} threads; python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}; {result['repeats']} repeat(s), alternating reference, ours. "
        f"Ours: whole process `dmd train --max-epochs 1`, train loop timed by `reference_runner.py ours` "
        f"(`Trainer.train_epoch`); reference: `reference_runner.py reference` (its `_run`).\n\n",
        f"Command: `{result['command']}`\n\n",
        "| setting | train samples | metric | reference | ours | ours better by | range |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, s in result["settings"].items():
        if "error" in s:
            why = s["error"].splitlines()[0][:200].replace("|", "/")
            lines.append(f"| {name} | {s['train_samples']} | failed: {why} | | | | |")
        else:
            lines += markdown_rows(SETTINGS[name], s["train_samples"], s["metrics"])
    header = (
        "# The reference implementation and this package, side by side\n\n"
        "Written by `benchmarks/compare_reference.py` (its docstring says what is measured). Both sides train "
        "on the same synthetic file, CPU only, alternately in fresh processes; reference and ours columns are "
        'medians over repeats, "ours better by" is the median of the per-repeat ratios (samples/s ours / '
        'reference; wall time and peak RSS reference / ours) and "range" their min-max.\n'
    )
    append_rows(folder / "reference.md", header, lines)
    return json_path, folder / "reference.md"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of https://github.com/mdswyz/DMD")
    parser.add_argument("--dataset", default="mosi", choices=["mosi", "mosei"],
                        help="whose file shapes and official recipe (both sides)")  # fmt: skip
    parser.add_argument("--settings", default="aligned,unaligned,bert", help="comma-separated: aligned,unaligned,bert")
    parser.add_argument("--repeats", type=int, default=None, help="alternations reference, ours (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL and torch threads on both sides")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="train split size (default: 640 aligned and bert, 64 unaligned)")  # fmt: skip
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="validation and test split sizes (default: train / 10, at least 16)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke test: 32 train samples, 1 repeat")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of reference.md (JSON in raw/)")
    args = parser.parse_args(argv)
    try:
        settings = parse_settings(args.settings)
    except ValueError as e:
        parser.error(str(e))
    ref = args.reference.resolve()
    if not (ref / "run.py").is_file() or not (ref / "config" / "config.json").is_file():
        parser.error(f"--reference {args.reference}: not a checkout of mdswyz/DMD (no run.py, config/config.json)")
    repeats = args.repeats or (1 if args.quick else 3)

    import torch

    from dmd_core.bench import machine_info

    result: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/compare_reference.py", *argv]),
        "stamp": time.strftime("%Y%m%d-%H%M%S"), "machine": machine_info(torch.device("cpu")),
        "dataset": args.dataset, "threads": args.threads, "repeats": repeats,
        "order": "reference, ours (dmd train, then the train-loop runner), reference, ours, ...",
        "ours": {"commit": our_commit(),
                 "whole_process": "dmd train --data FILE --max-epochs 1 --seeds 1111 --bert none|DIR --out TMP",
                 "train_loop": "benchmarks/reference_runner.py ours: Trainer.fit with each Trainer.train_epoch timed"},
        "reference": {"path": str(args.reference), **reference_version(ref),
                      "run": "benchmarks/reference_runner.py reference: its run._run, train DataLoader passes timed"},
        "ratios": "how many times better ours is: samples/s ours/reference, wall s and peak RSS reference/ours",
        "settings": {},
    }  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dmd-vs-reference-") as tmp:
        for setting in settings:
            n_train = args.train_samples or (QUICK_TRAIN_SAMPLES if args.quick else setting.train_samples)
            n_eval = args.eval_samples or max(16, n_train // 10)
            print(f"{setting.name}: {setting.title(args.dataset)}, {n_train} train samples, {repeats} repeat(s)",
                  flush=True)  # fmt: skip
            try:
                result["settings"][setting.name] = compare_setting(setting, args.dataset, ref, n_train, n_eval,
                                                                   repeats, args.threads, Path(tmp))  # fmt: skip
            except RuntimeError as e:
                print(f"  {setting.name} failed: {e}", file=sys.stderr, flush=True)
                result["settings"][setting.name] = {"train_samples": n_train, "error": str(e)}
    result["total_s"] = round(time.perf_counter() - started, 1)
    json_path, md_path = write_results(result, args.results)
    for name, s in result["settings"].items():
        for key, (label, _) in METRICS.items():
            if "metrics" not in s:
                continue
            m = s["metrics"][key]
            print(f"{name:9s} {label:26s} reference {m['reference_median']:9.2f}  ours {m['ours_median']:9.2f}  "
                  f"ours better by {m['ratio_median']:.2f}x ({m['ratio_min']:.2f}-{m['ratio_max']:.2f}x)")  # fmt: skip
    print(f"{result['total_s']:.0f} s; wrote {json_path} and {md_path}")
    if any("error" in s for s in result["settings"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
