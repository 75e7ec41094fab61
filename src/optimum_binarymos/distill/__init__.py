"""Quantization-aware knowledge distillation of BinaryMoS students from their float teachers.

* :class:`DistillationConfig`: ``TrainingArguments`` plus the loss knobs, defaulting to the BinaryMoS recipe.
* :class:`DistillationTrainer`: a ``transformers.Trainer`` taking ``teacher_model``.
* :mod:`.losses`: KL on logits and hidden-state distances (``mse``, ``normalized_mse``, ``cosine``), in float32.
* :mod:`.data`: text files or a ``datasets`` column tokenized and packed into fixed-length blocks.
"""

from .config import DistillationConfig
from .data import TokenBlocks, load_text_blocks, pack_into_blocks, text_blocks, tokenize_documents
from .freezing import TrainableCount, binarymos_trainable_parameters
from .hidden import HiddenStateTap
from .losses import HIDDEN_LOSSES, LOGITS_REDUCTIONS, hidden_state_loss, layerwise_hidden_loss, logits_kl_loss
from .objective import DistillationObjective
from .trainer import KD_TERMS, DistillationTrainer

__all__ = [
    "HIDDEN_LOSSES",
    "KD_TERMS",
    "LOGITS_REDUCTIONS",
    "DistillationConfig",
    "DistillationObjective",
    "DistillationTrainer",
    "HiddenStateTap",
    "TokenBlocks",
    "TrainableCount",
    "binarymos_trainable_parameters",
    "hidden_state_loss",
    "layerwise_hidden_loss",
    "load_text_blocks",
    "logits_kl_loss",
    "pack_into_blocks",
    "text_blocks",
    "tokenize_documents",
]
