"""dmd_core: Decoupled Multimodal Distillation (Li, Wang, Cui, CVPR 2023), exact and fast.

The pieces, one home each: :mod:`~dmd_core.config` (presets), :mod:`~dmd_core.model` (the
network), :mod:`~dmd_core.distill` (GD-Units), :mod:`~dmd_core.losses`, :mod:`~dmd_core.data`
(MMSA files), :mod:`~dmd_core.synth` (synthetic files), :mod:`~dmd_core.train` (the recipe),
:mod:`~dmd_core.runs` (run folders), :mod:`~dmd_core.metrics`, :mod:`~dmd_core.reference`
(the reference implementation's configs and checkpoints), :mod:`~dmd_core.analysis` and
:mod:`~dmd_core.plots` (the book's analyses and figures).
"""

from .config import MODALITIES, BertSpec, DMDConfig, TrainConfig, preset
from .data import DataFormatError, load_mmsa
from .distill import EDGE_NAMES, GraphDistillation
from .model import DMD, DMDOutput
from .runs import load_run, load_seeds
from .train import evaluate, train_seeds  # `train` itself: dmd_core.train.train (the module keeps its name)

__all__ = ["DMD", "DMDConfig", "DMDOutput", "BertSpec", "TrainConfig", "GraphDistillation", "EDGE_NAMES",
           "MODALITIES", "preset", "load_mmsa", "DataFormatError", "train_seeds", "evaluate",
           "load_run", "load_seeds"]  # fmt: skip
__version__ = "0.1.0"
