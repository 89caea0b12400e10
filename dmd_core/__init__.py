"""dmd_core: Decoupled Multimodal Distillation (Li, Wang, Cui, CVPR 2023), exact and fast.

The method, one idea per file: :mod:`~dmd_core.config` (presets), :mod:`~dmd_core.model` (the
network), :mod:`~dmd_core.text_encoder` (BERT), :mod:`~dmd_core.transformer` (cross-modal
attention), :mod:`~dmd_core.distill` (GD-Units), :mod:`~dmd_core.losses`, :mod:`~dmd_core.metrics`.
Running it: :mod:`~dmd_core.trainer` (the recipe), :mod:`~dmd_core.evaluation`, :mod:`~dmd_core.runs`
(run folders), :mod:`~dmd_core.devices` (devices, ``torchrun``), :mod:`~dmd_core.precision` (autocast, the fp16
clip), :mod:`~dmd_core.rng` (seeds, RNG states), :mod:`~dmd_core.epoch_stats`, :mod:`~dmd_core.data` (MMSA files, synthetic files),
:mod:`~dmd_core.hub` (the model folder of ``save_pretrained`` / ``from_pretrained``),
:mod:`~dmd_core.export` (a run's model: ``load_model``, ``dmd export``), :mod:`~dmd_core.tensorboard`.
Machinery a reader may skip: :mod:`~dmd_core.kernels` (fast attention and dropout),
:mod:`~dmd_core.cli`, :mod:`~dmd_core.bench`, :mod:`~dmd_core.reference` (the reference
implementation's configs and checkpoints), :mod:`~dmd_core.analysis` (reusable analyses; it draws nothing).
The book's figures and chapter helpers are the separate package ``dmd_book`` (``book/dmd_book/``).
"""

from .config import MODALITIES, BertSpec, DMDConfig, TrainConfig, preset
from .data import DataFormatError, load_mmsa
from .distill import EDGE_NAMES, GraphDistillation
from .evaluation import evaluate, predict, predict_arrays
from .export import load_model
from .model import DMD, DMDOutput
from .runs import load_run, load_seeds
from .seeds import train_seeds
from .trainer import train

__all__ = ["DMD", "DMDConfig", "DMDOutput", "BertSpec", "TrainConfig", "GraphDistillation", "EDGE_NAMES",
           "MODALITIES", "preset", "load_mmsa", "DataFormatError", "train", "train_seeds", "evaluate", "predict",
           "predict_arrays", "load_run", "load_seeds", "load_model"]  # fmt: skip
__version__ = "0.1.0"
