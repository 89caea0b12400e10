"""Initial weights drawn as the reference draws them (the book's method reference, "Where we differ from the
reference": nothing left there about initialisation).

Every parameter of a freshly built DMD is checked against the formula of the reference's initialiser for its
kind, with no reference code: the Transformers' attention projections and feed-forward layers are fairseq's
(Xavier-uniform weights, zero biases), layer norms start at ones and zeros, and every other layer keeps PyTorch's
``nn.Linear``/``nn.Conv1d`` default (``kaiming_uniform_(a=sqrt(5))`` weights and ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
biases, both of standard deviation ``1/sqrt(3 fan_in)``). Each tensor's values, pooled over several seeds and both
official presets, must have the formula's standard deviation, a zero mean and the uniform's support, within bounds
set by the sampling error.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from dmd_core.config import preset
from dmd_core.model import DMD

SEEDS = range(6)
PRESETS = {"mosi aligned": preset("mosi", aligned=True), "mosei unaligned": preset("mosei", aligned=False)}
SIGMAS = 5.0  # tolerance in standard errors (about 700 tensors are checked: a false alarm needs a 5-sigma draw)

HEADS = r"(homo_heads|hetero_heads)\.[LVA]\.(proj1|proj2|out)|(fusion_head|final_head)\.(proj1|proj2|out)"
# kind -> (pattern of the full parameter name, initialiser). Every parameter must match exactly one kind.
KINDS = {
    "attention in_proj weight": (r"\.self_attn\.in_proj_weight$", "xavier_uniform"),
    "attention in_proj bias": (r"\.self_attn\.in_proj_bias$", "zeros"),
    "attention out_proj weight": (r"\.self_attn\.out_proj\.weight$", "xavier_uniform"),
    "attention out_proj bias": (r"\.self_attn\.out_proj\.bias$", "zeros"),
    "feed-forward weight": (r"\.layers\.\d+\.fc[12]\.weight$", "xavier_uniform"),
    "feed-forward bias": (r"\.layers\.\d+\.fc[12]\.bias$", "zeros"),
    "layer norm weight": (r"\.(layer_norms\.\d+|layer_norm)\.weight$", "ones"),
    "layer norm bias": (r"\.(layer_norms\.\d+|layer_norm)\.bias$", "zeros"),
    "conv1d projection and decoupling": (r"^((proj|private|decoder)\.[LVA]|shared)\.weight$", "torch_default"),
    "linear head weight": (rf"^({HEADS}|shared_sim\.[LVA]|final_gates\.[LVA]|final_gate_c)\.weight$", "torch_default"),
    "linear head bias": (rf"^({HEADS}|shared_sim\.[LVA]|final_gates\.[LVA]|final_gate_c)\.bias$", "torch_default_bias"),
    "GD-Unit weight": (r"^(homo|hetero)_gd\.W_(logit|repr|edge)\.weight$", "torch_default"),
    "GD-Unit bias": (r"^(homo|hetero)_gd\.W_(logit|repr|edge)\.bias$", "torch_default_bias"),
}


def kind_of(name: str) -> list[str]:
    return [kind for kind, (pattern, _) in KINDS.items() if re.search(pattern, name)]


def fans(weight_shape: torch.Size) -> tuple[int, int]:
    """``(fan_in, fan_out)`` as torch.nn.init computes them: ``(in * kernel, out * kernel)``."""
    receptive = math.prod(weight_shape[2:])
    return weight_shape[1] * receptive, weight_shape[0] * receptive


def expected_std(init: str, name: str, shapes: dict[str, torch.Size]) -> float:
    """The standard deviation of a draw from ``init`` for parameter ``name`` (biases: fans of their weight)."""
    if init == "xavier_uniform":  # gain 1: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        fan_in, fan_out = fans(shapes[name])
        return math.sqrt(2.0 / (fan_in + fan_out))
    if init == "torch_default":  # kaiming_uniform_(a=sqrt(5)): U(-b, b), b = 1 / sqrt(fan_in)
        return 1.0 / math.sqrt(3 * fans(shapes[name])[0])
    if init == "torch_default_bias":  # U(-b, b), b = 1 / sqrt(fan_in of the layer's weight)
        return 1.0 / math.sqrt(3 * fans(shapes[name[: -len("bias")] + "weight"])[0])
    raise ValueError(init)


@pytest.fixture(scope="module")
def drawn() -> dict[str, dict[str, torch.Tensor]]:
    """preset -> parameter name -> its values over SEEDS, ``(len(SEEDS), numel)`` float64."""
    out = {}
    for label, cfg in PRESETS.items():
        draws = []
        for seed in SEEDS:
            torch.manual_seed(seed)
            draws.append({n: p.detach().double().flatten() for n, p in DMD(cfg).named_parameters()})
        out[label] = {n: torch.stack([d[n] for d in draws]) for n in draws[0]}
    return out


@pytest.fixture(scope="module")
def shapes() -> dict[str, dict[str, torch.Size]]:
    return {label: {n: p.shape for n, p in DMD(cfg).named_parameters()} for label, cfg in PRESETS.items()}


def test_every_parameter_has_exactly_one_kind(drawn):
    for label, params in drawn.items():
        unmatched = {n: kind_of(n) for n in params if len(kind_of(n)) != 1}
        assert not unmatched, f"{label}: parameters without exactly one kind: {unmatched}"
    assert {k for params in drawn.values() for n in params for k in kind_of(n)} == set(KINDS)  # every kind occurs


def check_uniform(values: torch.Tensor, std: float, what: str) -> None:
    """``values`` (pooled draws) look like ``U(-sqrt(3) std, sqrt(3) std)``: standard deviation, mean, support."""
    n, bound = values.numel(), math.sqrt(3.0) * std
    # Sampling error of the standard deviation of n uniform draws: relative sqrt(0.2 / n) (fourth moment 9/5 sigma^4).
    ratio = float(values.std()) / std
    assert abs(ratio - 1) <= SIGMAS * math.sqrt(0.2 / n), f"{what}: std {ratio:.4f} x the formula's ({n} values)"
    assert abs(float(values.mean())) <= SIGMAS * std / math.sqrt(n), f"{what}: mean {float(values.mean()):.3g}"
    top = float(values.abs().max())
    assert top <= bound * (1 + 1e-6), f"{what}: |value| {top:.4g} beyond the uniform's bound {bound:.4g}"
    if n >= 40:  # P(max |x| < b (1 - 20/n)) = (1 - 20/n)^n < e^-20 for a uniform
        assert top >= bound * (1 - 20 / n), f"{what}: max |value| {top:.4g} far inside the bound {bound:.4g}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_tensor_is_drawn_from_the_reference_initialiser(kind, drawn, shapes):
    pattern, init = KINDS[kind]
    pooled = []  # values in units of their formula's standard deviation, over every tensor of the kind
    for label, params in drawn.items():
        for name, values in params.items():
            if not re.search(pattern, name):
                continue
            what = f"{label}: {name} ({kind}, {init})"
            if init in ("zeros", "ones"):
                expected = torch.full_like(values, 0.0 if init == "zeros" else 1.0)
                assert torch.equal(values, expected), f"{what}: not all {init}"
                continue
            std = expected_std(init, name, shapes[label])
            check_uniform(values, std, what)
            pooled.append(values.flatten() / std)
    if pooled:
        check_uniform(torch.cat(pooled), 1.0, f"{kind}, every tensor pooled")
