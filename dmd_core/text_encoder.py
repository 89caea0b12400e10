"""The text encoder: BERT over token ids, and finding BERT's weights (a folder, the cache, the hub).

DMD reads language either as stored features (the file's ``text`` array; no module here) or
through BERT fine-tuned with the rest of the model (the paper's setting). BERT's weights come
from a local folder, the Hugging Face cache or the hub; without network a hub name fails at
once with what to do instead (:class:`BertUnavailableError`), never after download retries.
``transformers`` is imported only here and only when BERT is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .config import BertSpec


class BertUnavailableError(OSError):
    """BERT weights were asked for by hub name and could not be found or fetched."""


class TextEncoder(nn.Module):
    """BERT over ``(B, 3, L)`` token ids / attention mask / segment ids -> ``(B, L, hidden)``.

    Built without BERT's pooler (the ``[CLS]`` projection): DMD reads the last hidden state only, so
    the pooler would be a trainable layer no loss reaches (and DDP would wait for its gradients).
    BERT runs as ``transformers`` builds it: its own attention and dropout.
    """

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        if spec.config is not None:
            self.bert = BertModel(BertConfig.from_dict(dict(spec.config)), add_pooling_layer=False)
        else:
            self.bert = load_bert(spec.name_or_path)
        self.finetune = spec.finetune

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        ids, mask, segments = text[:, 0].long(), text[:, 1].float(), text[:, 2].long()
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            return self.bert(input_ids=ids, attention_mask=mask, token_type_ids=segments)[0]


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, no connection), or None if it can."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host} cannot be reached: {err}"
    return None


def bert_unavailable_message(name: str, reason: str) -> str:
    """What to do when BERT ``name`` cannot be had: the one wording every caller uses."""
    return (
        f"cannot load BERT {name!r}: not a local folder, not in the Hugging Face cache, and it could not be "
        f"downloaded ({reason}). Point to a local folder holding config.json and the weights (e.g. saved with "
        f"BertModel.save_pretrained on a machine with network), or train on the stored text features instead "
        f"(no BERT; `--bert none` on the command line)."
    )


def load_bert(name_or_path: str):
    """``BertModel.from_pretrained`` (without the pooler) from a local folder, the local cache, or the hub.

    Fails at once with what to do instead when the weights are not on disk and the hub
    cannot be reached (checked first, so no download retries are waited for).
    """
    from transformers import BertModel

    if os.path.isdir(name_or_path):
        return BertModel.from_pretrained(name_or_path, add_pooling_layer=False)
    try:
        return BertModel.from_pretrained(name_or_path, add_pooling_layer=False, local_files_only=True)
    except OSError:
        pass
    reason = hub_unreachable_reason()
    if reason is None:
        try:
            return BertModel.from_pretrained(name_or_path, add_pooling_layer=False)
        except Exception as err:  # HTTP errors, unknown repository, ...
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    raise BertUnavailableError(bert_unavailable_message(name_or_path, reason))


def bert_spec(name: str | None) -> tuple[BertSpec | None, int | None]:
    """``--bert`` as a :class:`BertSpec` (None for "none") and its hidden size (768 unless a folder says otherwise).

    Fails at once (:class:`BertUnavailableError`) when the weights are neither
    a folder nor cached and the hub cannot be reached, instead of waiting on download retries.
    """
    if name is None or name.lower() == "none":
        return None, None
    if os.path.isdir(name):
        config_file = Path(name) / "config.json"
        hidden = json.loads(config_file.read_text()).get("hidden_size", 768) if config_file.is_file() else 768
        return BertSpec(name_or_path=name), int(hidden)
    cached = None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # an old or missing huggingface_hub: let load_bert decide later
        cached = None
    if isinstance(cached, str):
        return BertSpec(name_or_path=name), int(json.loads(Path(cached).read_text()).get("hidden_size", 768))
    reason = hub_unreachable_reason()
    if reason is not None:
        raise BertUnavailableError(bert_unavailable_message(name, reason))
    return BertSpec(name_or_path=name), 768
