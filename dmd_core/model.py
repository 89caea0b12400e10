"""The DMD network, one module holding both GD-Units (the book's method reference, "Inputs and text
encoder" through "Final fusion and prediction").

Reading order: :class:`TextEncoder` (BERT or stored features), then
:class:`DMD.forward`: temporal projection -> decoupling into private ``s_m``
and shared ``c_m`` features -> homogeneous branch on ``c_m`` -> shared fusion
-> heterogeneous (cross-modal) branch on ``s_m`` -> final fusion. Every
per-modality layer lives in an ``nn.ModuleDict`` keyed by ``"L"``, ``"V"``,
``"A"``; nothing is written three times.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MODALITIES, DMDConfig
from .distill import Graph, GraphDistillation
from .hub import DMDHubMixin
from .kernels import dropout
from .text_encoder import TextEncoder
from .transformer import TransformerEncoder

# Layers that earlier versions built although no loss uses them (the reference's projections of s_m, BERT's
# pooler): their weights, found in older checkpoints, are dropped on load (DMD.load_state_dict).
UNBUILT = ("private_proj.", "text_encoder.bert.pooler.")

# Sources of each target's cross-modal Transformers, in the order their outputs
# are concatenated (the reference's: L <- [A, V], V <- [L, A], A <- [L, V]).
CROSS_SOURCES = {"L": ("A", "V"), "V": ("L", "A"), "A": ("L", "V")}


class ResidualHead(nn.Module):
    """``z = proj2(dropout(relu(proj1(h)))) + h``; ``logit = out(z)``.

    The pattern of every prediction head in DMD. Returns ``(relu(proj1(h)), z, logit)``:
    the first is HomoGD's representation (the reference's in-place ReLU).
    """

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.proj1 = nn.Linear(dim, hidden)
        self.proj2 = nn.Linear(hidden, dim)
        self.out = nn.Linear(dim, 1)
        self.dropout = dropout

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = F.relu(self.proj1(h))
        z = self.proj2(dropout(r, self.dropout, self.training)) + h
        return r, z, self.out(z)


@dataclass
class Decoupled:
    """Decoupled features per modality (dicts keyed ``"L"``, ``"V"``, ``"A"``), ``(B, d, T_m)``.

    ``x``: temporal projection; ``private`` ``s_m``; ``shared`` ``c_m``; ``recon``
    the decoder's reconstruction of ``x``; ``private_cycle`` ``E_m(recon)``;
    ``shared_sim`` ``(B, d)`` the projection used by the margin loss. (The reference also
    projects ``s_m`` to ``(B, d)``, ``proj_cosine_*``; no loss uses it, so it is not built.)
    """

    x: dict[str, torch.Tensor]
    private: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor]
    recon: dict[str, torch.Tensor]
    private_cycle: dict[str, torch.Tensor]
    shared_sim: dict[str, torch.Tensor]


@dataclass
class Branch:
    """One branch's per-modality heads, stacked L, V, A: what its GD-Unit consumes.

    ``logits (3, B, 1)``; ``reprs (3, B, H)``; ``hidden (3, B, H)``: the feature
    the heads read (homogeneous: flattened ``c_m`` is too large to keep, so
    ``hidden`` is the head input only for the heterogeneous branch, ``g_m``).
    """

    logits: torch.Tensor
    reprs: torch.Tensor
    hidden: torch.Tensor | None = None


@dataclass
class DMDOutput:
    """Everything one forward pass computes.

    ``prediction (B, 1)``: the sentiment estimate. ``logit_c (B, 1)``: the
    shared-fusion head. ``homo``/``hetero``: the two branches; ``homo_graph``/
    ``hetero_graph``: their GD-Units' edges.
    """

    prediction: torch.Tensor
    logit_c: torch.Tensor
    decoupled: Decoupled
    homo: Branch
    hetero: Branch
    homo_graph: Graph
    hetero_graph: Graph

    def predictions(self) -> list[torch.Tensor]:
        """The eight ``(B, 1)`` predictions the task loss scores."""
        return [self.prediction, *self.homo.logits, *self.hetero.logits, self.logit_c]


def time_major(x: torch.Tensor) -> torch.Tensor:
    """``(B, d, T) -> (B, T*d)`` with time outermost."""
    return x.transpose(1, 2).reshape(x.shape[0], -1)


class DMD(nn.Module, DMDHubMixin):
    """Decoupled Multimodal Distillation (Li, Wang, Cui, CVPR 2023).

    ``DMD(config)(text, audio, vision)`` -> :class:`DMDOutput`, where ``text`` is
    ``(B, 3, L_t)`` ids/mask/segments with BERT or ``(B, L_t, d_t)`` features,
    ``audio (B, L_a, d_a)``, ``vision (B, L_v, d_v)``. ``homo_gd`` and
    ``hetero_gd`` are the two GD-Units; their losses are in :mod:`dmd_core.losses`.
    ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (huggingface_hub's ``PyTorchModelHubMixin``,
    through :class:`~dmd_core.hub.DMDHubMixin`) share it as ``config.json`` + ``model.safetensors``;
    :mod:`dmd_core.hub` says what they check.
    """

    def __init__(self, config: DMDConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.d
        lens = dict(zip(MODALITIES, cfg.conv_lens))
        self.text_encoder = TextEncoder(cfg.bert) if cfg.bert is not None else None
        # 2. Temporal projection (no bias). Kept even when d_in == d (then unused), as the reference does.
        self.proj = nn.ModuleDict({
            m: nn.Conv1d(dim, d, k, bias=False) for m, dim, k in zip(MODALITIES, cfg.feature_dims, cfg.kernel_sizes)
        })  # fmt: skip
        self.skip_proj = {m: dim == d for m, dim in zip(MODALITIES, cfg.feature_dims)}
        # 3. Decoupling: private encoders, one shared encoder, decoders, margin-loss projections.
        self.private = nn.ModuleDict({m: nn.Conv1d(d, d, 1, bias=False) for m in MODALITIES})
        self.shared = nn.Conv1d(d, d, 1, bias=False)
        self.decoder = nn.ModuleDict({m: nn.Conv1d(2 * d, d, 1, bias=False) for m in MODALITIES})
        self.shared_sim = nn.ModuleDict({m: nn.Linear(d * lens[m], d) for m in MODALITIES})
        # (The reference's projections of s_m, proj_cosine_*, feed no loss: not built; see UNBUILT.)
        # 4. Homogeneous heads on flattened c_m.
        self.homo_heads = nn.ModuleDict({m: ResidualHead(d * lens[m], d, cfg.output_dropout) for m in MODALITIES})
        # 5. Shared fusion: self-attention per modality, then a head on [L, V, A].
        self.shared_attn = nn.ModuleDict({m: self._transformer(d, self._attn_dropout(m)) for m in MODALITIES})
        self.fusion_head = ResidualHead(3 * d, 3 * d, cfg.output_dropout)
        # 6. Heterogeneous branch: cross-modal Transformers keyed target+source, memory, heads.
        self.cross = nn.ModuleDict({
            m + n: self._transformer(d, self._attn_dropout(n)) for m in MODALITIES for n in CROSS_SOURCES[m]
        })  # fmt: skip
        self.memory = nn.ModuleDict(
            {m: self._transformer(2 * d, cfg.attn_dropout, max(cfg.nlevels, 3)) for m in MODALITIES}
        )
        self.hetero_heads = nn.ModuleDict({m: ResidualHead(2 * d, 2 * d, cfg.output_dropout) for m in MODALITIES})
        # 7. Final fusion: sigmoid features (they replace, not gate) and the output head.
        self.final_gates = nn.ModuleDict({m: nn.Linear(2 * d, 2 * d) for m in MODALITIES})
        self.final_gate_c = nn.Linear(3 * d, 3 * d)
        self.final_head = ResidualHead(9 * d, 9 * d, cfg.output_dropout)
        # 9. The two GD-Units.
        self.homo_gd = GraphDistillation.homo(cfg)
        self.hetero_gd = GraphDistillation.hetero(cfg)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, also for checkpoints of earlier versions (their :data:`UNBUILT` weights
        are dropped: nothing reads them)."""
        if any(k.startswith(UNBUILT) for k in state_dict):
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(UNBUILT)}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _attn_dropout(self, source: str) -> float:
        cfg = self.config
        return {"L": cfg.attn_dropout, "V": cfg.attn_dropout_v, "A": cfg.attn_dropout_a}[source]

    def _transformer(self, dim: int, attn_dropout: float, layers: int | None = None) -> TransformerEncoder:
        cfg = self.config
        return TransformerEncoder(
            dim, cfg.heads, layers or cfg.nlevels, attn_dropout, cfg.relu_dropout,
            cfg.res_dropout, cfg.embed_dropout, cfg.attn_mask,
        )  # fmt: skip

    def text_features(self, text: torch.Tensor) -> torch.Tensor:
        """``(B, L_t, d_t)`` text features: BERT's last hidden state, or ``text`` itself."""
        return text if self.text_encoder is None else self.text_encoder(text)

    def decouple(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor) -> Decoupled:
        """Temporal projection and decoupling (method reference: "Temporal projection", "Decoupling")."""
        text = self.text_features(text)
        inputs = {"L": text, "V": vision, "A": audio}  # (B, L_m, d_m)
        x, s, c, recon, cycle, sim = {}, {}, {}, {}, {}, {}
        for m in MODALITIES:
            h = inputs[m].transpose(1, 2)  # (B, d_m, L_m)
            if m == "L":
                h = dropout(h, self.config.text_dropout, self.training)
            x[m] = h if self.skip_proj[m] else self.proj[m](h)  # (B, d, T_m)
            s[m], c[m] = self.private[m](x[m]), self.shared(x[m])
            sim[m] = self.shared_sim[m](c[m].flatten(1))  # channel-major flatten, as the reference
            recon[m] = self.decoder[m](torch.cat([s[m], c[m]], dim=1))
            cycle[m] = self.private[m](recon[m])
        return Decoupled(x, s, c, recon, cycle, sim)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor) -> DMDOutput:
        """One forward pass."""
        dec = self.decouple(text, audio, vision)
        s_seq = {m: dec.private[m].permute(2, 0, 1) for m in MODALITIES}  # (T, B, d)

        # 4. Homogeneous branch: heads on the time-major flattened shared features.
        homo = [self.homo_heads[m](time_major(dec.shared[m])) for m in MODALITIES]
        homo_branch = Branch(logits=torch.stack([h[2] for h in homo]), reprs=torch.stack([h[0] for h in homo]))

        # 5. Shared fusion: last time step of each modality's self-attention.
        c_last = [self.shared_attn[m](dec.shared[m].permute(2, 0, 1), last_only=True)[-1] for m in MODALITIES]  # (B, d)
        c_fused = torch.cat(c_last, dim=1)  # (B, 3d)
        logit_c = self.fusion_head(c_fused)[2]

        # 6. Heterogeneous branch: each target attends to the two other modalities.
        g = []
        for m in MODALITIES:
            h = torch.cat([self.cross[m + n](s_seq[m], s_seq[n]) for n in CROSS_SOURCES[m]], dim=-1)  # (T_m, B, 2d)
            g.append(self.memory[m](h, last_only=True)[-1])  # (B, 2d)
        hetero = [self.hetero_heads[m](g_m) for m, g_m in zip(MODALITIES, g)]
        hetero_branch = Branch(
            logits=torch.stack([h[2] for h in hetero]), reprs=torch.stack([h[1] for h in hetero]), hidden=torch.stack(g)
        )

        # 7. Final fusion over sigmoid features [u_L, u_V, u_A, u_c] (B, 9d).
        fused = torch.cat(
            [torch.sigmoid(self.final_gates[m](g_m)) for m, g_m in zip(MODALITIES, g)]
            + [torch.sigmoid(self.final_gate_c(c_fused))],
            dim=1,
        )
        prediction = self.final_head(fused)[2]

        return DMDOutput(
            prediction=prediction,
            logit_c=logit_c,
            decoupled=dec,
            homo=homo_branch,
            hetero=hetero_branch,
            homo_graph=self.homo_gd(homo_branch.logits, homo_branch.reprs),
            hetero_graph=self.hetero_gd(hetero_branch.logits, hetero_branch.reprs),
        )
