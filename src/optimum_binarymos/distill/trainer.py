"""``DistillationTrainer``: quantization-aware knowledge distillation of a BinaryMoS student from its float teacher.

One step: the frozen teacher runs forward without gradients, the student runs forward, and the loss of
:class:`~optimum_binarymos.distill.DistillationConfig` (KL on logits + hidden-state distances) is
back-propagated into the student's BinaryMoS parameters only. Everything else is ``transformers.Trainer``:
mixed precision, gradient accumulation, activation checkpointing, DDP/FSDP/DeepSpeed through accelerate,
logging, evaluation, checkpoints and ``resume_from_checkpoint``.

Saving:

* intermediate checkpoints (``checkpoint-<step>/``, written by ``Trainer._save_checkpoint`` at
  ``save_steps``) keep the latent float weights (``checkpoint_form: "latent"``), so ``resume_from_checkpoint``
  continues exactly and ``from_pretrained`` reloads them as a trainable model;
* every other save, i.e. ``trainer.save_model()`` (and ``student.save_pretrained()``), writes the packed 1-bit
  model for inference.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback

from ..hub import write_model_card
from ..methods.lifecycle import PackingHfQuantizer, latent_saving
from .config import DistillationConfig
from .freezing import (
    TrainableCount,
    binarymos_layers,
    binarymos_trainable_parameters,
    latent_weights,
    restore_parameter_dtypes,
    upcast_trainable_parameters,
)
from .objective import DistillationObjective
from .progress import LossProgressCallback
from .teacher import prepare_teacher

logger = logging.getLogger(__name__)

#: Names of the logged loss terms (unweighted), beside Trainer's total ``loss``.
KD_TERMS = ("kd_logits", "kd_hidden")


class _TermMeter:
    """Running sums of the unweighted loss terms over micro-batches, kept on device (no sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def drain(self) -> tuple[dict[str, torch.Tensor], int]:
        sums, count = self.sums, self.count
        self.sums, self.count = {}, 0
        return sums, count


class DistillationTrainer(Trainer):
    """``transformers.Trainer`` that distills ``teacher_model`` into a BinaryMoS ``model``.

    Args:
        model: the student, a latent BinaryMoS model (``from_pretrained(..., quantization_config=
            BinaryMoSConfig())`` or :func:`~optimum_binarymos.convert_model`). With
            ``args.train_binarymos_only`` (the default) only its BinaryMoS layers train.
        teacher_model: the float model it comes from (same tokenizer and architecture). It is frozen
            (``requires_grad=False``), put in eval mode, cast to the student's dtype and placed for the
            distributed setup (sharded too under FSDP and DeepSpeed ZeRO-3); it is never modified.
        args: a :class:`~optimum_binarymos.distill.DistillationConfig`.
        **kwargs: anything else ``Trainer`` takes (``train_dataset``, ``eval_dataset``, ``data_collator``,
            ``processing_class``, ``callbacks``, ...). Batches need ``input_ids`` and may hold ``attention_mask``
            (padding is left out of every loss term); ``labels`` are ignored.

    Logs carry ``kd_logits`` and ``kd_hidden`` (unweighted means over the logging interval, averaged over
    processes) beside the weighted total ``loss``; evaluation adds ``eval_kd_logits`` and ``eval_kd_hidden``
    beside ``eval_loss``, the distillation loss on the evaluation set.

    Example::

        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=blocks)
        trainer.train()
        trainer.save_model("out/final")   # packed 1-bit checkpoint
    """

    # compute_loss returns a per-micro-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher_model: nn.Module | None = None,
        args: DistillationConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError(
                "DistillationTrainer needs the student: pass model=<BinaryMoS model> (model_init is not supported)."
            )
        if kwargs.get("model_init") is not None:
            raise ValueError("DistillationTrainer does not support model_init; pass model= instead.")
        if teacher_model is None:
            raise ValueError(
                "DistillationTrainer needs teacher_model=<the float model the student comes from>."
            )
        if teacher_model is model:
            raise ValueError(
                "teacher_model is the student itself; load the float model a second time as teacher."
            )
        if args is None:
            args = DistillationConfig(output_dir="tmp_trainer")
        if not isinstance(args, DistillationConfig):
            raise TypeError(
                f"DistillationTrainer takes args=DistillationConfig(...), got {type(args).__name__}; every "
                "TrainingArguments field is also a DistillationConfig field."
            )
        self.trainable_count: TrainableCount | None = None
        if args.train_binarymos_only:
            self.trainable_count = binarymos_trainable_parameters(model, args.train_latent_weights)
        # The teacher computes in the dtype the student was loaded in (read before any float32 upcast).
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        weight = getattr(embeddings, "weight", None)
        self._student_dtype = weight.dtype if isinstance(weight, torch.Tensor) else None
        self.objective = DistillationObjective.from_config(args, model)
        super().__init__(model=model, args=args, **kwargs)
        self.teacher_model = prepare_teacher(teacher_model, self.accelerator, self._student_dtype)
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(LossProgressCallback)
        self._meters = {"train": _TermMeter(), "eval": _TermMeter()}
        self._writing_checkpoint = False
        self._upcast_dtypes: dict[str, torch.dtype] = {}

    # ---- training -------------------------------------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None):
        """``Trainer.create_optimizer``; with ``args.scales_learning_rate`` set, each of its parameter groups is
        split in two: latent weights at ``learning_rate``, quantizer parameters at ``scales_learning_rate``."""
        optimizer = super().create_optimizer(model)
        if self.args.scales_learning_rate is None:
            return optimizer
        latent = {id(param) for param in latent_weights(self.model if model is None else model)}
        groups = []
        for group in optimizer.param_groups:
            for is_latent in (True, False):
                params = [param for param in group["params"] if (id(param) in latent) == is_latent]
                if params:
                    lr = group["lr"] if is_latent else self.args.scales_learning_rate
                    groups.append({**group, "params": params, "lr": lr})
        # Nothing has stepped yet, so the optimizer holds no state to carry over.
        optimizer.param_groups = []
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def train(self, *args: Any, **kwargs: Any):
        """``Trainer.train``, with trainable half-precision parameters kept in float32 while it runs
        (``master_weights_fp32``); they return to their loaded dtype when it ends."""
        if self.args.master_weights_fp32 and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            self._upcast_dtypes = upcast_trainable_parameters(self.model)
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._upcast_dtypes:
                restore_parameter_dtypes(self.model, self._upcast_dtypes)
                self._upcast_dtypes = {}

    def _teacher_module(self) -> nn.Module:
        # A DeepSpeed engine holds the model in .module; FSDP2 shards it in place.
        return self.teacher_model.module if self.is_deepspeed_enabled else self.teacher_model

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """Weighted sum of the distillation terms for one micro-batch (a float32 scalar).

        ``inputs``: ``input_ids`` ``(batch, seq)`` and optionally ``attention_mask`` ``(batch, seq)``; ``labels``
        is dropped (the ground-truth cross-entropy is not part of the loss).
        """
        loss, terms, outputs = self.objective(
            model,
            self.teacher_model,
            inputs,
            student_module=self.accelerator.unwrap_model(model, keep_torch_compile=False),
            teacher_module=self._teacher_module(),
            teacher_autocast=self._teacher_autocast(),
        )
        self._meters["train" if model.training else "eval"].add(terms)
        return (loss, outputs) if return_outputs else loss

    def _teacher_autocast(self) -> contextlib.AbstractContextManager:
        """The student's autocast for the teacher's forward (its forward is not wrapped by accelerate)."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return contextlib.nullcontext()  # the engine / the FSDP mixed-precision policy casts by itself
        return self.accelerator.autocast()

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Evaluation: the distillation loss of the batch (``eval_loss``); no predictions are gathered."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---- logging --------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean unweighted KD terms since the last log (``kd_logits``, ``kd_hidden``, and their
        ``eval_`` counterparts) to the training and evaluation logs."""
        if "loss" in logs:
            logs.update(self._drain_terms("train", prefix=""))
        elif "eval_loss" in logs:
            logs.update(self._drain_terms("eval", prefix="eval_"))
        super().log(logs, start_time)

    def _drain_terms(self, split: str, prefix: str) -> dict[str, float]:
        sums, count = self._meters[split].drain()
        if count == 0:
            return {}
        values = torch.stack([sums[name] for name in KD_TERMS if name in sums]) / count
        # Every process logs at the same steps (Trainer calls log() everywhere), so this collective is safe.
        values = self.accelerator.reduce(values, reduction="mean")
        names = [name for name in KD_TERMS if name in sums]
        return {f"{prefix}{name}": value.item() for name, value in zip(names, values, strict=True)}

    # ---- saving ---------------------------------------------------------------------------------------------

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # Trainer writes every intermediate checkpoint through here; those keep latent weights (see _save).
        self._writing_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._writing_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Latent weights inside an intermediate checkpoint, packed 1-bit weights for every other save."""
        student = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not binarymos_layers(student):
            return super()._save(output_dir, state_dict)
        form = latent_saving(student) if self._writing_checkpoint else contextlib.nullcontext()
        with form, _saving_state_dict(student, state_dict):
            super()._save(output_dir, state_dict)
        # A checkpoint is for resuming; a final save is a model to share. Only the writing process has the folder.
        if not self._writing_checkpoint and self.args.should_save:
            write_model_card(student, output_dir or self.args.output_dir)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """``Trainer.push_to_hub`` writes the card of the student's method (not the Trainer's generic one)."""
        if self.is_world_process_zero():
            student = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            if binarymos_layers(student):
                write_model_card(student, self.args.output_dir, model_id=self.args.hub_model_id)
                return
        super().create_model_card(*args, **kwargs)


def _saving_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None):
    """Make ``model.save_pretrained`` write ``state_dict`` (packed unless saving latent) instead of reading
    ``model.state_dict()``: under FSDP and DeepSpeed ZeRO-3 the Trainer gathers the full state dict itself and
    passes it, while transformers asks the quantizer for the tensors to write."""
    quantizer = getattr(model, "hf_quantizer", None)
    if state_dict is None or not isinstance(quantizer, PackingHfQuantizer):
        return contextlib.nullcontext()
    return quantizer.saving_state_dict(state_dict)
