"""dmd_core: Decoupled Multimodal Distillation (Li, Wang, Cui, CVPR 2023), exact and fast."""

from .config import MODALITIES, BertSpec, DMDConfig, TrainConfig, preset
from .distill import EDGE_NAMES, GraphDistillation
from .model import DMD, DMDOutput

__all__ = ["DMD", "DMDConfig", "DMDOutput", "BertSpec", "TrainConfig", "GraphDistillation", "EDGE_NAMES",
           "MODALITIES", "preset"]  # fmt: skip
__version__ = "0.1.0"
