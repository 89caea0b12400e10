"""Figures for the book: one colour per modality, the same in every chapter.

Every function draws on a Matplotlib ``Axes`` it is given (or a new figure)
and returns the ``Figure``, so a notebook can ``glue`` it with a caption.
Nothing here computes results: the numbers come from :mod:`dmd_core.analysis`
or from a run folder. Part of the book's own package (``book/``), not of ``dmd_core``.

* :data:`PALETTE`: modality -> colour (Okabe-Ito, readable by colour-blind
  readers). :func:`edge_style` derives an edge's colour from its teacher.
* :func:`architecture`: our own drawing of the DMD network.
* :func:`edge_curves`: the paper's edge figure (six normalised edges against
  epochs); :func:`edge_graph`: the mean graph as a directed graph whose edge
  widths are the weights.
* Smaller helpers for label histograms, bar charts, heatmaps and loss curves.
* Chapters 1-3: :func:`probe_figure` (the ridge probes), :func:`factor_figure` (the planted factors in the
  shared and private features), :func:`gd_unit_figure` (one sample's GD-Unit, drawn with the same nodes and
  arrows as :func:`edge_graph`) and :func:`attention_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from dmd_core.analysis import MODALITY_NAMES
from dmd_core.config import MODALITIES
from dmd_core.distill import EDGE_NAMES

from .stats import estimate

# One colour per modality (Okabe-Ito): language blue, vision green, audio vermillion.
PALETTE: dict[str, str] = {"L": "#0072B2", "V": "#009E73", "A": "#D55E00"}
NEUTRAL = "#7F7F7F"  # shared / modality-free things (the shared encoder, the fusion)
STUDENT_LINESTYLE: dict[str, str] = {"L": "-", "V": "--", "A": ":"}

# Legible as rendered. The book saves figures at DPI pixels per inch and the page shows a PNG pixel as a CSS
# pixel, in a text column COLUMN_PX wide (sphinx-book-theme in a 1280 px window: 80 % of the page beside
# the navigation, less the 17 rem "on this page" sidebar and 2 rem of padding on each side); a wider figure
# is shrunk to the column. Every text must stay at least MIN_FONT_PT points as shown
# (tests/test_plots.py), so a figure is at most COLUMN_PX / DPI (6.25) inches wide or has larger text.
DPI = 110
COLUMN_PX = 688
MIN_FONT_PT = 9.0


def set_style() -> None:
    """The book's Matplotlib defaults: white grid, constrained layout, and text of at least :data:`MIN_FONT_PT`
    points everywhere (ticks, legends and colour bars included) at :data:`DPI`."""
    plt.rcParams.update({
        "figure.dpi": DPI, "savefig.dpi": DPI, "figure.autolayout": False, "figure.constrained_layout.use": True,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9.5, "ytick.labelsize": 9.5,
        "legend.fontsize": 9.5, "legend.title_fontsize": 10, "figure.titlesize": 11, "figure.labelsize": 10,
        "legend.frameon": False,
    })  # fmt: skip


def edge_parts(edge: str) -> tuple[str, str]:
    """``"L->V"`` -> ``("L", "V")`` (teacher, student)."""
    teacher, _, student = edge.partition("->")
    if teacher not in PALETTE or student not in PALETTE or teacher == student:
        raise ValueError(f"edge_parts: expected an edge such as 'L->V', found {edge!r}")
    return teacher, student


def edge_style(edge: str) -> dict[str, str]:
    """Line style of an edge: the teacher's colour, a dash pattern per student."""
    teacher, student = edge_parts(edge)
    return {"color": PALETTE[teacher], "linestyle": STUDENT_LINESTYLE[student]}


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax  # type: ignore[return-value]


def _spread(values: Sequence[float], gap: float) -> np.ndarray:
    """Move sorted label positions apart so that neighbours are at least ``gap`` apart."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values)
    out = values[order].copy()
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + gap)
    shift = (out - values[order]).mean()  # re-centre so labels stay near their lines
    out -= shift
    result = np.empty_like(out)
    result[order] = out
    return result


# --------------------------------------------------------------------------- architecture


def _box(ax: Axes, x: float, y: float, w: float, h: float, text: str, color: str, fill: float = 0.18,
         fontsize: float = 9.5, style: str = "-", **text_kw) -> None:  # fmt: skip
    face = (*plt.matplotlib.colors.to_rgb(color), fill)
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.06", linewidth=1.2,
                                edgecolor=color, facecolor=face, linestyle=style))  # fmt: skip
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, **text_kw)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], color: str = "black",
           style: str = "-", rad: float = 0.0, width: float = 1.0) -> None:  # fmt: skip
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, color=color, linewidth=width,
                                 linestyle=style, connectionstyle=f"arc3,rad={rad}", shrinkA=1, shrinkB=1))  # fmt: skip


def architecture(ax: Axes | None = None) -> Figure:
    """Our drawing of DMD, top to bottom: projection, decoupling, the two branches with their GD-Units, fusion.

    Columns are the modalities (L, V, A, in :data:`PALETTE` colours); grey boxes belong to no
    single modality. The three grey "shared" boxes are one encoder (the same weights). Drawn in
    inches (6 x 7.6, the page's column) so that every label is at least 9 pt as shown.
    """
    fig, ax = _axes(ax, (6.0, 7.6))
    ax.set_xlim(0, 6.0)
    ax.set_ylim(0, 7.6)
    ax.axis("off")
    ax.grid(False)
    cols = {"L": 1.0, "V": 3.0, "A": 5.0}  # centre of each modality's column
    inputs = {"L": "language (BERT)", "V": "vision (face)", "A": "audio (voice)"}
    for m, x in cols.items():
        c = PALETTE[m]
        _box(ax, x - 0.85, 7.0, 1.7, 0.45, inputs[m], c)
        _arrow(ax, (x, 7.0), (x, 6.62), c)
        _box(ax, x - 0.85, 6.15, 1.7, 0.45, f"temporal conv: $x_{m}$", c)
        _arrow(ax, (x - 0.3, 6.15), (x - 0.45, 5.67), c)
        _arrow(ax, (x + 0.3, 6.15), (x + 0.45, 5.67), c)
        _box(ax, x - 0.92, 5.2, 0.86, 0.45, f"private $s_{m}$", c)
        _box(ax, x + 0.06, 5.2, 0.86, 0.45, f"shared $c_{m}$", NEUTRAL)
    ax.text(3.0, 4.9, "private encoders $E_m$: one per modality; shared encoder $E_c$ (grey): one for all three",
            ha="center", va="center", fontsize=9, color="#444444", zorder=5,
            bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none"))  # fmt: skip
    # The two branches: heterogeneous (private features) on the left, homogeneous (shared) on the right.
    _box(ax, 0.05, 2.35, 2.9, 2.25, "", NEUTRAL, fill=0.06)
    _box(ax, 3.05, 2.35, 2.9, 2.25, "", NEUTRAL, fill=0.06)
    ax.text(1.5, 4.38, "heterogeneous branch", ha="center", va="center", fontsize=9.5, weight="bold")
    ax.text(4.5, 4.38, "homogeneous branch", ha="center", va="center", fontsize=9.5, weight="bold")
    ax.text(1.5, 4.1, "on the private $s_m$", ha="center", va="center", fontsize=9)
    ax.text(4.5, 4.1, "on the shared $c_m$", ha="center", va="center", fontsize=9)
    for m, x in cols.items():
        _arrow(ax, (x - 0.49, 5.2), (1.5 + 0.25 * (x - 3.0), 4.62), PALETTE[m], width=0.9)
        _arrow(ax, (x + 0.49, 5.2), (4.5 + 0.25 * (x - 3.0), 4.62), NEUTRAL, width=0.9)
    ax.text(1.5, 3.8, "cross-modal Transformers", ha="center", va="center", fontsize=9)
    for i, m in enumerate(MODALITIES):
        a, b = (n for n in MODALITIES if n != m)
        _box(ax, 0.15 + 0.93 * i, 3.3, 0.85, 0.38, f"{m} ← {a},{b}", PALETTE[m], fontsize=9)
        _box(ax, 3.15 + 0.93 * i, 3.3, 0.85, 0.38, f"head $c_{m}$", PALETTE[m], fontsize=9)
    ax.text(4.5, 3.8, "a head per modality", ha="center", va="center", fontsize=9)
    _box(ax, 0.15, 2.45, 2.7, 0.65, "HeteroGD-Unit\nprior: L→V, L→A, V→A", NEUTRAL, fill=0.3, fontsize=9)
    _box(ax, 3.15, 2.45, 1.45, 0.65, "HomoGD-Unit\nprior: L→V, L→A", NEUTRAL, fill=0.3, fontsize=9)
    _box(ax, 4.7, 2.45, 1.15, 0.65, "self-attention\n→ $c_f$", NEUTRAL, fontsize=9)
    # Fusion and prediction.
    _arrow(ax, (1.5, 2.35), (2.2, 1.92), NEUTRAL)
    _arrow(ax, (4.5, 2.35), (3.8, 1.92), NEUTRAL)
    _box(ax, 1.2, 1.3, 3.6, 0.6, "fusion of $\\sigma(g_L), \\sigma(g_V), \\sigma(g_A), \\sigma(c_f)$ → $\\hat y$",
         NEUTRAL)  # fmt: skip
    notes = ("losses: the task loss (L1 on 8 predictions: $\\hat y$, 3 homo, 3 hetero, the $c_f$ head);\n"
             "decoupling: reconstruction $D_m([s_m, c_m]) \\approx x_m$, cycle $E_m(D_m(\\cdot)) \\approx s_m$,\n"
             "orthogonality of $s_m$ and $c_m$, margin on $c_m$; each GD-Unit: edge-weighted\n"
             "distillation and a prior regulariser")  # fmt: skip
    ax.text(3.0, 0.55, notes, ha="center", va="center", fontsize=9, style="italic", linespacing=1.35,
            bbox=dict(boxstyle="round", facecolor="white", edgecolor=NEUTRAL, linestyle="--"))  # fmt: skip
    return fig


# --------------------------------------------------------------------------- data


def label_histogram(labels: Mapping[str, np.ndarray], ax: Axes | None = None, bins: int = 25) -> Figure:
    """Histograms of the sentiment labels per split (``{"train": (N,), ...}``), as densities."""
    fig, ax = _axes(ax, (5.8, 3.0))
    edges = np.linspace(-3, 3, bins + 1)
    colors = dict(zip(labels, ["#444444", "#999999", "#CC79A7", "#E69F00"]))
    for name, y in labels.items():
        ax.hist(np.asarray(y).ravel(), bins=edges, density=True, histtype="step", linewidth=1.6,
                label=f"{name} (n={len(y)})", color=colors[name])  # fmt: skip
    ax.set_xlabel("sentiment label")
    ax.set_ylabel("density")
    ax.legend()
    return fig


def modality_bars(table: pd.DataFrame, metric: str, ax: Axes | None = None, reference: float | None = None,
                  reference_label: str = "predict the mean", digits: int = 2) -> Figure:  # fmt: skip
    """Horizontal bars of ``table[metric]``, one per row (first on top); rows named by modality get its colour.

    ``table`` is indexed by modality (``"L"``, ``"V"``, ``"A"``, or anything else,
    drawn grey). ``reference`` draws a dashed line (e.g. predicting the training mean).
    """
    fig, ax = _axes(ax, (3.0, 2.6))
    names = [str(i) for i in table.index]
    colors = [PALETTE.get(n, NEUTRAL) for n in names]
    labels = [MODALITY_NAMES.get(n, n) for n in names]
    values = table[metric].to_numpy(dtype=float)
    y = np.arange(len(names))[::-1]
    ax.barh(y, values, color=colors)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:.{digits}f}", ha="left", va="center", fontsize=9.5)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1.25 * max(float(np.nanmax(values)), reference or 0.0))
    if reference is not None:
        ax.axvline(reference, color="black", linestyle="--", linewidth=1, label=reference_label)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), handlelength=1.8)
    ax.set_xlabel(metric)
    ax.grid(axis="y", visible=False)
    return fig


def feature_norms(series: Mapping[str, Mapping[str, np.ndarray]], ylabel: str = "feature norm") -> Figure:
    """One panel per layout (e.g. aligned, unaligned): each modality's feature norm over time for one sample.

    Zero norms are padding (and, in aligned files, the ``[CLS]``/``[SEP]`` positions).
    """
    fig, axes = plt.subplots(len(series), 1, figsize=(5.8, 2.3 * len(series)), squeeze=False)
    for ax, (title, norms) in zip(axes[:, 0], series.items()):
        for m, values in norms.items():
            ax.plot(np.arange(len(values)), values, color=PALETTE[m], linewidth=1.3,
                    label=f"{MODALITY_NAMES[m]} ({len(values)} steps)")  # fmt: skip
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1][0].set_xlabel("time step")
    return fig


# --------------------------------------------------------------------------- decoupling


def similarity_heatmaps(matrices: Mapping[str, pd.DataFrame], vmin: float = -1.0, vmax: float = 1.0) -> Figure:
    """Annotated heatmaps of square similarity tables (e.g. before and after training), two per row."""
    n = len(matrices)
    ncols = min(n, 2)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.75 * ncols + 0.4, 3.0 * nrows), squeeze=False)
    for ax, (title, mat) in zip(axes.ravel(), matrices.items()):
        im = ax.imshow(mat.to_numpy(), vmin=vmin, vmax=vmax, cmap="RdBu_r")
        ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=90)
        ax.set_yticks(range(mat.shape[0]), mat.index)
        for (i, j), v in np.ndenumerate(mat.to_numpy()):
            ax.text(j, i, f"{v:.1f}".replace("-", "\u2212"), ha="center", va="center", fontsize=9,
                    color="white" if abs(v) > 0.6 * vmax else "black")  # fmt: skip
        ax.set_title(title)
        ax.grid(False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=list(axes.ravel()), shrink=0.8, label="cosine similarity")
    return fig


# --------------------------------------------------------------------------- graph distillation


def edges_heatmap(edges: np.ndarray, ax: Axes | None = None, title: str = "", prior: Sequence[float] | None = None,
                  max_samples: int = 32, xlabel: str = "sample in the batch") -> Figure:  # fmt: skip
    """Normalised edges ``(6, B)`` of one batch as a heatmap, one column per sample.

    ``prior`` (six values) adds a column ``prior`` on the right for comparison.
    """
    edges = np.asarray(edges)[:, :max_samples]
    fig, ax = _axes(ax, (6.0, 2.8))
    data = edges if prior is None else np.concatenate([edges, np.full((6, 1), np.nan), np.asarray(prior)[:, None]], 1)
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0)
    ax.set_yticks(range(6), EDGE_NAMES)
    for tick, edge in zip(ax.get_yticklabels(), EDGE_NAMES):
        tick.set_color(PALETTE[edge_parts(edge)[0]])
    ticks = list(range(0, edges.shape[1], max(1, edges.shape[1] // 8)))
    labels = [str(t) for t in ticks]
    if prior is not None:
        ticks.append(data.shape[1] - 1)
        labels.append("prior")
    ax.set_xticks(ticks, labels)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="edge weight")
    return fig


# Six small multiples of one GD-Unit: columns the teacher, rows its two students.
EDGE_GRID: tuple[tuple[str, ...], ...] = (("L->V", "V->L", "A->L"), ("L->A", "V->A", "A->V"))


def edge_curves(runs: Mapping[object, pd.DataFrame], prior: Mapping[str, float] | Sequence[float] | None = None,
                title: str = "", best: Mapping[object, int] | None = None) -> Figure:  # fmt: skip
    """The paper's edge figure as small multiples: one panel per edge of one GD-Unit, its weight against the epoch.

    ``runs``: seed (or any label) -> DataFrame indexed by epoch with columns :data:`EDGE_NAMES` (e.g.
    :func:`dmd_core.analysis.edge_history`). Each seed is a thin line, their mean a thick one, in the
    teacher's colour; a dotted line marks 1/6, where every edge starts, and a dashed one the ``prior``.
    ``best``: seed -> its best-validation epoch, marked on the seed's line.
    """
    if isinstance(prior, (Mapping, pd.Series)):  # by edge name
        prior = [float(prior[e]) for e in EDGE_NAMES]
    frames = list(runs.values())
    fig, axes = plt.subplots(2, 3, figsize=(6.2, 4.3), sharex=True, sharey=True, layout="constrained")
    for row, edges in zip(axes, EDGE_GRID):
        for ax, edge in zip(row, edges):
            color = PALETTE[edge_parts(edge)[0]]
            for label, frame in runs.items():
                epochs = frame.index.to_numpy()
                ax.plot(epochs, frame[edge].to_numpy(), color=color, linewidth=0.8, alpha=0.45)
                if best is not None and label in best and best[label] in frame.index:
                    ax.plot([best[label]], [frame.loc[best[label], edge]], "o", color=color, markersize=3.5)
            mean = pd.concat([f[edge] for f in frames], axis=1).mean(axis=1)
            ax.plot(mean.index.to_numpy(), mean.to_numpy(), color=color, linewidth=2.2)
            ax.axhline(1 / 6, color="black", linestyle=":", linewidth=0.9)
            if prior is not None:
                ax.axhline(prior[list(EDGE_NAMES).index(edge)], color=color, linestyle="--", linewidth=1.0)
            ax.set_title(edge.replace("->", " \u2192 "), color=color)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("edge weight")
    if title:
        fig.suptitle(title)
    return fig


def _nodes(ax: Axes, pos: Mapping[str, tuple[float, float]], radius: float, fontsize: float) -> None:
    """The three modalities as filled circles in their colours, each with its letter."""
    for m, (x, y) in pos.items():
        ax.add_patch(Circle((x, y), radius, facecolor=PALETTE[m], edgecolor="white", zorder=3))
        ax.text(x, y, m, ha="center", va="center", color="white", fontsize=fontsize, weight="bold", zorder=4)


def _arc(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    color: str,
    width: float,
    head: float,
    shrink: float,
    label: str,
    fontsize: float,
    rad: float,
    label_out: float = 1.0,
    alpha: float = 0.85,
) -> None:
    """A curved arrow ``start -> end`` (matplotlib's ``arc3``) with ``label`` in a white box at its middle, pushed
    ``label_out`` times the curve's own bulge away from the chord."""
    ax.add_patch(FancyArrowPatch(start, end, connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", mutation_scale=head,
                                 linewidth=width, color=color, shrinkA=shrink, shrinkB=shrink, alpha=alpha,
                                 zorder=2))  # fmt: skip
    # The middle of the quadratic Bezier curve through arc3's control point lies half the bulge from the chord.
    (x1, y1), (x2, y2) = start, end
    dx, dy = x2 - x1, y2 - y1
    lx, ly = (x1 + x2) / 2 + 0.5 * rad * dy * label_out, (y1 + y2) / 2 - 0.5 * rad * dx * label_out
    ax.text(lx, ly, label, ha="center", va="center", fontsize=fontsize, color=color, zorder=5, linespacing=1.1,
            bbox=dict(boxstyle="round,pad=0.12", facecolor="white", edgecolor="none", alpha=0.9))  # fmt: skip


def _graph_frame(ax: Axes, xlim: tuple[float, float], ylim: tuple[float, float], title: str) -> None:
    """A graph's axes: equal scales, no frame, ticks or grid."""
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.grid(False)
    ax.set_title(title)


def edge_graph(weights: Mapping[str, float] | Sequence[float], ax: Axes | None = None, title: str = "",
               max_width: float = 9.0, scale: float | None = None) -> Figure:  # fmt: skip
    """The mean graph as a directed graph: nodes L, V, A; arrow ``i -> j`` of width proportional to its weight.

    ``weights``: six values in :data:`EDGE_NAMES` order, or a mapping edge -> weight.
    Arrows take the teacher's colour and are labelled with their weight.
    ``scale``: the weight drawn at ``max_width`` (defaults to the largest weight).
    """
    if not isinstance(weights, Mapping):
        weights = dict(zip(EDGE_NAMES, [float(w) for w in weights]))
    fig, ax = _axes(ax, (3.6, 3.4))
    pos = {"L": (0.0, 1.0), "V": (-0.95, -0.6), "A": (0.95, -0.6)}
    scale = scale or max(weights.values())
    _nodes(ax, pos, 0.25, 13)
    for edge in EDGE_NAMES:
        teacher, student = edge_parts(edge)
        w = weights[edge]
        _arc(ax, pos[teacher], pos[student], PALETTE[teacher], width=max(0.4, max_width * w / scale),
             head=10 + 2 * max_width * w / scale, shrink=20, label=f"{w:.2f}", fontsize=9.5, rad=0.22,
             label_out=1.5)  # fmt: skip
    _graph_frame(ax, (-1.45, 1.45), (-1.1, 1.45), title)
    return fig


def grouped_edge_bars(table: pd.DataFrame, ax: Axes | None = None, title: str = "",
                      errors: pd.DataFrame | None = None) -> Figure:  # fmt: skip
    """Bars of the six edges (columns :data:`EDGE_NAMES`) for each row of ``table`` (e.g. sentiment classes).

    ``errors``: the same shape as ``table``, half-widths of the whiskers (e.g. 95% intervals over seeds).
    """
    fig, ax = _axes(ax, (6.2, 3.0))
    groups = list(table.index)
    width = 0.8 / len(EDGE_NAMES)
    x = np.arange(len(groups))
    for k, edge in enumerate(EDGE_NAMES):
        teacher, student = edge_parts(edge)
        yerr = None if errors is None else errors[edge].to_numpy(dtype=float)
        ax.bar(x + (k - 2.5) * width, table[edge].to_numpy(), width, yerr=yerr, label=edge.replace("->", "\u2192"),
               color=PALETTE[teacher], hatch={"L": "", "V": "//", "A": ".."}[student], edgecolor="white",
               error_kw={"elinewidth": 0.8, "ecolor": "black"})  # fmt: skip
    ax.axhline(1 / 6, color="black", linestyle=":", linewidth=0.8)
    ax.set_xticks(x, [str(g) for g in groups])
    ax.set_ylabel("mean edge weight")
    ax.set_title(title)
    ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14), handlelength=1.5, columnspacing=0.8)
    return fig


def attention_map(weights: np.ndarray, target: str, source: str, ax: Axes | None = None) -> Figure:
    """Cross-modal attention ``(T_target, T_source)``: which source steps each target step reads.

    Log colour scale (a query that sees ``n`` keys gives each about ``1/n``); masked keys are grey.
    """
    fig, ax = _axes(ax, (4.2, 3.6))
    weights = np.asarray(weights, dtype=float)
    shown = np.where(weights > 0, weights, np.nan)  # masked keys (weight 0) drawn grey
    cmap = plt.get_cmap("magma").with_extremes(bad="#DDDDDD")
    low = max(float(np.nanmin(shown)), 1e-4) if np.isfinite(shown).any() else 1e-4
    norm = mcolors.LogNorm(vmin=min(low, 0.5), vmax=max(float(np.nanmax(shown)), low * 10))
    im = ax.imshow(shown, aspect="auto", cmap=cmap, norm=norm, origin="lower")
    ax.set_xlabel(f"{MODALITY_NAMES[source]} time step (key/value)", color=PALETTE[source])
    ax.set_ylabel(f"{MODALITY_NAMES[target]} time step (query)", color=PALETTE[target])
    ax.set_title(f"{target} ← {source}")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="attention weight (log scale)")
    return fig


# --------------------------------------------------------------------------- training


def loss_curves(history: pd.DataFrame | Mapping[object, pd.DataFrame], parts: Sequence[str], prefix: str = "train_",
                ncols: int = 3, valid: str | None = None, titles: Mapping[str, str] | None = None) -> Figure:  # fmt: skip
    """Small multiples: one panel per loss part (column ``prefix + part``) against the epoch.

    ``history``: one run's history, or several (e.g. seed -> history), drawn as one thin line each.
    ``valid`` names a validation column drawn dashed in the first panel; ``titles`` renames the panels.
    """
    histories = {"": history} if isinstance(history, pd.DataFrame) else dict(history)
    first = next(iter(histories.values()))
    parts = [p for p in parts if prefix + p in first]
    ncols = min(ncols, len(parts))
    nrows = int(np.ceil(len(parts) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.07 * ncols, 1.9 * nrows + 0.4), squeeze=False, sharex=True)
    single = len(histories) == 1
    for ax, part in zip(axes.ravel(), parts):
        for k, frame in enumerate(histories.values()):
            epochs = frame["epoch"] if "epoch" in frame else frame.index
            ax.plot(epochs, frame[prefix + part], color="black", linewidth=1.5 if single else 0.9,
                    alpha=1.0 if single else 0.6, label="train" if k == 0 else None)  # fmt: skip
            if valid is not None and part == parts[0] and valid in frame:
                ax.plot(epochs, frame[valid], color=PALETTE["A"], linestyle="--", linewidth=1.5 if single else 0.9,
                        label="validation" if k == 0 else None)  # fmt: skip
        if valid is not None and part == parts[0]:
            ax.legend()
        ax.set_title((titles or {}).get(part, part))
    for ax in axes.ravel()[len(parts) :]:
        ax.axis("off")
    fig.supxlabel("epoch")
    return fig


ABLATION_METRICS: dict[str, str] = {"Non0_acc_2": "Acc-2 (%)", "Non0_F1_score": "F1 (%)", "Mult_acc_7": "Acc-7 (%)",
                                    "MAE": "MAE (lower is better)", "Corr": "Corr"}  # fmt: skip


BASELINE_COLOR = "#CC79A7"  # Okabe-Ito reddish purple: a reference line that no modality owns


def ablation_bars(table: pd.DataFrame, metrics: Sequence[str] = tuple(ABLATION_METRICS),
                  baseline: Mapping[str, float] | None = None, baseline_label: str = "ridge, all modalities") -> Figure:  # fmt: skip
    """One panel per metric: a dot per variant (rows of ``table``) at its mean, whiskers its 95% interval over seeds.

    ``table`` has columns ``"<metric> mean"``, ``"<metric> lo"``, ``"<metric> hi"``
    (:func:`dmd_book.evidence.ablation_estimates`). ``baseline``: metric -> value (same units) drawn as a dashed
    line in every panel. Dots rather than bars, since each axis shows only the range of the values. The last
    panel holds the legend.
    """
    names = [str(i) for i in table.index]
    ncols = 3
    nrows = int(np.ceil((len(metrics) + 1) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2, 2.3 * nrows + 0.2), squeeze=False, layout="constrained")
    shades = ["#000000", "#6E6E6E", "#A8A8A8", "#C8C8C8"]
    markers = ["o", "s", "D", "^"]
    x = np.arange(len(names))
    for ax, metric in zip(axes.ravel(), metrics):
        means = table[f"{metric} mean"].to_numpy(float)
        lo = np.where(np.isfinite(table[f"{metric} lo"].to_numpy(float)), table[f"{metric} lo"].to_numpy(float), means)
        hi = np.where(np.isfinite(table[f"{metric} hi"].to_numpy(float)), table[f"{metric} hi"].to_numpy(float), means)
        for i, name in enumerate(names):
            ax.errorbar(x[i], means[i], yerr=[[means[i] - lo[i]], [hi[i] - means[i]]], fmt=markers[i % 4],
                        color=shades[i % 4], capsize=4, markersize=7, label=name)  # fmt: skip
        values = [*lo, *hi]
        if baseline is not None and metric in baseline:
            ax.axhline(float(baseline[metric]), color=BASELINE_COLOR, linestyle="--", linewidth=1.6,
                       label=baseline_label)  # fmt: skip
            values.append(float(baseline[metric]))
        span = max(values) - min(values) or abs(max(values)) or 1.0
        ax.set_ylim(min(values) - 0.15 * span, max(values) + 0.15 * span)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_xticks([])
        ax.set_title(ABLATION_METRICS.get(metric, metric))
    spare = axes.ravel()[len(metrics)]
    found = dict(zip(*reversed(axes.ravel()[0].get_legend_handles_labels())))  # label -> handle
    order = [label for label in [*names, baseline_label] if label in found]  # the variants first, then the baseline
    spare.axis("off")
    spare.legend([found[label] for label in order], order, loc="center", handlelength=1.6)
    for ax in axes.ravel()[len(metrics) + 1 :]:
        ax.axis("off")
    return fig


def seed_curves(histories: Mapping[str, pd.DataFrame], column: str, ax: Axes | None = None,
                ylabel: str | None = None, best: Mapping[str, int] | None = None) -> Figure:  # fmt: skip
    """One line per seed of ``column`` against the epoch; ``best`` (name -> epoch) rings each seed's best epoch."""
    fig, ax = _axes(ax, (6.0, 3.0))
    for name, history in histories.items():
        epochs = history["epoch"] if "epoch" in history else history.index
        (line,) = ax.plot(epochs, history[column], marker="o", markersize=3, linewidth=1.2, label=name)
        if best is not None and name in best:
            at = history.set_index("epoch")[column] if "epoch" in history else history[column]
            ax.plot([best[name]], [at.loc[best[name]]], "o", markersize=9, markerfacecolor="none",
                    markeredgecolor=line.get_color(), markeredgewidth=1.5)  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel or column)
    return fig


def interval_panels(panels: Mapping[str, pd.DataFrame], reference: float | None = None, xlabel: str = "",
                    colors: Mapping[str, str] | None = None, ncols: int = 3, reference_label: str | None = None,
                    titles: Mapping[str, str] | None = None, row_labels: Sequence[str] | None = None) -> Figure:  # fmt: skip
    """Small multiples of dots with 95% intervals: panel key -> DataFrame (rows: the same labels in every
    panel; columns ``mean``, ``lo``, ``hi``). ``reference`` draws a dotted vertical line (e.g. 1/3 or 0);
    ``colors``: panel key -> colour (e.g. a teacher's); ``titles``: panel key -> the title shown (default the key);
    ``row_labels``: a label per row of panels, shown left of its first panel (e.g. the GD-Unit)."""
    shown, titles = titles, list(panels)
    ncols = min(ncols, len(titles))
    nrows = int(np.ceil(len(titles) / ncols))
    labels = [str(i) for i in next(iter(panels.values())).index]
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2, (0.3 * len(labels) + 0.9) * nrows + 0.3), squeeze=False,
                             sharey=True, sharex=True, layout="constrained")  # fmt: skip
    y = np.arange(len(labels))[::-1]
    for ax, title in zip(axes.ravel(), titles):
        frame = panels[title]
        color = (colors or {}).get(title, "black")
        mean = frame["mean"].to_numpy(float)
        lo = np.where(np.isfinite(frame["lo"].to_numpy(float)), frame["lo"].to_numpy(float), mean)
        hi = np.where(np.isfinite(frame["hi"].to_numpy(float)), frame["hi"].to_numpy(float), mean)
        ax.errorbar(mean, y, xerr=np.vstack([mean - lo, hi - mean]), fmt="o", color=color, capsize=3, markersize=5)
        if reference is not None:
            ax.axvline(reference, color="black", linestyle=":", linewidth=1.0, label=reference_label)
        ax.set_yticks(y, labels)
        ax.set_title((shown or {}).get(title, title), color=color)
        ax.xaxis.set_major_locator(plt.MaxNLocator(3))
    for ax in axes.ravel()[len(titles) :]:
        ax.axis("off")
    for row, label in zip(axes, row_labels or []):
        row[0].set_ylabel(label, fontsize=plt.rcParams["axes.titlesize"], fontweight="bold")
    if xlabel:
        fig.supxlabel(xlabel)
    return fig


# --------------------------------------------------------------------------- chapters 1-3


def probe_figure(probes: pd.DataFrame, floor: Mapping[str, float]) -> Figure:
    """Two panels of horizontal bars, one bar per probe (L, V, A, all): Non0 Acc-2 in % and MAE, each with the
    constant prediction of the training mean as a dashed line."""
    fig, axes = plt.subplots(1, 2, figsize=(6.0, 2.9))
    table = probes.assign(acc=probes["Non0_acc_2"] * 100)
    modality_bars(table, "acc", ax=axes[0], reference=floor["Non0_acc_2"] * 100, digits=1)
    modality_bars(table, "MAE", ax=axes[1], reference=floor["MAE"])
    axes[0].set_xlabel("Non0 Acc-2 (%)")
    axes[1].set_yticks(axes[1].get_yticks(), [])
    handles, _ = axes[0].get_legend_handles_labels()
    for ax in axes:
        ax.get_legend().remove()
    fig.legend(handles, ["predicting the training mean"], loc="outside lower center")
    return fig


def factor_figure(frame: pd.DataFrame) -> Figure:
    """Small multiples: for each modality (columns) the share of the shared and private features' variance that
    the sentiment factor (top) and the modality's private factors (bottom) explain, untrained (light) and
    trained (solid), mean over seeds with the 95% interval."""
    fig, axes = plt.subplots(2, 3, figsize=(6.0, 4.6), sharey="row")
    for row, (name, title) in enumerate((("share sentiment", "sentiment factor"), ("share private", "own private factors"))):  # fmt: skip
        for col, m in enumerate(MODALITIES):
            ax = axes[row, col]
            for i, kind in enumerate(("c", "s")):
                color = NEUTRAL if kind == "c" else PALETTE[m]
                for j, (state, alpha) in enumerate((("untrained", 0.35), ("trained", 1.0))):
                    est = estimate(frame[(state, f"{kind}_{m} {name}")].to_numpy())
                    err = None if est.n < 2 else [[est.mean - est.lo], [est.hi - est.mean]]
                    ax.bar(i * 2.6 + j, est.mean, color=color, alpha=alpha, yerr=err, capsize=3, width=0.9)
            ax.set_xticks([0.5, 3.1], [f"$c_{m}$", f"$s_{m}$"])
            if row == 0:
                ax.set_title(MODALITY_NAMES[m])
            ax.grid(axis="x", visible=False)
        axes[row, 0].set_ylabel(f"share explained by\nthe {title}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=NEUTRAL, alpha=a) for a in (0.35, 1.0)]
    fig.legend(handles, ["untrained (same initial weights)", "trained (best validation epoch)"],
               loc="outside lower center", ncol=2)  # fmt: skip
    return fig


def gd_unit_figure(terms: pd.DataFrame, logits: Mapping[str, float], title: str = "") -> Figure:
    """A GD-Unit on one sample: the three modalities as nodes (with their logits), the six directed edges
    teacher -> student in the teacher's colour, each labelled with its learned weight ``w`` and the weight
    ``w + prior`` that multiplies its distillation term (the arrow's width)."""
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    pos = {"L": (0.0, 1.9), "V": (-2.2, -1.0), "A": (2.2, -1.0)}
    top = float(terms["w + prior"].max())
    _nodes(ax, pos, 0.36, 14)
    for m, (x, y) in pos.items():
        ax.text(x, y + (0.55 if m == "L" else -0.55), f"{MODALITY_NAMES[m]}: logit {logits[m]:+.2f}", ha="center",
                va="center", fontsize=9.5, color=PALETTE[m])  # fmt: skip
    for name, row in terms.iterrows():
        teacher, student = edge_parts(str(name))
        width = 0.6 + 5.0 * row["w + prior"] / top
        label = f"{str(name).replace('->', '→')}\nw {row['w']:.3f}\nw+π {row['w + prior']:.3f}"
        _arc(ax, pos[teacher], pos[student], PALETTE[teacher], width=width, head=12 + width, shrink=26, label=label,
             fontsize=9, rad=0.25, alpha=0.8)  # fmt: skip
    _graph_frame(ax, (-3.1, 3.1), (-1.85, 2.65), title)
    return fig


def attention_figure(maps: Mapping[str, np.ndarray], target: str = "L") -> Figure:
    """Cross-modal attention of one sample, one panel per source modality (stacked, to fit the page):
    ``maps`` source -> ``(T_target, T_source)`` weights (:func:`dmd_book.plots.attention_map`)."""
    fig, axes = plt.subplots(len(maps), 1, figsize=(5.2, 3.1 * len(maps)), squeeze=False)
    for ax, (source, weights) in zip(axes[:, 0], maps.items()):
        attention_map(np.asarray(weights), target, source, ax=ax)
    return fig
