"""The book's figures (``dmd_book.plots``): one colour per modality everywhere, and each figure draws what it says."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402

from dmd_book import chapters13, plots  # noqa: E402
from dmd_core.distill import EDGE_NAMES  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _same_color(a, b) -> bool:
    return np.allclose(mcolors.to_rgba(a), mcolors.to_rgba(b))


def test_palette_has_one_distinct_colour_per_modality():
    assert set(plots.PALETTE) == {"L", "V", "A"}
    assert len({mcolors.to_hex(c) for c in plots.PALETTE.values()}) == 3
    assert plots.NEUTRAL not in plots.PALETTE.values()


def test_edge_style_takes_the_teachers_colour_and_a_dash_per_student():
    for edge in EDGE_NAMES:
        teacher, student = edge.split("->")
        style = plots.edge_style(edge)
        assert style["color"] == plots.PALETTE[teacher]
        assert style["linestyle"] == plots.STUDENT_LINESTYLE[student]
    assert len({tuple(plots.edge_style(e).values()) for e in EDGE_NAMES}) == 6


def test_edge_parts_rejects_names_that_are_not_edges():
    with pytest.raises(ValueError, match="L->V"):
        plots.edge_parts("L-V")


def test_spread_keeps_labels_apart_and_near_their_values():
    out = plots._spread([0.2, 0.201, 0.5], gap=0.02)
    assert out[1] - out[0] >= 0.02 - 1e-12
    assert abs(out[2] - 0.5) < 0.02


def test_architecture_names_every_modality_and_both_gd_units():
    fig = plots.architecture()
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for word in ("language", "vision", "audio", "HomoGD", "HeteroGD", "fusion", "private", "shared"):
        assert word in texts


def test_edge_curves_give_each_edge_a_panel_in_its_teachers_colour_with_every_seed_their_mean_and_1_6():
    epochs = np.arange(1, 6)
    frames = {seed: pd.DataFrame({e: np.linspace(1 / 6, 0.1 + 0.05 * k + 0.01 * seed, 5)
                                  for k, e in enumerate(EDGE_NAMES)}, index=epochs) for seed in (1, 2)}  # fmt: skip
    prior = [0.05, 0.05, 0.3, 0.05, 0.3, 0.25]
    fig = plots.edge_curves(frames, prior=pd.Series(prior, index=list(EDGE_NAMES)), best={1: 3, 2: 5})
    assert len(fig.axes) == 6
    titles = [ax.get_title().replace(" \u2192 ", "->") for ax in fig.axes]
    assert sorted(titles) == sorted(EDGE_NAMES)
    for ax, edge in zip(fig.axes, titles):
        colour = plots.PALETTE[edge.split("->")[0]]
        assert _same_color(ax.title.get_color(), colour)
        curves = [line for line in ax.lines if len(line.get_xdata()) == len(epochs)]
        assert len(curves) == 3  # two seeds and their mean
        np.testing.assert_allclose(curves[-1].get_ydata(), (frames[1][edge] + frames[2][edge]).to_numpy() / 2)
        assert all(_same_color(line.get_color(), colour) for line in curves)
        flat = [line.get_ydata()[0] for line in ax.lines if len(line.get_xdata()) == 2]  # the horizontal lines
        assert any(np.isclose(y, 1 / 6) for y in flat) and any(
            np.isclose(y, prior[EDGE_NAMES.index(edge)]) for y in flat
        )


def test_edge_graph_arrow_widths_follow_the_weights():
    weights = [0.05, 0.10, 0.30, 0.05, 0.40, 0.10]
    fig = plots.edge_graph(weights, title="HomoGD")
    arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 6
    widths = [a.get_linewidth() for a in arrows]
    assert np.argmax(widths) == int(np.argmax(weights))
    assert widths[4] > widths[2] > widths[1] > widths[0]
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert {"0.40", "0.30", "L", "V", "A"} <= labels


def test_edge_graph_accepts_a_mapping():
    fig = plots.edge_graph(dict(zip(EDGE_NAMES, [1 / 6] * 6)))
    assert sum(isinstance(p, FancyArrowPatch) for p in fig.axes[0].patches) == 6


def test_similarity_heatmaps_annotate_every_cell():
    mat = pd.DataFrame(np.eye(3), index=list("abc"), columns=list("abc"))
    fig = plots.similarity_heatmaps({"before": mat, "after": mat * 0.5})
    assert sum(len(ax.texts) for ax in fig.axes[:2]) == 18


def test_small_figures_draw_without_error():
    rng = np.random.default_rng(0)
    plots.label_histogram({"train": rng.uniform(-3, 3, 50), "test": rng.uniform(-3, 3, 20)})
    table = pd.DataFrame({"MAE": [0.5, 0.9, 1.1, 0.4]}, index=["L", "V", "A", "all"])
    fig = plots.modality_bars(table, "MAE", reference=1.2)
    assert [_same_color(p.get_facecolor(), plots.PALETTE[m]) for p, m in zip(fig.axes[0].patches, "LVA")] == [True] * 3
    plots.edges_heatmap(rng.dirichlet(np.ones(6), 10).T, prior=[1 / 6] * 6)
    bars = pd.DataFrame([[1 / 6] * 6] * 2, columns=EDGE_NAMES, index=["negative", "positive"])
    plots.grouped_edge_bars(bars, errors=bars * 0.1)
    plots.attention_map(rng.random((5, 7)), "L", "A")
    history = pd.DataFrame(
        {"epoch": [1, 2, 3], "train_task": [3, 2, 1], "train_recon": [1, 1, 1], "valid_loss": [2, 1, 1]}
    )
    fig = plots.loss_curves(history, ["task", "recon", "missing"], valid="valid_loss")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["task", "recon"]
    plots.seed_curves({"seed 1": history, "seed 2": history}, "valid_loss")
    plots.feature_norms({"aligned": {m: rng.random(50) for m in "LVA"}})
    table = pd.DataFrame({"Non0_acc_2 mean": [80.0, 78.0], "Non0_acc_2 lo": [79.0, 78.0],
                          "Non0_acc_2 hi": [81.0, 78.0], "MAE mean": [0.7, 0.8], "MAE lo": [0.6, 0.7],
                          "MAE hi": [0.8, 0.9]}, index=["DMD (full)", "without graph distillation"])  # fmt: skip
    fig = plots.ablation_bars(table, metrics=("Non0_acc_2", "MAE"), baseline={"Non0_acc_2": 81.0, "MAE": 0.75})
    assert len(fig.axes[0].containers) == 2  # a dot with its interval per variant
    assert any(np.allclose(line.get_ydata(), 81.0) for line in fig.axes[0].lines)  # the baseline
    labels = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert labels == ["DMD (full)", "without graph distillation", "ridge, all modalities"]
    panels = {
        "L teaches": pd.DataFrame({"mean": [0.4, 0.3], "lo": [0.3, np.nan], "hi": [0.5, np.nan]}, index=["a", "b"])
    }
    fig = plots.interval_panels(panels, reference=1 / 3, colors={"L teaches": plots.PALETTE["L"]})
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]


# --------------------------------------------------------------------------- legible as rendered


def _figure_builders() -> dict:
    """Every figure function of dmd_book.plots, on small synthetic inputs shaped like the chapters' own."""
    rng = np.random.default_rng(0)
    epochs = np.arange(1, 9)
    edge_frame = pd.DataFrame({e: 1 / 6 + 0.01 * k * np.log(epochs) for k, e in enumerate(EDGE_NAMES)}, index=epochs)
    history = pd.DataFrame({"epoch": epochs, "valid_loss": 1 / epochs,
                            **{f"train_{p}": rng.random(8) for p in ("task", "recon", "cycle", "ort", "margin",
                                                                     "homo_gd", "hetero_gd", "total")}})  # fmt: skip
    square = pd.DataFrame(rng.uniform(-1, 1, (6, 6)), index=[f"{k}_{m}" for k in "cs" for m in "LVA"],
                          columns=[f"{k}_{m}" for k in "cs" for m in "LVA"])  # fmt: skip
    centre = {m: rng.uniform(0.5, 0.8, 3) * (100 if "acc" in m or "F1" in m else 1) for m in plots.ABLATION_METRICS}
    ablation = pd.DataFrame({f"{m} {k}": c * f for m, c in centre.items() for k, f in (("mean", 1), ("lo", 0.97),
                                                                                      ("hi", 1.03))},
                            index=["DMD (full)", "without decoupling losses", "without graph distillation"])  # fmt: skip
    shares = pd.DataFrame({"mean": [0.4, 0.3, 0.2, 0.33, 0.1], "lo": [0.3, 0.2, 0.1, 0.3, 0.0],
                           "hi": [0.5, 0.4, 0.3, 0.36, 0.2]},
                          index=["language file, paper prior", "language file, uniform prior", "language file, no prior",
                                 "audio file, paper prior", "audio file, no prior"])  # fmt: skip
    probes = pd.DataFrame({"MAE": [0.80, 1.05, 1.13, 0.77], "Non0_acc_2": [0.77, 0.63, 0.59, 0.81]},
                          index=["L", "V", "A", "all"])  # fmt: skip
    spaces = [f"{k}_{m}" for m in "LVA" for k in "cs"]
    factors = chapters13.per_seed({seed: {state: pd.DataFrame(rng.random((6, 2)), index=spaces,
                                                              columns=["share sentiment", "share private"])
                                          for state in ("untrained", "trained")} for seed in (1, 2, 3)})  # fmt: skip
    terms = chapters13.edge_terms(torch.randn(3, 1, 1), torch.softmax(torch.randn(6, 1), 0), torch.rand(6))
    return {
        "probe_figure": lambda: plots.probe_figure(probes, {"Non0_acc_2": 0.52, "MAE": 1.15}),
        "factor_figure": lambda: plots.factor_figure(factors),
        "gd_unit_figure": lambda: plots.gd_unit_figure(terms, {"L": 0.52, "V": -0.31, "A": 1.2}),
        "attention_figure": lambda: plots.attention_figure({"A": rng.random((46, 46)), "V": rng.random((46, 46))}),
        "architecture": lambda: plots.architecture(),
        "label_histogram": lambda: plots.label_histogram(
            {"train": rng.uniform(-3, 3, 80), "valid": rng.uniform(-3, 3, 20), "test": rng.uniform(-3, 3, 40)}
        ),  # fmt: skip
        "modality_bars": lambda: plots.modality_bars(
            pd.DataFrame({"MAE": [0.9, 1.1, 1.2, 0.8]}, index=["L", "V", "A", "all"]), "MAE", reference=1.3
        ),
        "feature_norms": lambda: plots.feature_norms(
            {
                "aligned_50": {m: rng.random(50) for m in "LVA"},
                "unaligned_50": {"L": rng.random(50), "V": rng.random(500), "A": rng.random(375)},
            }
        ),  # fmt: skip
        "similarity_heatmaps": lambda: plots.similarity_heatmaps({"untrained model": square, "trained model": square}),
        "edges_heatmap": lambda: plots.edges_heatmap(
            rng.dirichlet(np.ones(6), 16).T, title="HomoGD edges", prior=[1 / 6] * 6
        ),  # fmt: skip
        "edge_curves": lambda: plots.edge_curves(
            {1111: edge_frame, 1112: edge_frame * 1.01}, prior=[0.1] * 6, title="HomoGD", best={1111: 4}
        ),  # fmt: skip
        "edge_graph": lambda: plots.edge_graph(rng.dirichlet(np.ones(6)), title="HomoGD"),
        "interval_panels": lambda: plots.interval_panels(
            {f"{u}, {m} teaches": shares for u in ("HomoGD", "HeteroGD") for m in "LVA"},
            reference=1 / 3,
            xlabel="teacher share",
            colors={f"{u}, {m} teaches": plots.PALETTE[m] for u in ("HomoGD", "HeteroGD") for m in "LVA"},
            titles={f"{u}, {m} teaches": f"{m} teaches" for u in ("HomoGD", "HeteroGD") for m in "LVA"},
            row_labels=["HomoGD", "HeteroGD"],
        ),  # fmt: skip
        "grouped_edge_bars": lambda: plots.grouped_edge_bars(
            pd.DataFrame(rng.dirichlet(np.ones(6), 3), columns=EDGE_NAMES, index=["negative", "neutral", "positive"])
        ),
        "attention_map": lambda: plots.attention_map(rng.random((48, 48)), "L", "A"),
        "loss_curves": lambda: plots.loss_curves(
            history, ["task", "recon", "cycle", "ort", "margin", "homo_gd", "hetero_gd", "total"], valid="valid_loss"
        ),  # fmt: skip
        "ablation_bars": lambda: plots.ablation_bars(ablation, baseline={m: 0.7 for m in plots.ABLATION_METRICS}),
        "seed_curves": lambda: plots.seed_curves(
            {"seed 1111": history, "seed 1112": history}, "valid_loss", best={"seed 1111": 3}
        ),  # fmt: skip
    }


def _drawn_text_sizes(fig) -> list[tuple[float, str]]:
    """(font size in points, text) of every text the figure draws: the renderer's own calls, so that tick labels
    outside the view and empty titles, which are never drawn, do not count."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    drawn: list[tuple[float, str]] = []
    draw_text = renderer.draw_text

    def recording(gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if s.strip():
            drawn.append((prop.get_size_in_points(), s))
        return draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)

    renderer.draw_text = recording
    fig.draw(renderer)
    return drawn


def _rendered_scale(fig) -> float:
    """How much the page shrinks the figure: its saved width (tight bounding box plus the 0.1 in padding that the
    notebook's inline backend adds, at the book's dpi) against the page's text column; 1 when it fits."""
    fig.canvas.draw()  # the layout engine places everything first
    bbox = fig.get_tightbbox(fig.canvas.get_renderer())
    width_px = (bbox.width + 0.2) * plots.DPI
    return min(1.0, plots.COLUMN_PX / width_px)


def test_the_style_saves_figures_at_the_resolution_the_legibility_check_assumes():
    plots.set_style()
    assert plt.rcParams["figure.dpi"] == plots.DPI == plt.rcParams["savefig.dpi"]
    assert plt.rcParams["font.size"] >= plots.MIN_FONT_PT


@pytest.mark.parametrize("name", list(_figure_builders()))
def test_every_text_of_every_figure_is_at_least_9_points_as_rendered_on_the_page(name):
    with plt.rc_context():
        plots.set_style()
        fig = _figure_builders()[name]()
        scale = _rendered_scale(fig)
        sizes = _drawn_text_sizes(fig)
    assert sizes, f"{name} draws no text"
    small = sorted({(round(size * scale, 1), text[:30]) for size, text in sizes if size * scale < plots.MIN_FONT_PT})
    width = fig.get_size_inches()[0]
    assert not small, (f"{name} (figure {width:.1f} in wide, shown at {scale:.2f} of its size): texts under "
                       f"{plots.MIN_FONT_PT} pt as rendered: {small[:8]}")  # fmt: skip
