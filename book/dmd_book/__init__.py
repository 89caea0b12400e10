"""dmd_book: the helpers of the book's chapters, a distribution of its own beside ``dmd_core``.

A researcher who installs ``dmd_core`` to train or use DMD needs none of this (nor matplotlib); the
chapters import it (``pip install -e ./book``, or on Colab ``dmd-book @ git+...#subdirectory=book``).

* :mod:`~dmd_book.settings`: :class:`BookSettings`, the notebook parameters and run reuse;
* :mod:`~dmd_book.prose`: the sentences generated from measured numbers;
* :mod:`~dmd_book.tables`: the tables chapters display;
* :mod:`~dmd_book.plots`: the figures, one colour per modality.

Reusable analyses (edges, similarity, probes, attention maps) live in :mod:`dmd_core.analysis`.
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
