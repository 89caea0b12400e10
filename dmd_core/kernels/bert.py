"""BERT's dropout masks from seeds, so they do not depend on the thread that draws them (speed machinery).

With ``TrainConfig.overlap`` and BERT, training runs BERT's forward pass one mini-batch ahead on a
second thread (:class:`dmd_core.devices.TextAhead`) while the first thread runs the rest of the model,
whose dropout draws on torch's generator: BERT's masks must not come from that generator too, or the
two threads' draws would interleave by timing. :func:`seed_bert_dropout` gives a Hugging Face
``BertModel`` dropout modules whose masks follow from ``mix(seed, pass, site)`` (:class:`DropoutSeeds`:
the stream's seed, the number of the training pass, the dropout site within it), drawn with this
package's fast mask generator, and an attention function whose probabilities' dropout is drawn the
same way. The masks have ``nn.Dropout``'s distribution; the stream is another than torch's. In
evaluation, on GPUs and under ``torch.compile`` BERT computes and draws exactly as before
(:func:`seeds_apply`). It needs BERT to call its attention through ``transformers``' attention registry
(transformers 5 does); where it does not, nothing is replaced and BERT never runs ahead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import dropout


def seeds_apply(t: torch.Tensor) -> bool:
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


class DropoutSeeds:
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
    """``nn.Dropout(p)`` whose mask comes from :class:`DropoutSeeds` (see the module docstring)."""

    def __init__(self, p: float, seeds: DropoutSeeds) -> None:
        super().__init__()
        self.p = p
        self._seeds = [seeds]  # in a list: not a submodule, not in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not seeds_apply(x):
            return F.dropout(x, self.p, True)
        return dropout(x, self.p, True, seed=self._seeds[0].next_site())

    def extra_repr(self) -> str:
        return f"p={self.p}, seeded"


_SEEDED_ATTENTION = "dmd_seeded_dropout"


def _seeded_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """BERT's attention with its probabilities' dropout drawn by the module's :class:`_SeededDropout`.

    Without dropout (evaluation), and where seeds are not used (:func:`seeds_apply`), it is the implementation
    BERT had, ``sdpa`` (the only one replaced): exactly as before. With dropout on the
    CPU it is ``transformers``' eager attention with a boolean mask (True: attend), which is what the mask
    function registered beside it (that of ``sdpa``) builds.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if dropout == 0 or not module.training or not seeds_apply(query):
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


def seed_bert_dropout(bert: nn.Module, seeds: DropoutSeeds) -> bool:
    """Give ``bert`` seeded dropout (see the module docstring) where ``transformers`` allows it; whether it did.

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
