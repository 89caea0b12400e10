"""Compatibility with the public reference implementation (mdswyz/DMD).

* :func:`config_from_args` / :func:`config_from_json`: a :class:`DMDConfig` from
  the reference's hyper-parameters.
* :func:`load_state_dict`: its checkpoints (and GD-Unit weights) into our
  modules, through one explicit name table, :func:`reference_name_map`.
* :func:`probe`: our forward pass, reported under the reference's names and
  tensor layouts, so the two can be compared tensor by tensor.
* :func:`reference_margin_loss`: the margin loss as the reference loops over
  anchors, kept as the executable definition for tests and benchmarks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import torch

from .config import MODALITIES, SEQ_LENS, BertSpec, DMDConfig, TrainConfig
from .losses import margin_loss, orthogonality_loss
from .model import CROSS_SOURCES, DMD

log = logging.getLogger(__name__)

_LOW = {"l": "L", "v": "V", "a": "A"}

# Buffers of the reference's Transformers (and of older BERT checkpoints) that carry no learned value.
IGNORED_SUFFIXES = (".version", ".embed_positions._float_tensor", "embeddings.position_ids")
# Layers of the reference that no loss reaches, which dmd_core does not build: the projections of the
# private features (proj_cosine_*, whose outputs proj_s_* nothing reads) and BERT's pooler. Their keys
# are ignored on purpose (reported by load_state_dict), and probe() has no proj_s_* outputs.
UNBUILT_PREFIXES = ("proj_cosine_", "text_model.model.pooler.")
UNBUILT_OUTPUTS = ("proj_s_l", "proj_s_v", "proj_s_a")


def _prefix_table() -> dict[str, str]:
    """Reference parameter-name prefix -> ``dmd_core`` prefix. The one name map."""
    table = {
        "text_model.model.": "text_encoder.bert.",
        "encoder_c.": "shared.",
        "proj1_c.": "fusion_head.proj1.",
        "proj2_c.": "fusion_head.proj2.",
        "out_layer_c.": "fusion_head.out.",
        "weight_c.": "final_gate_c.",
        "proj1.": "final_head.proj1.",
        "proj2.": "final_head.proj2.",
        "out_layer.": "final_head.out.",
    }
    for r, m in _LOW.items():
        table.update({
            f"proj_{r}.": f"proj.{m}.",
            f"encoder_s_{r}.": f"private.{m}.",
            f"decoder_{r}.": f"decoder.{m}.",
            f"align_c_{r}.": f"shared_sim.{m}.",
            f"proj1_{r}_low.": f"homo_heads.{m}.proj1.",
            f"proj2_{r}_low.": f"homo_heads.{m}.proj2.",
            f"out_layer_{r}_low.": f"homo_heads.{m}.out.",
            f"self_attentions_c_{r}.": f"shared_attn.{m}.",
            f"trans_{r}_mem.": f"memory.{m}.",
            f"proj1_{r}_high.": f"hetero_heads.{m}.proj1.",
            f"proj2_{r}_high.": f"hetero_heads.{m}.proj2.",
            f"out_layer_{r}_high.": f"hetero_heads.{m}.out.",
            f"weight_{r}.": f"final_gates.{m}.",
        })  # fmt: skip
        for n in CROSS_SOURCES[m]:
            table[f"trans_{r}_with_{n.lower()}."] = f"cross.{m}{n}."
    return table


PREFIXES = _prefix_table()


def reference_name_map(keys) -> tuple[dict[str, str], list[str], list[str]]:
    """Map reference state-dict ``keys`` to our names.

    Returns ``(mapping, ignored, unknown)``: ``mapping`` reference key -> our key;
    ``ignored`` value-less buffers and the layers dmd_core does not build (:data:`UNBUILT_PREFIXES`);
    ``unknown`` keys no table entry matches. Every key is in exactly one of the three.
    """
    mapping, ignored, unknown = {}, [], []
    for key in keys:
        if key.endswith(IGNORED_SUFFIXES) or key.startswith(UNBUILT_PREFIXES):
            ignored.append(key)
            continue
        prefix = max((p for p in PREFIXES if key.startswith(p)), key=len, default=None)
        if prefix is None:
            unknown.append(key)
        else:
            mapping[key] = PREFIXES[prefix] + key[len(prefix) :]
    return mapping, ignored, unknown


def _strip_module(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` prefix left by ``DataParallel``."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_state_dict(
    model: DMD,
    state_dict: Mapping[str, torch.Tensor],
    homo: Mapping[str, torch.Tensor] | None = None,
    hetero: Mapping[str, torch.Tensor] | None = None,
) -> list[str]:
    """Load a reference DMD state dict (and optionally its GD-Units) into ``model``.

    Strict: raises ``KeyError`` listing every reference key that maps to nothing
    (or to a parameter we do not have), every parameter of ours left without a
    value, and every shape mismatch. GD-Unit parameters may stay untouched only
    when ``homo``/``hetero`` are not given. Returns the reference keys ignored on
    purpose (value-less buffers, the layers of :data:`UNBUILT_PREFIXES`), also logged.
    """
    ours = model.state_dict()
    mapping, ignored, unknown = reference_name_map(_strip_module(state_dict).keys())
    source = {f"reference[{k!r}]": (mapping[k], v) for k, v in _strip_module(state_dict).items() if k in mapping}
    for name, gd_sd in (("homo", homo), ("hetero", hetero)):
        if gd_sd is not None:
            for k, v in gd_sd.items():
                source[f"{name}[{k!r}]"] = (f"{name}_gd.{k}", v)
    problems = [f"unused reference key {k!r} (no entry in the name map)" for k in unknown]
    new, seen = {}, set()
    for label, (target, value) in source.items():
        if target not in ours:
            problems.append(f"unused {label}: would map to {target!r}, which the model does not have")
        elif tuple(ours[target].shape) != tuple(value.shape):
            problems.append(f"{label} -> {target!r}: shape {tuple(value.shape)} != {tuple(ours[target].shape)}")
        elif target in seen:
            problems.append(f"{label} -> {target!r}: already filled by another key")
        else:
            new[target] = value
            seen.add(target)
    for key in ours:
        if key in seen:
            continue
        gd = key.split(".", 1)[0]
        if (gd == "homo_gd" and homo is None) or (gd == "hetero_gd" and hetero is None):
            new[key] = ours[key]
        else:
            problems.append(f"missing: model parameter {key!r} has no value in the reference state dict")
    if problems:
        raise KeyError("reference state dict does not fit this model:\n  " + "\n  ".join(problems))
    model.load_state_dict(new, strict=True)
    unbuilt = [k for k in ignored if k.startswith(UNBUILT_PREFIXES)]
    if unbuilt:
        log.info("reference checkpoint: %d weights of layers no loss uses (%s) ignored: not built by dmd_core",
                 len(unbuilt), ", ".join(sorted({k.split(".")[0] if k.startswith("proj_") else "BERT pooler"
                                                 for k in unbuilt})))  # fmt: skip
    return ignored


# ---- configs -------------------------------------------------------------------------------------------------


def config_from_args(
    args: Mapping[str, Any], seq_lens_LVA: tuple[int, int, int], bert_config: Mapping[str, Any] | None = None
) -> DMDConfig:
    """A :class:`DMDConfig` from the reference's hyper-parameters.

    ``args``: keys as in the reference's ``config.json`` (``feature_dims``
    ordered L, A, V; ``dst_feature_dim_nheads``; ``conv1d_kernel_size_{l,a,v}``;
    dropouts; ``use_bert``; ...). ``seq_lens_LVA``: sequence lengths L, V, A.
    ``bert_config``: a ``BertConfig`` dict for a randomly initialised BERT;
    without it, ``use_bert`` loads ``args["pretrained"]`` (default
    ``bert-base-uncased``, a hub name or a local folder).
    """
    try:
        dim_l, dim_a, dim_v = args["feature_dims"]
        d, heads = args["dst_feature_dim_nheads"]
    except KeyError as err:
        raise KeyError(f"config_from_args: missing reference key {err}") from None
    bert = None
    if args.get("use_bert", False):
        finetune = bool(args.get("use_finetune", True))
        if bert_config is not None:
            bert = BertSpec(name_or_path=None, config=dict(bert_config), finetune=finetune)
            dim_l = int(bert_config["hidden_size"])
        else:
            bert = BertSpec(name_or_path=str(args.get("pretrained", "bert-base-uncased")), finetune=finetune)
    return DMDConfig(
        dataset=str(args.get("dataset_name", "mosi")).lower(),
        aligned=bool(args.get("need_data_aligned", True)),
        seq_lens=tuple(seq_lens_LVA),
        feature_dims=(int(dim_l), int(dim_v), int(dim_a)),
        d=int(d), heads=int(heads), nlevels=int(args["nlevels"]),
        kernel_sizes=(int(args["conv1d_kernel_size_l"]), int(args["conv1d_kernel_size_v"]),
                      int(args["conv1d_kernel_size_a"])),
        text_dropout=float(args["text_dropout"]), attn_dropout=float(args["attn_dropout"]),
        attn_dropout_a=float(args["attn_dropout_a"]), attn_dropout_v=float(args["attn_dropout_v"]),
        embed_dropout=float(args["embed_dropout"]), relu_dropout=float(args["relu_dropout"]),
        res_dropout=float(args["res_dropout"]), output_dropout=float(args["output_dropout"]),
        attn_mask=bool(args.get("attn_mask", True)), bert=bert,
    )  # fmt: skip


def reference_args(path: str, dataset: str, aligned: bool, model_name: str = "dmd") -> dict[str, Any]:
    """The flat args dict the reference builds from ``config.json`` for ``dataset``.

    Merges ``datasetCommonParams[dataset][aligned|unaligned]``, the model's
    ``commonParams`` and its ``datasetParams[dataset]`` (later wins), as the
    reference's config loader does.
    """
    with open(path) as f:
        raw = json.load(f)
    dataset = dataset.lower()
    where = f"{path}"
    try:
        common = raw["datasetCommonParams"][dataset]
    except KeyError:
        raise KeyError(f"{where}: no datasetCommonParams[{dataset!r}]") from None
    section = common.get("aligned" if aligned else "unaligned", common)
    models = {k.lower(): v for k, v in raw.items() if isinstance(v, dict) and "commonParams" in v}
    if model_name.lower() not in models:
        raise KeyError(f"{where}: no model section {model_name!r} (found {sorted(models)})")
    model = models[model_name.lower()]
    if dataset not in model.get("datasetParams", {}):
        raise KeyError(f"{where}: no {model_name}.datasetParams[{dataset!r}]")
    args = {**section, **model["commonParams"], **model["datasetParams"][dataset]}
    args.setdefault("dataset_name", dataset)
    args["need_data_aligned"] = aligned
    return args


def config_from_json(
    path: str,
    dataset: str,
    aligned: bool,
    seq_lens_LVA: tuple[int, int, int] | None = None,
    bert_config: Mapping[str, Any] | None = None,
) -> DMDConfig:
    """:func:`config_from_args` on the reference's ``config.json``.

    The sequence lengths written in MMSA config files are stale; by default the
    official lengths of the processed files are used (or ``seq_lens_LVA``).
    """
    args = reference_args(path, dataset, aligned)
    lens = seq_lens_LVA or SEQ_LENS[(dataset.lower(), aligned)]
    return config_from_args(args, lens, bert_config)


def train_config_from_args(args: Mapping[str, Any], **overrides: Any) -> TrainConfig:
    """The optimisation recipe from the reference's args (``weight_decay`` is ignored, as the reference does)."""
    fields = dict(
        batch_size=int(args.get("batch_size", 16)), lr=float(args.get("learning_rate", 1e-4)),
        accumulation=int(args.get("update_epochs", 10)), grad_clip=float(args.get("grad_clip", 0.6)),
        plateau_patience=int(args.get("patience", 5)), early_stop=int(args.get("early_stop", 10)),
    )  # fmt: skip
    fields.update(overrides)
    return TrainConfig(**fields)


# ---- probing -------------------------------------------------------------------------------------------------


@torch.no_grad()
def probe(
    model: DMD, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """Run ``model`` in eval mode and report what the reference reports, under its names and layouts.

    Returns ``{"outputs": {...}, "gd": {...}, "margin_loss": t, "ort_loss_batch_axis": t}``
    like the fixtures (less :data:`UNBUILT_OUTPUTS`): ``s_*``/``c_*`` ``(T, B, d)``; ``origin_*``, ``recon_*``,
    ``s_*_r`` ``(B, d, T)``; edges ``(6, B)``; raw edges summed over the batch ``(6, 1)``.
    """
    was_training = model.training
    model.eval()
    try:
        out = model(text, audio, vision)
    finally:
        model.train(was_training)
    dec = out.decoupled
    o: dict[str, torch.Tensor] = {}
    for i, m in enumerate(MODALITIES):
        r = m.lower()
        o[f"logits_{r}_homo"] = out.homo.logits[i]
        o[f"repr_{r}_homo"] = out.homo.reprs[i]
        o[f"origin_{r}"] = dec.x[m]
        o[f"s_{r}"] = dec.private[m].permute(2, 0, 1)
        o[f"c_{r}"] = dec.shared[m].permute(2, 0, 1)
        o[f"s_{r}_r"] = dec.private_cycle[m]
        o[f"recon_{r}"] = dec.recon[m]
        o[f"c_{r}_sim"] = dec.shared_sim[m]
        o[f"logits_{r}_hetero"] = out.hetero.logits[i]
        o[f"repr_{r}_hetero"] = out.hetero.reprs[i]
        o[f"last_h_{r}"] = out.hetero.hidden[i]
    o["logits_c"] = out.logit_c
    o["output_logit"] = out.prediction
    gd: dict[str, torch.Tensor] = {}
    for name, unit, branch, graph in (
        ("homo", model.homo_gd, out.homo, out.homo_graph),
        ("hetero", model.hetero_gd, out.hetero, out.hetero_graph),
    ):
        parts = unit.losses(branch.logits, branch.reprs, graph)
        gd[f"{name}_edges"] = graph.edges
        gd[f"{name}_edges_raw"] = graph.raw_sum
        gd[f"{name}_loss_reg_logit_repr"] = torch.stack([parts.reg, parts.logit, parts.repr])
    return {
        "outputs": o,
        "gd": gd,
        "margin_loss": margin_loss(torch.stack([dec.shared_sim[m] for m in MODALITIES]), labels),
        "ort_loss_batch_axis": orthogonality_loss(dec, "batch"),
    }
