"""A run as a shareable model: loading a run's weights, ``dmd export`` and its model card.

::

    model = load_model("runs/mosi")                # a run folder (the seed with the lowest validation loss),
    model = load_model(run, "last")                # a run read back (dmd_core.runs.load_run), an exported folder,
    model = load_model("user/dmd-mosi")            # or a hub id
    export_run("runs/mosi", "dmd-mosi")            # `dmd export`: a run's best weights + a model card

The exported folder is the one :meth:`DMD.save_pretrained <dmd_core.hub.DMDHubMixin.save_pretrained>`
writes (:mod:`dmd_core.hub`: ``config.json``, ``model.safetensors``), with the run's model card
(``README.md``) and what the card says as JSON (``training.json``). Uploads go through ``huggingface_hub``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi

from . import runs
from .config import DMDConfig, preset
from .distill import EDGE_NAMES
from .hub import CARD, CONFIG, PAPER_URL, WEIGHTS, card_data, require_hub
from .metrics import METRIC_NAMES
from .model import DMD

log = logging.getLogger(__name__)

TRAINING = "training.json"

__all__ = ["export_run", "load_model", "choose_run", "model_card", "training_info", "push_folder", "read_training"]


# ---- runs: choosing the weights, loading any source -------------------------------------------------------------


def best_valid_loss(run: runs.Run) -> float:
    history = run.history
    return float(history["best_valid_loss"].iloc[-1]) if len(history) else float("inf")


def choose_run(path: str | os.PathLike, seed: int | None = None) -> tuple[runs.Run, runs.SeedRuns | None]:
    """The run of ``seed`` in a run folder, or the seed with the lowest validation loss (the test split is not used).

    Returns the run and, for a multi-seed folder, all its seeds.
    """
    path = Path(path)
    if (path / runs.CONFIG).is_file():
        run = runs.load_run(path)
        if seed is not None and run.seed != seed:
            raise ValueError(f"{path} holds seed {run.seed}, not {seed}")
        return run, None
    seeds = runs.load_seeds(path)
    if seed is None:
        seed = min(sorted(seeds.runs), key=lambda s: best_valid_loss(seeds.runs[s]))
    elif seed not in seeds.runs:
        raise ValueError(f"{path}: no seed {seed} (seeds: {', '.join(map(str, sorted(seeds.runs)))})")
    return seeds.runs[seed], seeds


def load_model(source: str | os.PathLike | runs.Run, which: str = "best", seed: int | None = None,
               device: str | torch.device = "cpu") -> DMD:  # fmt: skip
    """A DMD (eval mode) from a folder of :func:`export_run` / ``save_pretrained``, a hub id, a run folder (``which``
    weights, ``best`` or ``last``, of ``seed``, default the seed with the lowest validation loss) or a
    :class:`~dmd_core.runs.Run` read back.

    From a run, with BERT, building the model loads BERT from ``config.bert`` first (a local folder or
    the Hugging Face cache), then the run's fine-tuned weights replace it.
    """
    if isinstance(source, runs.Run):
        if seed is not None and source.seed != seed:
            raise ValueError(f"{source.path} holds seed {source.seed}, not {seed}")
        model = DMD(source.config)
        model.load_state_dict(source.checkpoint(which)["model"])
        return model.to(device).eval()
    path = Path(source)
    if path.is_dir() and not (path / WEIGHTS).is_file():
        if not ((path / runs.CONFIG).is_file() or any(path.glob("seed_*"))):
            raise FileNotFoundError(f"{path}: neither a DMD folder ({CONFIG} and {WEIGHTS}) nor a run folder "
                                    "(config.json and best.pt, or seed_<n>/ folders)")  # fmt: skip
        run, _ = choose_run(path, seed)
        log.info("%s: %s weights of seed %s", path, which, run.seed)
        return load_model(run, which, device=device)
    return DMD.from_pretrained(str(source)).to(device).eval()


# ---- dmd export ------------------------------------------------------------------------------------------------


def _preset_changes(cfg: DMDConfig) -> dict[str, Any] | None:
    """The fields where ``cfg`` differs from its official preset (None: no preset for its dataset)."""
    try:
        base = preset(cfg.dataset, cfg.aligned, bert=cfg.bert, seq_lens=cfg.seq_lens, feature_dims=cfg.feature_dims)
    except ValueError:
        return None
    ours, theirs = runs.json_safe(cfg.to_dict()), runs.json_safe(base.to_dict())
    return {k: v for k, v in ours.items() if k != "bert" and v != theirs.get(k)}


def _mean_edges(predictions: Any) -> dict[str, dict[str, float]] | None:
    """Mean edge weights of each GD-Unit over the test samples of ``test_predictions.csv`` (None: not tested)."""
    if not len(predictions):
        return None
    return {unit: {e: float(predictions[f"{unit}_{e}"].mean()) for e in EDGE_NAMES} for unit in ("homo", "hetero")}


def training_info(run: runs.Run, seeds: runs.SeedRuns | None, which: str) -> dict[str, Any]:
    """What an exported folder records about its run (``training.json``, and the model card's content)."""
    checkpoint = run.checkpoint(which)
    all_runs = seeds.runs if seeds is not None else {run.seed: run}
    per_seed_edges = {s: _mean_edges(r.test_predictions) for s, r in sorted(all_runs.items())}
    tested = [e for e in per_seed_edges.values() if e is not None]
    mean_edges = {unit: {e: sum(t[unit][e] for t in tested) / len(tested) for e in EDGE_NAMES}
                  for unit in ("homo", "hetero")} if tested else None  # fmt: skip
    summary_file = None if seeds is None else seeds.path / runs.SUMMARY_JSON
    bert = run.config.bert
    return {
        "data": Path(run.data).name if run.data else None,
        "dataset": run.config.dataset,
        "aligned": run.config.aligned,
        "text": "stored text features" if bert is None else f"BERT ({'fine-tuned' if bert.finetune else 'frozen'})",
        "preset_changes": _preset_changes(run.config),
        "train": runs.json_safe(run.train_config.to_dict()),
        "seed": run.seed,
        "seeds": sorted(all_runs),
        "selection": "the only seed" if len(all_runs) == 1 else "the seed with the lowest validation loss",
        "weights": which,
        "epoch": checkpoint.get("epoch"),
        "valid_loss": checkpoint.get("valid_loss"),
        "epochs": len(run.history),
        "test_metrics": run.test_metrics,
        "summary": runs.read_json(summary_file) if summary_file is not None and summary_file.is_file() else None,
        "edges": {"seed": per_seed_edges[run.seed], "mean_over_seeds": mean_edges, "seeds_tested": len(tested)},
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _metrics_table(info: dict[str, Any]) -> list[str]:
    mine = info["test_metrics"] or {}
    over = (info["summary"] or {}).get("metrics", {})
    if not mine and not over:
        return ["The run has not been tested yet (no test_metrics.json)."]
    n = len(info["seeds"])
    lines = [f"| metric | seed {info['seed']} | mean over {n} seeds | std |", "|---|---|---|---|"]
    for name in (*METRIC_NAMES, "loss"):
        entry = over.get(name, {})
        lines.append(f"| {name} | {_fmt(mine.get(name))} | {_fmt(entry.get('mean'))} | {_fmt(entry.get('std'))} |")
    return lines


def _edges_table(info: dict[str, Any]) -> list[str]:
    edges = info["edges"]
    if edges["seed"] is None:
        return ["The run has not been tested yet (no test_predictions.csv)."]
    over = edges["mean_over_seeds"]
    lines = [f"| edge (teacher->student) | HomoGD, seed {info['seed']} | HeteroGD, seed {info['seed']} | "
             f"HomoGD, mean of {edges['seeds_tested']} seeds | HeteroGD, mean of {edges['seeds_tested']} seeds |",
             "|---|---|---|---|---|"]  # fmt: skip
    for e in EDGE_NAMES:
        lines.append(f"| {e} | {edges['seed']['homo'][e]:.3f} | {edges['seed']['hetero'][e]:.3f} | "
                     f"{over['homo'][e]:.3f} | {over['hetero'][e]:.3f} |")  # fmt: skip
    return lines


def model_card(info: dict[str, Any], where: str) -> str:
    """The model card (``README.md``) of an exported run: metadata for the hub, then the run in prose and tables."""
    meta = card_data()
    layout = "aligned" if info["aligned"] else "unaligned"
    changes = info["preset_changes"]
    preset_text = (f"no official preset for dataset {info['dataset']!r}" if changes is None
                   else f"the official {info['dataset'].upper()} {layout} preset"
                   + (", changed: " + ", ".join(f"`{k}={v}`" for k, v in changes.items()) if changes else ""))  # fmt: skip
    recipe = ", ".join(f"`{k}={v}`" for k, v in info["train"].items() if not (k == "extra" and not v))
    lines = [
        "---", meta.to_yaml(), "---", "",
        f"# DMD on {info['data'] or 'an MMSA file'}", "",
        f"Decoupled Multimodal Distillation (Li, Wang, Cui, CVPR 2023; [paper]({PAPER_URL})) for multimodal "
        "sentiment analysis, trained with `dmd_core`. It predicts a sentiment score in [-3, 3] from language, "
        "vision and audio features in the MMSA format.", "",
        "## The run", "",
        f"- data: `{info['data'] or 'unknown'}` ({info['dataset']}, {layout}); text: {info['text']}",
        f"- model: {preset_text}",
        f"- recipe: {recipe}",
        f"- weights: the {info['weights']} weights (epoch {info['epoch']} of {info['epochs']}, validation loss "
        f"{_fmt(info['valid_loss'])}) of seed {info['seed']}, {info['selection']} among seeds "
        f"{', '.join(map(str, info['seeds']))}", "",
        "## Test metrics", "", *_metrics_table(info), "",
        "## GD-Unit graphs", "",
        "Mean edge weights of the two graph-distillation units on the test split (each unit's six edges sum to 1).",
        "", *_edges_table(info), "",
        "## How to load it", "",
        "```python",
        "from dmd_core import DMD, predict_arrays",
        "",
        f'model = DMD.from_pretrained("{where}")   # this folder, or its hub id',
        "pred = predict_arrays(model, text, audio, vision)   # arrays in memory; pred.rows(): prediction, edges",
        "```", "",
        "```bash",
        f"dmd predict --model {where} --data new_clips.pkl --out predictions.csv   # any MMSA-format file",
        "```", "",
        f"`{CONFIG}` is the model config (BERT's own config included when it has BERT), `{WEIGHTS}` every "
        f"weight (BERT's too), `{TRAINING}` what this card says, as JSON.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, seed: int | None = None, which: str = "best",
               overwrite: bool = False) -> Path:  # fmt: skip
    """A run's weights as a shareable folder: ``config.json``, ``model.safetensors``, ``README.md``, ``training.json``.

    ``seed`` None: the seed with the lowest validation loss (the test split does not choose). The
    folder loads with ``DMD.from_pretrained(out)`` and predicts what the run's checkpoint predicts.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose another folder or overwrite it (--overwrite)")
    run, seeds = choose_run(run_dir, seed)
    info = training_info(run, seeds, which)
    model = load_model(run, which)
    model.save_pretrained(out)
    runs.write_json(out / TRAINING, info)
    runs.atomic_write_text(out / CARD, model_card(info, out.name))
    log.info("exported the %s weights of seed %s of %s to %s", which, run.seed, run_dir, out)
    return out


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "dmd export", branch: str | None = None, create_pr: bool | None = None) -> str:  # fmt: skip
    """Upload a model folder (an export's card and ``training.json`` included) to the hub repository ``repo_id``
    (created if needed), in one commit; fails at once offline."""
    require_hub(f"push to {repo_id!r}")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return str(api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                 commit_message=commit_message, revision=branch, create_pr=create_pr))  # fmt: skip


def read_training(folder: str | os.PathLike) -> dict[str, Any]:
    """``training.json`` of an exported folder: what the model card says, as data."""
    return runs.read_json(Path(folder) / TRAINING)
