"""The Hugging Face-style model folder: ``huggingface_hub``'s ``PyTorchModelHubMixin`` and what DMD adds to it.

:class:`~dmd_core.model.DMD` inherits :class:`DMDHubMixin`, so it saves, loads and uploads itself with
the library's own methods::

    model.save_pretrained("dmd-mosi")              # config.json + model.safetensors (+ a README.md card)
    model = DMD.from_pretrained("dmd-mosi")        # a local folder, or a hub id ("user/dmd-mosi")
    model.push_to_hub("user/dmd-mosi")

What is ours on top of the mixin (this module never imports the model: it works on ``cls`` and
``self``):

- ``config.json`` is :meth:`DMDConfig.to_dict` made self-contained: a DMD with BERT stores BERT's
  ``transformers`` config under ``bert.config`` and BERT's weights in the same ``model.safetensors``,
  so loading it never needs BERT from the hub or a folder (:func:`self_contained_config`);
- loading checks the config (the fields that shape the network present, no unknown field:
  :func:`config_from_saved`) and the weights: a missing, unexpected or wrongly shaped tensor fails,
  naming every one (:class:`WeightsMismatchError`, :func:`load_weights`);
- a hub id that is not in the local cache fails at once when the hub cannot be reached
  (:class:`ModelUnavailableError`), never after download retries; so does a push;
- the model card: the paper and how to load the folder (``dmd export`` writes a full one from the run,
  :mod:`dmd_core.export`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin, hf_hub_download, try_to_load_from_cache

from .config import BertSpec, DMDConfig
from .text_encoder import hub_unreachable_reason

log = logging.getLogger(__name__)

CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
PAPER_URL = "https://arxiv.org/abs/2303.13802"
# The fields that shape the network: a config.json without them is not a DMD's.
STRUCTURE = ("dataset", "aligned", "seq_lens", "feature_dims", "d", "heads", "nlevels", "kernel_sizes")
FOLDER_HINT = f"a DMD folder holds {CONFIG} and {WEIGHTS}, written by DMD.save_pretrained or dmd export"


class WeightsMismatchError(ValueError):
    """A weights file that does not fit the network its config.json describes (names every tensor at fault)."""


class ModelUnavailableError(FileNotFoundError):
    """A model asked for by hub id is neither a local folder nor cached, and the hub cannot be reached."""


class DMDHubMixin(
    PyTorchModelHubMixin,
    library_name="dmd_core",
    license="mit",
    tags=["dmd", "multimodal-sentiment-analysis"],
    paper_url=PAPER_URL,
):
    """``PyTorchModelHubMixin`` with DMD's folder: a self-contained ``config.json``, checked loading, a failure at
    once offline, and the card. The class that inherits it has ``config`` (a :class:`DMDConfig`) and is built by
    ``cls(config)``."""

    def _save_pretrained(self, save_directory: Path) -> None:
        """``model.safetensors`` (the mixin's: BERT's weights included, tensors shared in memory stored once), then
        the self-contained ``config.json`` (the mixin writes no other once this one is there)."""
        super()._save_pretrained(save_directory)
        text = json.dumps(self_contained_config(self).to_dict(), indent=2) + "\n"
        (Path(save_directory) / CONFIG).write_text(text, encoding="utf-8")

    def save_pretrained(self, save_directory: str | Path, *, model_card_kwargs: dict[str, Any] | None = None,
                        **kwargs: Any) -> str | None:  # fmt: skip
        """The mixin's ``save_pretrained``; the card (written unless one is there) loads the folder by its name."""
        model_card_kwargs = {"model_id": Path(save_directory).name, **(model_card_kwargs or {})}
        return super().save_pretrained(save_directory, model_card_kwargs=model_card_kwargs, **kwargs)

    def generate_model_card(self, *args: Any, model_id: str = "model", **kwargs: Any) -> ModelCard:
        """The card of a folder written by ``save_pretrained``: metadata, the paper, how to load it."""
        return ModelCard(
            f"---\n{card_data().to_yaml()}\n---\n\n# {model_id}\n\nA Decoupled Multimodal Distillation model (Li, "
            f"Wang, Cui, CVPR 2023; [paper]({PAPER_URL})), saved with `dmd_core`.\n\n```python\n"
            f'from dmd_core import DMD\n\nmodel = DMD.from_pretrained("{model_id}")\n```\n'
        )

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """The mixin's ``push_to_hub`` (a temporary folder uploaded in one commit; the card loads it by ``repo_id``),
        failing at once when the hub cannot be reached."""
        require_hub(f"push to {repo_id!r}")  # before anything is written
        model_card_kwargs = {"model_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=model_card_kwargs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, map_location: str = "cpu",
                        strict: bool = True, **hub_kwargs: Any):  # fmt: skip
        """The mixin's ``from_pretrained`` (eval mode), from a folder (``save_pretrained``, ``dmd export``) or a hub
        id; a hub id fails at once offline. ``hub_kwargs``: ``revision``, ``cache_dir``, ``force_download``,
        ``local_files_only``, ``token``. ``strict=False`` lets missing and unexpected tensors through (logged)."""
        source = str(pretrained_model_name_or_path)
        check_source(source, hub_kwargs.get("local_files_only", False))
        if os.path.isdir(source):
            check_folder(source)
        return super().from_pretrained(source, map_location=map_location, strict=strict, **hub_kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         map_location: str = "cpu", strict: bool = True, config: Any = None):  # fmt: skip
        """Build the network ``config.json`` describes (``config``: as the mixin read it) and load its checked
        weights."""
        if config is None:
            raise FileNotFoundError(f"{model_id}: no {CONFIG} ({FOLDER_HINT})")
        model = cls(config_from_saved(config, model_id))
        if os.path.isdir(model_id):
            weights = Path(model_id) / WEIGHTS
        else:
            weights = hf_hub_download(repo_id=model_id, filename=WEIGHTS, revision=revision, cache_dir=cache_dir,
                                      force_download=force_download, token=token, local_files_only=local_files_only)  # fmt: skip
        return load_weights(model, weights, strict=strict).to(map_location).eval()


def card_data() -> ModelCardData:
    """The card's metadata for the hub (library, license, tags), as the mixin records it for :class:`DMDHubMixin`."""
    return ModelCardData(**DMDHubMixin._hub_mixin_info.model_card_data.to_dict())


def self_contained_config(model: Any) -> DMDConfig:
    """``model.config`` with BERT given by its ``transformers`` config (its weights travel in the same file)."""
    cfg = model.config
    if getattr(model, "text_encoder", None) is None:
        return cfg
    bert_config = model.text_encoder.bert.config.to_dict()
    bert_config.pop("_name_or_path", None)  # a path on the machine that trained it
    return cfg.replace(bert=BertSpec(name_or_path=None, config=bert_config, finetune=cfg.bert.finetune))


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


def load_weights(model: Any, file: str | os.PathLike, strict: bool = True) -> Any:
    """Load a ``safetensors`` file into ``model`` (an ``nn.Module``), checking every tensor's name and shape first.

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


def check_folder(folder: str | os.PathLike) -> None:
    """A model folder holds ``config.json`` (a JSON object) and ``model.safetensors``; else an error naming the file."""
    config, weights = Path(folder) / CONFIG, Path(folder) / WEIGHTS
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG} ({FOLDER_HINT})")
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS} beside {CONFIG}")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config}: not a JSON config ({err})") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{config}: holds a {type(data).__name__}, not a DMD config (a JSON object)")


def check_source(name: str | os.PathLike, local_files_only: bool = False) -> None:
    """A folder, or a hub id that is cached or fetchable; fails at once otherwise (no download retries)."""
    name = str(name)
    if os.path.isdir(name):
        return
    if os.path.exists(name) or name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: no such folder ({FOLDER_HINT})")
    if all(isinstance(try_to_load_from_cache(name, f), str) for f in (CONFIG, WEIGHTS)):
        return
    reason = "local_files_only=True" if local_files_only else hub_unreachable_reason()
    if reason is not None:
        raise ModelUnavailableError(
            f"cannot load DMD {name!r}: not a local folder, not in the Hugging Face cache, and the hub cannot be "
            f"reached ({reason}). Pass a folder written by DMD.save_pretrained or dmd export instead (e.g. "
            f"downloaded on a machine with network: hf download {name} --local-dir DIR)."
        )


def require_hub(what: str) -> None:
    """Fail at once (:class:`ModelUnavailableError`) when the hub cannot be reached for ``what``."""
    reason = hub_unreachable_reason()
    if reason is not None:
        raise ModelUnavailableError(f"cannot {what}: the Hugging Face hub cannot be reached ({reason})")
