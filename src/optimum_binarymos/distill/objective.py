"""The distillation objective of one batch: teacher forward, student forward, weighted KD terms.

:class:`DistillationObjective` is what :class:`~optimum_binarymos.distill.DistillationTrainer` computes in
``compute_loss``; it works on plain modules too (a custom loop, a benchmark, FSDP2 ``fully_shard`` modules).

Memory: teacher hidden states are taken only for the chosen layers, detached, in the compute dtype (see
:mod:`.hidden`). Each of them stays alive until backward, because the gradient of its layer's loss needs it;
that is the floor for matching hidden states. The float32 arithmetic of every loss term is recomputed in
backward instead of kept (see :mod:`.losses`), so the terms add no float32 copy of a hidden state or of the
logits to the autograd graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .hidden import HiddenStateTap, num_decoder_layers, resolve_layers
from .losses import HIDDEN_LOSSES, LOGITS_REDUCTIONS, layerwise_hidden_loss, logits_kl_loss


@dataclass(frozen=True)
class DistillationObjective:
    """``logits_weight * KL(teacher || student) + hidden_weight * sum over hidden_layers of hidden_loss``.

    Fields mirror :class:`~optimum_binarymos.distill.DistillationConfig` (``kd_*``); ``hidden_layers`` holds
    resolved decoder layer indices in ``[0, num_hidden_layers)`` (empty: no hidden-state term).
    """

    logits_weight: float = 1.0
    hidden_weight: float = 10.0
    hidden_loss: str = "mse"
    hidden_layers: tuple[int, ...] = ()
    temperature: float = 1.0
    logits_reduction: str = "batchmean"
    logits_chunk_tokens: int = 0

    def __post_init__(self) -> None:
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(f"hidden_loss must be one of {HIDDEN_LOSSES}, got {self.hidden_loss!r}")
        if self.logits_reduction not in LOGITS_REDUCTIONS:
            raise ValueError(
                f"logits_reduction must be one of {LOGITS_REDUCTIONS}, got {self.logits_reduction!r}"
            )

    @classmethod
    def from_config(cls, args: Any, model: nn.Module) -> DistillationObjective:
        """The objective a :class:`~optimum_binarymos.distill.DistillationConfig` describes, for ``model``."""
        layers: Sequence[int] = ()
        if args.kd_hidden_weight > 0:
            layers = resolve_layers(args.kd_hidden_layers, num_decoder_layers(model))
        return cls(
            logits_weight=args.kd_logits_weight,
            hidden_weight=args.kd_hidden_weight,
            hidden_loss=args.kd_hidden_loss,
            hidden_layers=tuple(layers),
            temperature=args.kd_temperature,
            logits_reduction=args.kd_logits_reduction,
            logits_chunk_tokens=args.kd_logits_chunk_tokens,
        )

    def __call__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        inputs: dict[str, torch.Tensor],
        student_module: nn.Module | None = None,
        teacher_module: nn.Module | None = None,
        teacher_autocast: contextlib.AbstractContextManager | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """Run both models on ``inputs`` and return ``(loss, unweighted terms, student outputs)``.

        Args:
            student: the student, or a wrapper of it (DDP, accelerate) that is called for the forward.
            teacher: the teacher, or a wrapper of it; called under ``torch.no_grad()``.
            inputs: ``input_ids`` ``(batch, seq)``, optionally ``attention_mask`` ``(batch, seq)``; ``labels``
                is ignored.
            student_module, teacher_module: the unwrapped models whose decoder layers carry the hooks
                (default: ``student`` and ``teacher`` themselves).
            teacher_autocast: context for the teacher's forward (e.g. the trainer's autocast).

        Returns:
            ``loss``: float32 scalar; ``terms``: ``{"kd_logits": ..., "kd_hidden": ...}`` (only the terms
            with a weight above 0); the student's model outputs.
        """
        inputs = {key: value for key, value in inputs.items() if key != "labels"}
        attention_mask = inputs.get("attention_mask")
        layers = list(self.hidden_layers)
        teacher_tap = HiddenStateTap(teacher_module or teacher, layers, detach=True)
        student_tap = HiddenStateTap(student_module or student, layers)
        no_tap = contextlib.nullcontext()
        with torch.no_grad(), teacher_autocast or contextlib.nullcontext(), teacher_tap if layers else no_tap:
            teacher_logits = teacher(**inputs, use_cache=False).logits
        with student_tap if layers else no_tap:
            outputs = student(**inputs, use_cache=False)

        terms: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), dtype=torch.float32, device=outputs.logits.device)
        if self.logits_weight > 0:
            terms["kd_logits"] = logits_kl_loss(
                outputs.logits,
                teacher_logits,
                attention_mask,
                temperature=self.temperature,
                reduction=self.logits_reduction,
                chunk_tokens=self.logits_chunk_tokens,
            )
            loss = loss + self.logits_weight * terms["kd_logits"]
        if layers:
            terms["kd_hidden"] = layerwise_hidden_loss(
                student_tap.states(), teacher_tap.states(), attention_mask, self.hidden_loss
            )
            loss = loss + self.hidden_weight * terms["kd_hidden"]
        return loss, terms, outputs
