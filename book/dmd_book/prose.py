"""The sentences the chapters generate from their numbers (verdicts, notes, the takeaway).

Each function reads measured numbers and returns a sentence of prose for the chapter to glue,
so that what the text claims is always what this execution measured.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dmd_core.config import DMDConfig, TrainConfig

if TYPE_CHECKING:
    from .settings import BookSettings

    pass

log = logging.getLogger(__name__)


def recipe_note(settings: BookSettings, config: DMDConfig, train_config: TrainConfig) -> str:
    """A sentence saying whether this run follows the reference code's recipe and, if not, how it departs from it."""
    recipe, official = TrainConfig(), None
    from dmd_core.config import preset

    official = preset(config.dataset, config.aligned)
    changes = []
    if (config.d, config.heads, config.nlevels) != (official.d, official.heads, official.nlevels):
        layers = f"{config.nlevels} layer{'s' if config.nlevels != 1 else ''}"
        changes.append(f"a smaller model (d={config.d}, {config.heads} heads, {layers})")
    if train_config.lr != recipe.lr or train_config.accumulation != recipe.accumulation:
        every = (
            "every mini-batch" if train_config.accumulation == 1 else f"every {train_config.accumulation} mini-batches"
        )
        changes.append(f"a learning rate of {train_config.lr:g} with an optimizer step {every}, so that a few epochs "
                       f"make enough steps")  # fmt: skip
    if train_config.max_epochs is not None:
        changes.append(f"at most {train_config.max_epochs} epoch{'s' if train_config.max_epochs != 1 else ''}")
    if len(train_config.seeds) != len(recipe.seeds):
        n = len(train_config.seeds)
        changes.append(f"{n} seed{'s' if n != 1 else ''}")
    data = "the synthetic file" if settings.synthetic else f"`{Path(str(settings.data_path)).name}`"
    if not changes:
        return f"This run follows the reference code's recipe and model on {data}."
    return (f"This run departs from the recipe to finish in minutes on a CPU: {'; '.join(changes)}. Setting "
            f"`paper_scale = True` restores the recipe (see the introduction). Data: {data}.")  # fmt: skip


def honest_note(settings: BookSettings) -> str:
    """What the numbers of this run can and cannot be compared with."""
    if not settings.synthetic:
        return ("These numbers come from the file given as `data_path`; they are comparable to the paper's only "
                "with the full recipe (`paper_scale = True`) and BERT fine-tuning.")  # fmt: skip
    return ("The numbers of this chapter come from synthetic data, so they say nothing about how DMD compares with "
            "the paper or with other models: the achievable accuracy is whatever the planted signal strengths and "
            "noise allow. What they do show is that the recipe trains, how far seeds agree, whether DMD clears a "
            "linear baseline on the same file, and, in chapter 5, how the graphs behave when we know which "
            "modality carries the signal.")  # fmt: skip
