"""``DistillationConfig``: the training arguments of :class:`~optimum_binarymos.distill.DistillationTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from .losses import HIDDEN_LOSSES, LOGITS_REDUCTIONS


@dataclass
class DistillationConfig(TrainingArguments):
    r"""Training arguments for quantization-aware knowledge distillation of a BinaryMoS student.

    Every :class:`~transformers.TrainingArguments` field works as usual. The loss is::

        loss = kd_logits_weight * KL(teacher || student)
             + kd_hidden_weight * sum over kd_hidden_layers of <kd_hidden_loss>(h_student, h_teacher)

    and the ground-truth cross-entropy is not used (``labels`` in a batch are ignored).

    The defaults are the small-budget recipe chosen in ``benchmarks/results/recipe-ablation-validation-*.md``:
    AdamW (0.9, 0.999) at learning rate 1e-3 for the latent weights and 5e-3 for scales and routers, cosine
    schedule with 5 % warmup, no weight decay, 3 epochs, per-device batch 4; KL averaged per token + 1.0 x OneBit's
    normalized hidden-state distance over every layer. :meth:`paper` gives the BinaryMoS authors' recipe (lr 2e-5
    for everything, 3 % warmup, KL summed over tokens + 10 x hidden MSE, meant for ~0.5 B tokens) and
    :meth:`onebit` OneBit's loss.

    Example::

        >>> from optimum_binarymos.distill import DistillationConfig
        >>> args = DistillationConfig(output_dir="out", kd_hidden_loss="cosine", kd_hidden_layers=[0, -1])
        >>> args.learning_rate, args.kd_hidden_layers
        (0.001, [0, -1])
        >>> DistillationConfig.paper(output_dir="out").learning_rate
        2e-05
    """

    # --- Defaults of the small-budget recipe (same fields as TrainingArguments) ---
    learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Peak learning rate of AdamW for the latent weights (paper: 2e-5 for everything)."},
    )
    lr_scheduler_type: SchedulerType | str = field(
        default="cosine", metadata={"help": "Learning rate schedule (BinaryMoS recipe: cosine)."}
    )
    warmup_steps: float = field(
        default=0.05,
        metadata={
            "help": "Linear warmup: a number of steps, or a float in [0, 1) for a fraction of all steps "
            "(paper: 0.03)."
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (BinaryMoS recipe: 0)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs (BinaryMoS recipe: 3)."})
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Sequences per device and step (BinaryMoS recipe: 4)."}
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 (BinaryMoS recipe: 0.9)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2 (BinaryMoS recipe: 0.999)."})

    # --- Distillation loss ---
    kd_logits_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of KL(teacher || student) on the logits (BinaryMoS: 1.0; OneBit: 0.01)."},
    )
    kd_hidden_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the hidden-state term (BinaryMoS: 10.0; OneBit: 1.0). 0 disables it."},
    )
    kd_hidden_loss: Literal["mse", "normalized_mse", "cosine"] = field(
        default="normalized_mse",
        metadata={
            "help": "Distance between student and teacher hidden states, per layer: 'mse' (BinaryMoS: mean "
            "squared error), 'normalized_mse' (OneBit: squared distance between per-token L2-normalized "
            "states, averaged over tokens), 'cosine' (TernaryLLM's OFF: 1 - cosine similarity per token, "
            "averaged over tokens). Layer values are summed."
        },
    )
    # `None` in the union makes HfArgumentParser read the flag as one string ("all" or "0,-1").
    kd_hidden_layers: list[int] | str | None = field(
        default="all",
        metadata={
            "help": "Decoder layers whose output hidden states are matched: 'all' (hidden_states[1:], the "
            "BinaryMoS recipe) or comma-separated layer indices from 0, negative ones counting from the end "
            "(e.g. '0,-1'); in Python also a list of ints. The last layer's state is the model's final "
            "normalized hidden state, as in hidden_states[-1]."
        },
    )
    kd_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Softmax temperature of both distributions in the KL term, whose value is then scaled "
            "by temperature**2; 1.0 (the default, as the authors) means no temperature."
        },
    )
    kd_logits_reduction: Literal["batchmean", "token_mean"] = field(
        default="token_mean",
        metadata={
            "help": "'batchmean' (as the authors): KL summed over real tokens, divided by the batch size, so "
            "it grows with the sequence length; 'token_mean': divided by the number of real tokens."
        },
    )
    kd_logits_chunk_tokens: int = field(
        default=4096,
        metadata={
            "help": "Tokens whose float32 softmaxes are computed at once in the KL term; bounds its extra "
            "memory to chunk x vocabulary floats. 0 = the whole batch at once."
        },
    )

    # --- What trains ---
    scales_learning_rate: float | None = field(
        default=5e-3,
        metadata={
            "help": "Peak learning rate of the quantizer parameters (BinaryMoS scales and router, ternary "
            "scale and shift, biases) while the latent weights keep learning_rate; same schedule. None: "
            "learning_rate for everything (the authors' recipe)."
        },
    )
    train_binarymos_only: bool = field(
        default=True,
        metadata={
            "help": "Train only the BinaryMoS layers' parameters (latent weights, scales, router, biases) and "
            "freeze embeddings, lm_head and norms, as in the paper."
        },
    )
    train_latent_weights: bool = field(
        default=True,
        metadata={
            "help": "Train the latent weights (sign flips). False: only the quantizer parameters train (scales, "
            "router, biases), the signs stay those of the float model, and each step skips the weight-gradient "
            "products. Needs train_binarymos_only."
        },
    )
    master_weights_fp32: bool = field(
        default=True,
        metadata={
            "help": "When the student is loaded in bfloat16/float16, keep its trainable parameters in float32 "
            "while training (as the authors: float32 master weights under bf16 autocast); a bf16 latent weight "
            "would round away updates of lr 2e-5. They return to the loaded dtype when train() ends. Ignored "
            "under DeepSpeed and FSDP, which keep their own float32 copies."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kd_hidden_layers = _normalize_layers(self.kd_hidden_layers)
        problems = []
        for name in ("kd_logits_weight", "kd_hidden_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                problems.append(f"{name} must be a number >= 0, got {value!r}")
        if not problems and self.kd_logits_weight == 0 and self.kd_hidden_weight == 0:
            problems.append(
                "kd_logits_weight and kd_hidden_weight are both 0: nothing would be learned; set at least one "
                "above 0 (BinaryMoS: 1.0 and 10.0)"
            )
        if self.kd_hidden_loss not in HIDDEN_LOSSES:
            problems.append(
                f"kd_hidden_loss must be one of {list(HIDDEN_LOSSES)}, got {self.kd_hidden_loss!r}"
            )
        if self.kd_logits_reduction not in LOGITS_REDUCTIONS:
            problems.append(
                f"kd_logits_reduction must be one of {list(LOGITS_REDUCTIONS)}, got {self.kd_logits_reduction!r}"
            )
        if self.scales_learning_rate is not None and (
            isinstance(self.scales_learning_rate, bool)
            or not isinstance(self.scales_learning_rate, (int, float))
            or not self.scales_learning_rate > 0
        ):
            problems.append(f"scales_learning_rate must be a number > 0 or None, got {self.scales_learning_rate!r}")
        if not self.train_latent_weights and not self.train_binarymos_only:
            problems.append("train_latent_weights=False needs train_binarymos_only=True (it decides what trains)")
        if isinstance(self.kd_temperature, bool) or not isinstance(self.kd_temperature, (int, float)):
            problems.append(f"kd_temperature must be a number > 0 (1.0 = none), got {self.kd_temperature!r}")
        elif self.kd_temperature <= 0:
            problems.append(f"kd_temperature must be > 0 (1.0 = none), got {self.kd_temperature!r}")
        if (
            isinstance(self.kd_logits_chunk_tokens, bool)
            or not isinstance(self.kd_logits_chunk_tokens, int)
            or self.kd_logits_chunk_tokens < 0
        ):
            problems.append(
                f"kd_logits_chunk_tokens must be an integer >= 0 (0 = no chunking), got {self.kd_logits_chunk_tokens!r}"
            )
        if problems:
            raise ValueError("Invalid DistillationConfig: " + "; ".join(problems) + ".")

    @classmethod
    def paper(cls, **kwargs: Any) -> DistillationConfig:
        """The BinaryMoS authors' recipe: lr 2e-5 for every parameter, 3 % warmup, KL summed over tokens
        (``"batchmean"``) + 10 x the hidden-state MSE of every layer. Made for ~0.5 B tokens; ``kwargs`` override."""
        preset: dict[str, Any] = {
            "learning_rate": 2e-5,
            "scales_learning_rate": None,
            "warmup_steps": 0.03,
            "kd_logits_weight": 1.0,
            "kd_hidden_weight": 10.0,
            "kd_hidden_loss": "mse",
            "kd_logits_reduction": "batchmean",
        }
        return cls(**{**preset, **kwargs})

    @classmethod
    def onebit(cls, **kwargs: Any) -> DistillationConfig:
        """OneBit's loss: ``0.01 * KL`` + the sum over every layer of the normalized MSE.

        Other fields (``output_dir``, ...) pass through ``kwargs``, which may also override these three.
        """
        preset: dict[str, Any] = {
            "kd_logits_weight": 0.01,
            "kd_hidden_weight": 1.0,
            "kd_hidden_loss": "normalized_mse",
        }
        return cls(**{**preset, **kwargs})


def _normalize_layers(layers: Any) -> list[int] | str:
    """``"all"``, or a non-empty list of ints, from what a user or the command line gives.

    Accepts ``"all"`` (or ``None``), ``["all"]``, a list of ints or of strings of ints, and one comma-separated
    string (``"0,-1"``, what the command line gives).
    """
    if layers is None:
        return "all"
    if isinstance(layers, str):
        if layers.strip().lower() == "all":
            return "all"
        layers = [part for part in layers.split(",") if part.strip()]
    if isinstance(layers, (list, tuple)) and len(layers) == 1 and str(layers[0]).strip().lower() == "all":
        return "all"
    message = (
        "kd_hidden_layers must be 'all' or a non-empty list of decoder layer indices (ints, negative ones "
        f"counting from the end, e.g. [0, -1]); got {layers!r}"
    )
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(message)
    normalized = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, str)):
            raise ValueError(message)
        try:
            normalized.append(int(layer.strip()) if isinstance(layer, str) else layer)
        except ValueError:
            raise ValueError(message) from None
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"kd_hidden_layers lists a layer twice: {layers!r}")
    return normalized
