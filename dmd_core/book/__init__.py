"""Helpers of the book's chapters (a reader of the method may skip this package).

* :mod:`~dmd_core.book.settings`: :class:`BookSettings`, the notebook parameters and run reuse;
* :mod:`~dmd_core.book.prose`: the sentences generated from measured numbers;
* :mod:`~dmd_core.book.tables`: the tables chapters display.

Reusable analyses live in :mod:`dmd_core.analysis`, figures in :mod:`dmd_core.plots`.
"""

from .prose import (
    ablation_verdict,
    agreement_verdict,
    edge_verdict,
    follow_verdict,
    honest_note,
    prior_verdict,
    recipe_note,  # fmt: skip
    similarity_verdict,
    takeaway,
)
from .settings import BookSettings
from .tables import (
    PAPER_METRIC_NAMES,
    PAPER_RESULTS,
    ablation_display,
    gd_unit_table,
    layout_example,
    real_data_table,
    recipe_table,  # fmt: skip
    results_table,
    shape_table,
    synth_parameters,
    toy_decoupled,
)

__all__ = ["BookSettings", "ablation_verdict", "agreement_verdict", "edge_verdict", "follow_verdict", "honest_note",
           "prior_verdict", "recipe_note", "similarity_verdict", "takeaway", "PAPER_METRIC_NAMES", "PAPER_RESULTS",
           "ablation_display", "gd_unit_table", "layout_example", "real_data_table", "recipe_table", "results_table",
           "shape_table", "synth_parameters", "toy_decoupled"]  # fmt: skip
