"""dmd_book: the helpers of the book's chapters, a distribution of its own beside ``dmd_core``.

A researcher who installs ``dmd_core`` to train or use DMD needs none of this (nor matplotlib); the
chapters import it (``pip install -e ./book``, or on Colab ``dmd-book @ git+...#subdirectory=book``).

* :mod:`~dmd_book.settings`: :class:`BookSettings`, the notebook parameters and run reuse;
* :mod:`~dmd_book.prose`: the sentences generated from measured numbers;
* :mod:`~dmd_book.tables`: the tables chapters display;
* :mod:`~dmd_book.plots`: the figures, one colour per modality;
* :mod:`~dmd_book.evidence`, :mod:`~dmd_book.edges`: the comparisons over seeds behind chapters 4-6 (test
  metrics against the ridge baseline, the last epoch and the ablations; the edges against 1/6 and each other)
  and the sentences drawn from them.

Reusable analyses (edges, similarity, probes, attention maps) live in :mod:`dmd_core.analysis`.
"""

from .prose import (
    honest_note,
    recipe_note,  # fmt: skip
)
from .settings import BookSettings
from .tables import (
    PAPER_METRIC_NAMES,
    PAPER_RESULTS,
    gd_unit_table,
    layout_example,
    published_table,
    real_data_table,
    recipe_table,  # fmt: skip
    shape_table,
    synth_parameters,
    toy_decoupled,
)

__all__ = ["BookSettings", "honest_note", "recipe_note", "PAPER_METRIC_NAMES", "PAPER_RESULTS",
           "gd_unit_table", "layout_example", "published_table", "real_data_table", "recipe_table", "shape_table",
           "synth_parameters", "toy_decoupled"]  # fmt: skip
