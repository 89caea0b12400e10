"""Configuration of a DMD model: frozen dataclasses and the official presets.

Every number of the published recipe lives here (the book's method reference, "Hyper-parameters"), so that no
user ever edits a source file. Modality order everywhere is L, V, A.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import InitVar, dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

MODALITIES: tuple[str, str, str] = ("L", "V", "A")
# TrainConfig.precision: float32, bf16 or fp16 autocast, or "auto" (the best the device offers).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "auto")

# The official files' sizes (the book's data-format page): sequence lengths L, V, A, feature sizes L, V, A,
# and the train / valid / test sample counts.
SEQ_LENS = {
    ("mosi", True): (50, 50, 50),
    ("mosi", False): (50, 500, 375),
    ("mosei", True): (50, 50, 50),
    ("mosei", False): (50, 500, 500),
}
FEATURE_DIMS = {"mosi": (768, 20, 5), "mosei": (768, 35, 74)}
SPLIT_SIZES = {"mosi": (1284, 229, 686), "mosei": (16326, 1871, 4659)}


class _Config:
    """What every frozen config offers: copies with changes, and a round trip through a plain dict."""

    def replace(self, **changes: Any):
        """A copy with some fields changed (the config is frozen)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = cls._decode(dict(data))  # renamed fields of older files first
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown fields {unknown}")
        return cls(**data)

    @classmethod
    def _decode(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Turn JSON values back into field types (lists into tuples, nested dicts into dataclasses)."""
        return data


@dataclass(frozen=True)
class BertSpec:
    """Where the text encoder's BERT comes from.

    Exactly one of ``name_or_path`` (a hub name such as ``bert-base-uncased`` or a
    local folder holding ``config.json`` and weights) and ``config`` (a
    ``transformers.BertConfig`` as a dict: random weights, for tests and speed
    measurements) is set. ``finetune`` follows the reference (BERT is trained).
    """

    name_or_path: str | None = "bert-base-uncased"
    config: dict[str, Any] | None = None
    finetune: bool = True

    def __post_init__(self) -> None:
        if (self.name_or_path is None) == (self.config is None):
            raise ValueError("BertSpec: give exactly one of name_or_path or config")

    @property
    def hidden_size(self) -> int | None:
        """Hidden size when known without loading anything (config given), else None."""
        return None if self.config is None else int(self.config["hidden_size"])


@dataclass(frozen=True)
class DMDConfig(_Config):
    """Everything that defines a DMD network and its loss weights.

    Tuples are ordered L, V, A (``seq_lens``, ``feature_dims``, ``kernel_sizes``).
    When ``bert`` is set, ``feature_dims[0]`` must be BERT's hidden size (the
    text feature is BERT's last hidden state); otherwise it is the size of the
    stored text features.
    """

    dataset: str = "mosi"
    aligned: bool = True
    seq_lens: tuple[int, int, int] = (50, 50, 50)
    feature_dims: tuple[int, int, int] = (768, 20, 5)
    d: int = 50
    heads: int = 10
    nlevels: int = 4
    kernel_sizes: tuple[int, int, int] = (5, 5, 5)
    # Dropouts (names as in the reference configs).
    text_dropout: float = 0.5
    attn_dropout: float = 0.3  # L self-attention, A<-L / V<-L, memory Transformers
    attn_dropout_a: float = 0.2  # A self-attention, L<-A / V<-A
    attn_dropout_v: float = 0.0  # V self-attention, L<-V / A<-V
    embed_dropout: float = 0.2
    relu_dropout: float = 0.0
    res_dropout: float = 0.0
    output_dropout: float = 0.5
    attn_mask: bool = True
    # Text: through BERT (token ids, mask, segments) or stored features.
    bert: BertSpec | None = None
    # Graph distillation (method reference: "Graph distillation (GD-Unit)").
    homo_gd_size: int = 64
    hetero_gd_size: int = 32
    gd_alpha: float = 1 / 8
    gd_prior_temperature: float = 0.25
    gd_reg_weight: float = 10.0
    gd_logit_weight: float = 1.0
    gd_repr_weight: float = 10.0
    gd_weight: float = 0.05
    homo_prior: tuple[float, ...] = (0, 0, 1, 0, 1, 0)  # L->V, L->A
    hetero_prior: tuple[float, ...] = (0, 0, 1, 0, 1, 1)  # L->V, L->A, V->A
    # The reference computes HomoGD's representation loss but never adds it.
    homo_repr_in_total: bool = False
    # Loss weights (method reference: "Task loss and total loss"): task + GD + w_dec*(cycle + recon + w_sim*(margin + ort)).
    decouple_weight: float = 0.1
    sim_weight: float = 0.1
    margin_scale: float = 0.15
    # Orthogonality cosine: "batch" (PyTorch 1.9's reading of the reference call,
    # the published recipe) or "feature" (per sample and time step, the paper's meaning).
    ort_axis: Literal["batch", "feature"] = "batch"

    def __post_init__(self) -> None:
        for name in ("seq_lens", "feature_dims", "kernel_sizes"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"DMDConfig.{name}: expected 3 values (L, V, A), found {value!r}")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if self.d % self.heads or (2 * self.d) % self.heads:
            raise ValueError(f"DMDConfig: d={self.d} must be divisible by heads={self.heads}")
        if self.d < 4:
            raise ValueError(f"DMDConfig: d={self.d} too small for sinusoidal positions (need >= 4)")
        for m, length, k in zip(MODALITIES, self.seq_lens, self.kernel_sizes):
            if length - k + 1 < 1:
                raise ValueError(f"DMDConfig: modality {m} length {length} shorter than kernel {k}")
        if self.ort_axis not in ("batch", "feature"):
            raise ValueError(f"DMDConfig.ort_axis: expected 'batch' or 'feature', found {self.ort_axis!r}")
        for name in ("homo_prior", "hetero_prior"):
            if len(getattr(self, name)) != 6:
                raise ValueError(f"DMDConfig.{name}: expected 6 edge values, found {getattr(self, name)!r}")
        if self.bert is not None and self.bert.hidden_size is not None:
            if self.bert.hidden_size != self.feature_dims[0]:
                raise ValueError(
                    f"DMDConfig: feature_dims[0]={self.feature_dims[0]} but BERT hidden_size={self.bert.hidden_size}"
                )

    @property
    def conv_lens(self) -> tuple[int, int, int]:
        """Time steps after the temporal projection (L, V, A): ``T_m = L_m - k_m + 1``.

        When a modality already has width ``d`` the projection is skipped (method reference: "Temporal projection") and
        ``T_m = L_m``.
        """
        return tuple(  # type: ignore[return-value]
            n if dim == self.d else n - k + 1 for n, k, dim in zip(self.seq_lens, self.kernel_sizes, self.feature_dims)
        )

    @property
    def use_bert(self) -> bool:
        return self.bert is not None

    @classmethod
    def _decode(cls, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("bert") is not None and not isinstance(data["bert"], BertSpec):
            data["bert"] = BertSpec(**data["bert"])
        for name in ("seq_lens", "feature_dims", "kernel_sizes", "homo_prior", "hetero_prior"):
            if name in data:
                data[name] = tuple(data[name])
        return data


_MOSI = dict(
    d=50, heads=10, nlevels=4, kernel_sizes=(5, 5, 5),  # kernels L, V, A
    text_dropout=0.5, attn_dropout=0.3, attn_dropout_a=0.2, attn_dropout_v=0.0,
    embed_dropout=0.2, relu_dropout=0.0, res_dropout=0.0, output_dropout=0.5,
)  # fmt: skip
_MOSEI = dict(
    d=30, heads=6, nlevels=4, kernel_sizes=(5, 3, 1),  # kernels L, V, A (reference: L 5, A 1, V 3)
    text_dropout=0.3, attn_dropout=0.4, attn_dropout_a=0.0, attn_dropout_v=0.0,
    embed_dropout=0.0, relu_dropout=0.0, res_dropout=0.0, output_dropout=0.5,
)  # fmt: skip
_PRESET_HPARAMS = {"mosi": _MOSI, "mosei": _MOSEI}


def preset(
    dataset: str = "mosi",
    aligned: bool = True,
    bert: BertSpec | str | None = None,
    text_dim: int | None = None,
    **overrides: Any,
) -> DMDConfig:
    """The official configuration for ``dataset`` ("mosi" or "mosei"), aligned or not.

    ``bert``: a :class:`BertSpec`, a hub name or local folder (str), or None to
    read the stored text features. ``text_dim`` overrides the text feature size
    (768 by default; with a ``BertSpec`` holding a config, its hidden size).
    ``overrides`` replace any other field.
    """
    dataset = dataset.lower()
    if dataset not in _PRESET_HPARAMS:
        raise ValueError(f"preset: unknown dataset {dataset!r}; expected 'mosi' or 'mosei'")
    if isinstance(bert, str):
        bert = BertSpec(name_or_path=bert)
    dims = list(FEATURE_DIMS[dataset])
    if text_dim is not None:
        dims[0] = int(text_dim)
    elif bert is not None and bert.hidden_size is not None:
        dims[0] = bert.hidden_size
    fields = dict(_PRESET_HPARAMS[dataset])
    fields.update(dataset=dataset, aligned=aligned, seq_lens=SEQ_LENS[(dataset, aligned)],
                  feature_dims=tuple(dims), bert=bert)  # fmt: skip
    fields.update(overrides)
    return DMDConfig(**fields)


@dataclass(frozen=True)
class TrainConfig(_Config):
    """The optimisation recipe (method reference: "Training recipe") plus the knobs a tutorial needs.

    Recipe: Adam (no weight decay) over the model and both GD-Units; gradients of
    ``accumulation`` mini-batches are summed (the loss is not divided) and clipped by
    value to ``grad_clip`` after every backward; ReduceLROnPlateau(``plateau_factor``,
    ``plateau_patience``) and early stopping (``early_stop`` epochs) on the validation
    L1 loss. ``max_epochs`` bounds the run for tutorials (None: early stopping only).

    ``valid_loss_decimals``: the validation loss is rounded to this many decimals before it steps the
    schedule and is compared with the best so far, as the reference does (4; None compares the unrounded loss).

    Beyond the recipe: ``leftover_step`` lets the last, incomplete group of mini-batches
    of an epoch take an optimizer step (the reference drops it; False reproduces that);
    ``eval_batch_size`` for validation and test (None: ``batch_size``); ``precision``:
    ``"fp32"`` (the recipe), ``"bf16"`` or ``"fp16"`` autocast (fp16 with a gradient scaler),
    or ``"auto"`` (bf16 on GPUs that have it, fp16 on older GPUs such as Colab's T4, fp32 on
    CPU and MPS); labels, losses and metrics stay float32 whatever the precision; on CUDA,
    ``tf32`` matmuls; ``compile`` wraps the model in ``torch.compile``.
    Config files written before ``precision`` existed hold ``bf16: true/false``; :meth:`from_dict`
    reads them. Files written while training could overlap on a second CPU thread hold ``overlap``
    (removed): it is read and ignored.
    """

    batch_size: int = 16
    lr: float = 1e-4
    accumulation: int = 10  # the reference's `update_epochs`
    grad_clip: float = 0.6  # clip by value after every backward (on the running sum)
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    early_stop: int = 10
    valid_loss_decimals: int | None = 4  # the reference's round(loss, 4) before scheduling and early stopping
    max_epochs: int | None = None
    seeds: tuple[int, ...] = (1111, 1112, 1113, 1114, 1115)
    leftover_step: bool = True
    eval_batch_size: int | None = None
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    tf32: bool = True
    compile: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # Deprecated: TrainConfig(bf16=True/False) means precision="bf16"/"fp32" (not a field, not saved).
    bf16: InitVar[bool | None] = None

    def __post_init__(self, bf16: bool | None = None) -> None:
        if bf16 is not None:
            object.__setattr__(self, "precision", "bf16" if bf16 else "fp32")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        for name in ("batch_size", "accumulation", "early_stop"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name}: expected a positive integer, found {getattr(self, name)!r}")
        if self.valid_loss_decimals is not None and (
            isinstance(self.valid_loss_decimals, bool)
            or not isinstance(self.valid_loss_decimals, int)
            or self.valid_loss_decimals < 0
        ):
            raise ValueError(
                f"TrainConfig.valid_loss_decimals: expected None or an integer >= 0, found {self.valid_loss_decimals!r}"
            )
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError(f"TrainConfig.max_epochs: expected None or >= 1, found {self.max_epochs!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision: expected one of {PRECISIONS}, found {self.precision!r}")

    @classmethod
    def _decode(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "bf16" in data:  # config.json of runs written before `precision` replaced `bf16`
            bf16 = data.pop("bf16")
            data.setdefault("precision", "bf16" if bf16 else "fp32")
        if "overlap" in data:  # config.json of runs written while a second CPU thread could train (removed)
            log.info("TrainConfig: ignoring overlap=%r, a removed setting", data.pop("overlap"))
        return data
