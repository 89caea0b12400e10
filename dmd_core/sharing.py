"""Sharing trained models: Hugging Face-style folders, runs exported to them, and their model card.

A :class:`~dmd_core.model.DMD` saves and loads itself with the methods of ``huggingface_hub``'s
``PyTorchModelHubMixin`` (same names, same files; implemented here, so that ``huggingface_hub`` is
imported only when a model is shared, not at every start of a training run)::

    model.save_pretrained("dmd-mosi")              # config.json + model.safetensors (+ a README.md)
    model = DMD.from_pretrained("dmd-mosi")        # a local folder, or a hub id ("user/dmd-mosi")
    model.push_to_hub("user/dmd-mosi")
    export_run("runs/mosi", "dmd-mosi")            # `dmd export`: a run's best weights + a model card

``config.json`` is :meth:`DMDConfig.to_dict` made self-contained: a DMD with BERT stores BERT's
``transformers`` config under ``bert.config`` and BERT's weights in the same
``model.safetensors``, so loading it never needs BERT from the hub or a folder. Loading checks
the config (the fields that shape the network present, no unknown field) and the weights: a
missing, unexpected or wrongly shaped tensor fails, naming every one
(:class:`WeightsMismatchError`). A hub id that is not in the local cache fails at once when the
hub cannot be reached (:class:`ModelUnavailableError`), never after download retries.

The weights are written and read by ``safetensors``, downloads and uploads by ``huggingface_hub``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import runs
from .config import BertSpec, DMDConfig, preset
from .distill import EDGE_NAMES
from .metrics import METRIC_NAMES
from .text_encoder import hub_unreachable_reason

if TYPE_CHECKING:
    from .model import DMD

log = logging.getLogger(__name__)

CONFIG, WEIGHTS, CARD, TRAINING = "config.json", "model.safetensors", "README.md", "training.json"
PAPER_URL = "https://arxiv.org/abs/2303.13802"
# The fields that shape the network: a config.json without them is not a DMD's.
STRUCTURE = ("dataset", "aligned", "seq_lens", "feature_dims", "d", "heads", "nlevels", "kernel_sizes")

__all__ = ["WeightsMismatchError", "ModelUnavailableError", "export_run", "load_model", "choose_run", "model_card",
           "self_contained_config", "load_weights", "push_folder", "require_hub", "read_training", "save_folder",
           "from_folder_or_hub", "push_model"]  # fmt: skip
LIBRARY_CARD = {"library_name": "dmd_core", "license": "mit", "tags": ["dmd", "multimodal-sentiment-analysis"]}


class WeightsMismatchError(ValueError):
    """A weights file that does not fit the network its config.json describes (names every tensor at fault)."""


class ModelUnavailableError(FileNotFoundError):
    """A model asked for by hub id is neither a local folder nor cached, and the hub cannot be reached."""


# ---- the folder: config.json and model.safetensors ---------------------------------------------------------------


def self_contained_config(model: DMD) -> DMDConfig:
    """``model.config`` with BERT given by its ``transformers`` config (its weights travel in the same file)."""
    cfg = model.config
    if model.text_encoder is None:
        return cfg
    bert_config = model.text_encoder.bert.config.to_dict()
    bert_config.pop("_name_or_path", None)  # a path on the machine that trained it
    return cfg.replace(bert=BertSpec(name_or_path=None, config=bert_config, finetune=cfg.bert.finetune))


def save_folder(model: DMD, folder: str | os.PathLike) -> Path:
    """What ``DMD.save_pretrained`` writes: ``config.json``, ``model.safetensors`` and, unless one is there, a
    short ``README.md`` card (``dmd export`` writes a full one from the run)."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / WEIGHTS))  # BERT's weights included; tensors shared in memory stored once
    write_config(model, folder)
    if not (folder / CARD).exists():
        runs.atomic_write_text(folder / CARD, plain_card(folder.name))
    return folder


def plain_card(name: str) -> str:
    """The card of a folder written by ``save_pretrained``: metadata, the paper, how to load it."""
    from huggingface_hub import ModelCardData

    return (f"---\n{ModelCardData(**LIBRARY_CARD).to_yaml()}\n---\n\n# {name}\n\nA Decoupled Multimodal Distillation model (Li, Wang, Cui, CVPR 2023; [paper]({PAPER_URL})), "
            "saved with `dmd_core`.\n\n```python\nfrom dmd_core import DMD\n\n"
            f"model = DMD.from_pretrained(\"{name}\")\n```\n")  # fmt: skip


def from_folder_or_hub(cls: type[DMD], source: str | os.PathLike, map_location: str = "cpu", strict: bool = True,
                       **hub_kwargs: Any) -> DMD:  # fmt: skip
    """What ``DMD.from_pretrained`` does: find ``config.json`` and the weights (folder, cache or hub), build the
    DMD the config describes, check and load its weights."""
    model_id = str(source)
    check_source(model_id, hub_kwargs.get("local_files_only", False))
    config_file, weights = _folder_files(model_id) if os.path.isdir(model_id) else _hub_files(model_id, hub_kwargs)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file}: not a JSON config ({err})") from None
    model = cls(config_from_saved(config, model_id))
    return load_weights(model, weights, strict=strict).to(map_location).eval()


def _folder_files(folder: str) -> tuple[Path, Path]:
    config, weights = Path(folder) / CONFIG, Path(folder) / WEIGHTS
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG} (a DMD folder holds {CONFIG} and {WEIGHTS}, written by "
                                "DMD.save_pretrained or dmd export)")  # fmt: skip
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS} beside {CONFIG}")
    return config, weights


def _hub_files(model_id: str, hub_kwargs: dict[str, Any]) -> tuple[Path, Path]:
    from huggingface_hub import hf_hub_download

    config, weights = (Path(hf_hub_download(repo_id=model_id, filename=f, **hub_kwargs)) for f in (CONFIG, WEIGHTS))
    return config, weights


def push_model(model: DMD, repo_id: str, commit_message: str, private: bool | None = None, token: str | None = None,
               branch: str | None = None, create_pr: bool | None = None) -> str:  # fmt: skip
    """What ``DMD.push_to_hub`` does: save to a temporary folder, upload it in one commit (:func:`push_folder`)."""
    require_hub(f"push to {repo_id!r}")  # before anything is written
    with tempfile.TemporaryDirectory(prefix="dmd-push-") as tmp:
        folder = save_folder(model, Path(tmp) / repo_id.split("/")[-1])
        return push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message,
                           branch=branch, create_pr=create_pr)  # fmt: skip


def write_config(model: DMD, folder: str | os.PathLike) -> Path:
    """``folder/config.json``: the self-contained model config (what ``DMD.save_pretrained`` writes)."""
    return runs.write_json(Path(folder) / CONFIG, self_contained_config(model).to_dict())


def config_from_saved(data: Any, where: str) -> DMDConfig:
    """The :class:`DMDConfig` of a saved ``config.json`` (already parsed), or a ValueError saying what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: config.json holds a {type(data).__name__}, not a DMD config (a JSON object)")
    missing = [k for k in STRUCTURE if k not in data]
    if missing:
        hint = f" (it is a {data['model_type']!r} config)" if "model_type" in data else ""
        raise ValueError(f"{where}: config.json is not a DMD config{hint}: fields {missing} are missing")
    try:
        return DMDConfig.from_dict(dict(data))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: config.json is not a valid DMD config: {err}") from None


def load_weights(model: DMD, file: str | os.PathLike, strict: bool = True) -> DMD:
    """Load a ``safetensors`` file into ``model``, checking every tensor's name and shape first.

    Missing and unexpected tensors fail when ``strict`` (else they are logged); tensors of the wrong
    shape always fail. The error names every tensor at fault.
    """
    from safetensors.torch import load_file

    state = load_file(str(file), device="cpu")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (the model's: {tuple(expected[k].shape)})"
             for k in expected if k in state and state[k].shape != expected[k].shape]  # fmt: skip
    problems = [f"{len(names)} {what}: {', '.join(names)}"
                for what, names in (("missing tensors", missing), ("unexpected tensors", unexpected),
                                    ("tensors of the wrong shape", wrong)) if names]  # fmt: skip
    if wrong or (strict and problems):
        raise WeightsMismatchError(f"{file}: the weights do not fit the network of config.json: " + "; ".join(problems))
    if problems:
        log.warning("%s: loaded with strict=False despite %s", file, "; ".join(problems))
    model.load_state_dict(state, strict=False)  # every name and shape was checked above
    return model


def check_source(name: str | os.PathLike, local_files_only: bool = False) -> None:
    """A folder, or a hub id that is cached or fetchable; fails at once otherwise (no download retries)."""
    name = str(name)
    if os.path.isdir(name):
        return
    if os.path.exists(name) or name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: no such folder (a DMD folder holds {CONFIG} and {WEIGHTS}, written by "
                                "DMD.save_pretrained or dmd export)")  # fmt: skip
    from huggingface_hub import try_to_load_from_cache

    if all(isinstance(try_to_load_from_cache(name, f), str) for f in (CONFIG, WEIGHTS)):
        return
    reason = "local_files_only=True" if local_files_only else hub_unreachable_reason()
    if reason is not None:
        raise ModelUnavailableError(
            f"cannot load DMD {name!r}: not a local folder, not in the Hugging Face cache, and the hub cannot be "
            f"reached ({reason}). Pass a folder written by DMD.save_pretrained or dmd export instead (e.g. "
            f"downloaded on a machine with network: hf download {name} --local-dir DIR)."
        )


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


def load_model(source: str | os.PathLike, which: str = "best", seed: int | None = None,
               device: str | torch.device = "cpu") -> DMD:  # fmt: skip
    """A DMD (eval mode) from a folder of :func:`export_run` / ``save_pretrained``, a hub id, or a run folder
    (``which`` weights of ``seed``, default the seed with the lowest validation loss)."""
    from .model import DMD

    path = Path(source)
    if path.is_dir() and not (path / WEIGHTS).is_file():
        if not ((path / runs.CONFIG).is_file() or any(path.glob("seed_*"))):
            raise FileNotFoundError(f"{path}: neither a DMD folder ({CONFIG} and {WEIGHTS}) nor a run folder "
                                    "(config.json and best.pt, or seed_<n>/ folders)")  # fmt: skip
        run, _ = choose_run(path, seed)
        log.info("%s: %s weights of seed %s", path, which, run.seed)
        return run.load_model(which, device)
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
    from huggingface_hub import ModelCardData

    meta = ModelCardData(**LIBRARY_CARD)
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
    model = run.load_model(which)
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
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return str(api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                 commit_message=commit_message, revision=branch, create_pr=create_pr))  # fmt: skip


def require_hub(what: str) -> None:
    """Fail at once (:class:`ModelUnavailableError`) when the hub cannot be reached for ``what``."""
    reason = hub_unreachable_reason()
    if reason is not None:
        raise ModelUnavailableError(f"cannot {what}: the Hugging Face hub cannot be reached ({reason})")


def read_training(folder: str | os.PathLike) -> dict[str, Any]:
    """``training.json`` of an exported folder: what the model card says, as data."""
    return runs.read_json(Path(folder) / TRAINING)
