"""What defines a synthetic MMSA file: :class:`SynthSpec`, checked on construction, and its planted signal.

The generator and the formulas each field enters are in :mod:`dmd_core.data.synth`;
:meth:`SynthSpec.linear_r2` is the best a linear probe of each modality can reach on such a file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..config import FEATURE_DIMS, MODALITIES, SEQ_LENS, SPLIT_SIZES
from .dataset import SPLITS


@dataclass(frozen=True)
class SynthSpec:
    """Everything that defines a synthetic MMSA file (:mod:`dmd_core.data.synth` gives the formulas).

    Tuples are ordered L, V, A. ``sizes`` (train, valid, test) overrides ``scale`` times the
    official split sizes.
    """

    dataset: Literal["mosi", "mosei"] = "mosi"
    aligned: bool = True
    scale: float = 1.0
    sizes: tuple[int, int, int] | None = None
    seed: int = 0
    strengths: tuple[float, float, float] = (1.5, 0.6, 0.4)
    n_exclusive: int = 2
    exclusive_strength: float = 1.0
    incongruent: float = 0.1
    incongruent_modality: Literal["V", "A"] = "V"
    incongruent_strength: float = 1.5
    expression_noise: float = 1.0
    frame_noise: float = 1.0
    text_noise: float = 0.1
    annotator_noise: float = 0.6
    text_dim: int = 768
    neg_inf_fraction: float = 0.01

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"SynthSpec.{name}: expected {expected}, found {getattr(self, name)!r}")

        if self.dataset not in SPLIT_SIZES:
            raise bad("dataset", "'mosi' or 'mosei'")
        if len(self.strengths) != 3 or min(self.strengths) < 0:
            raise bad("strengths", "three non-negative numbers (L, V, A)")
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))
        if self.sizes is not None:
            if len(self.sizes) != 3 or min(self.sizes) < 1:
                raise bad("sizes", "three positive split sizes (train, valid, test)")
            object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        if not self.scale > 0:
            raise bad("scale", "a positive number")
        max_k = min(FEATURE_DIMS[self.dataset][1:]) - 1
        if not 0 <= self.n_exclusive <= min(4, max_k):
            raise bad("n_exclusive", f"0..{min(4, max_k)}")
        if not 0 <= self.incongruent <= 1:
            raise bad("incongruent", "a fraction in [0, 1]")
        if self.incongruent_modality not in ("V", "A"):
            raise bad("incongruent_modality", "'V' or 'A'")
        if not 0 <= self.neg_inf_fraction <= 1:
            raise bad("neg_inf_fraction", "a fraction in [0, 1]")
        if self.text_dim < 1:
            raise bad("text_dim", "a positive size")
        for name in ("expression_noise", "frame_noise", "text_noise", "annotator_noise", "exclusive_strength"):
            if getattr(self, name) < 0:
                raise bad(name, "a non-negative number")

    @property
    def split_sizes(self) -> dict[str, int]:
        sizes = self.sizes or tuple(max(1, round(n * self.scale)) for n in SPLIT_SIZES[self.dataset])
        return dict(zip(SPLITS, sizes))

    @property
    def seq_lens(self) -> tuple[int, int, int]:
        """Sequence lengths L, V, A of the file (the official ones)."""
        return SEQ_LENS[(self.dataset, self.aligned)]

    @property
    def feature_dims(self) -> tuple[int, int, int]:
        """Feature sizes L, V, A (text: ``text_dim``)."""
        return (self.text_dim, *FEATURE_DIMS[self.dataset][1:])

    def linear_r2(self) -> dict[str, float]:
        """Best linear R^2 of the factor ``z`` from each modality's expressed sentiment ``e_m``.

        ``Cov(e_m, z)^2 / Var(e_m)`` over the mixture of congruent and incongruent samples;
        the ceiling a probe on infinitely many frames reaches (language a little lower).
        """
        rho, out = self.incongruent, {}
        for m, beta in zip(MODALITIES, self.strengths):
            beta_inc = 0.0 if m == "L" else (self.incongruent_strength if m == self.incongruent_modality else beta)
            cov = (1 - rho) * beta + rho * beta_inc
            var = (1 - rho) * beta**2 + rho * (beta**2 if m == "L" else beta_inc**2) + self.expression_noise**2
            out[m] = cov**2 / var if var > 0 else 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthSpec:
        data = dict(data)
        for name in ("strengths", "sizes"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)

    def replace(self, **changes: Any) -> SynthSpec:
        return dataclasses.replace(self, **changes)
