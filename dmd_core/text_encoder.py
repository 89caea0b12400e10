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
import torch.nn.functional as F
from torch import nn

from .config import BertSpec
from .kernels import dropout


class BertUnavailableError(OSError):
    """BERT weights were asked for by hub name and could not be found or fetched."""


class TextEncoder(nn.Module):
    """BERT over ``(B, 3, L)`` token ids / attention mask / segment ids -> ``(B, L, hidden)``.

    Built without BERT's pooler (the ``[CLS]`` projection): DMD reads the last hidden state only, so
    the pooler would be a trainable layer no loss reaches (and DDP would wait for its gradients).

    **Seeded dropout** (:attr:`seeded`, where the installed ``transformers`` lets a model choose its
    attention function; on the CPU, not under ``torch.compile``): BERT's dropout masks (embeddings, attention probabilities, the two residual
    branches of each layer) follow from :meth:`seed_dropout`'s seed, the number of the training pass
    and the dropout site, not from draws on torch's generator. Whichever thread runs BERT's forward
    pass, and whatever else draws random numbers meanwhile, the masks are the same: that is what lets
    training run BERT's forward pass one mini-batch ahead on a second thread
    (:class:`dmd_core.devices.TextAhead`) with the numbers of one thread. The masks have the same
    distribution as ``nn.Dropout``'s; the stream differs from the reference implementation's (as every
    dropout mask of this package does). In evaluation BERT computes exactly as before.
    """

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        if spec.config is not None:
            self.bert = BertModel(BertConfig.from_dict(dict(spec.config)), add_pooling_layer=False)
        else:
            self.bert = load_bert(spec.name_or_path)
        self.finetune = spec.finetune
        self.seeds = _DropoutSeeds()
        self.seeded = _use_seeded_dropout(self.bert, self.seeds)

    def seed_dropout(self, seed: int, passes: int = 0) -> None:
        """Seed BERT's dropout: the next training pass is number ``passes`` of the stream ``seed``
        (the trainer: the run's seed, and the mini-batches trained before this epoch, so a resumed run
        draws the masks an uninterrupted one would). Unseeded, the stream's seed is drawn from torch's
        generator at the first training pass."""
        self.seeds.seed, self.seeds.passes = int(seed), int(passes)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        ids, mask, segments = text[:, 0].long(), text[:, 1].float(), text[:, 2].long()
        if self.training and self.seeded and _seeds_apply(text):
            self.seeds.next_pass()
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            return self.bert(input_ids=ids, attention_mask=mask, token_type_ids=segments)[0]


def _seeds_apply(t: torch.Tensor) -> bool:
    """Seeded dropout is for the CPU, eager: on GPUs and under ``torch.compile`` BERT draws as ``nn.Dropout`` does
    (torch's generator; a seed changing at every call would also make ``torch.compile`` recompile)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """SplitMix64's finaliser: a well-mixed 64-bit number from any integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class _DropoutSeeds:
    """The seeds of one BERT's dropout masks: ``mix(seed, pass, site)``, site counted within a training pass."""

    def __init__(self) -> None:
        self.seed: int | None = None
        self.passes = 0  # training passes started
        self._pass = 0
        self._site = 0

    def next_pass(self) -> None:
        if self.seed is None:
            self.seed = int(torch.randint(0, 2**62, (1,)).item())
        self._pass, self._site = _mix(self.seed ^ _mix(self.passes)), 0
        self.passes += 1

    def next_site(self) -> int:
        self._site += 1
        return _mix(self._pass ^ _mix(self._site)) >> 2  # 62 bits: numpy's PCG64 and torch take it


class _SeededDropout(nn.Module):
    """``nn.Dropout(p)`` whose mask comes from :class:`_DropoutSeeds` (see :class:`TextEncoder`)."""

    def __init__(self, p: float, seeds: _DropoutSeeds) -> None:
        super().__init__()
        self.p = p
        self._seeds = [seeds]  # in a list: not a submodule, not in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not _seeds_apply(x):
            return F.dropout(x, self.p, True)
        return dropout(x, self.p, True, seed=self._seeds[0].next_site())

    def extra_repr(self) -> str:
        return f"p={self.p}, seeded"


_SEEDED_ATTENTION = "dmd_seeded_dropout"


def _seeded_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """BERT's attention with its probabilities' dropout drawn by the module's :class:`_SeededDropout`.

    Without dropout (evaluation), and where seeds are not used (:func:`_seeds_apply`), it is the implementation
    BERT had, ``sdpa`` (the only one replaced): exactly as before. With dropout on the
    CPU it is ``transformers``' eager attention with a boolean mask (True: attend), which is what the mask
    function registered beside it (that of ``sdpa``) builds.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if dropout == 0 or not module.training or not _seeds_apply(query):
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                              dropout=dropout if module.training else 0.0, **kwargs)  # fmt: skip
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = module.dropout(torch.softmax(scores, dim=-1))
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _use_seeded_dropout(bert: nn.Module, seeds: _DropoutSeeds) -> bool:
    """Give ``bert`` seeded dropout (see :class:`TextEncoder`) where ``transformers`` allows it; whether it did.

    Needs BERT to call its attention through ``transformers``' attention registry (as transformers 5 does;
    versions whose BERT predates it keep ``nn.Dropout`` and the generator's draws, and training then never
    runs BERT ahead)."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        from transformers.models.bert import modeling_bert
    except ImportError:
        return False
    if not hasattr(modeling_bert, "ALL_ATTENTION_FUNCTIONS") or not hasattr(bert, "set_attn_implementation"):
        return False
    if bert.config._attn_implementation != "sdpa":
        return False  # eager or flash attention chosen on purpose: left as it is
    AttentionInterface.register(_SEEDED_ATTENTION, _seeded_attention)
    AttentionMaskInterface.register(_SEEDED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    bert.set_attn_implementation(_SEEDED_ATTENTION)
    for module in list(bert.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(module, child_name, _SeededDropout(child.p, seeds))
    return True


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
