"""Knowledge-distillation losses, computed in float32 whatever the dtype of their inputs.

Shapes: logits ``(batch, seq, vocab)``, hidden states ``(batch, seq, hidden)``, ``attention_mask``
``(batch, seq)`` with ``1`` for real tokens and ``0`` for padding (``None`` = every token counts).
Padding tokens contribute nothing to any loss and are not counted in any mean.

* :func:`logits_kl_loss`: ``KL(teacher || student)`` on the next-token distributions.
* :func:`hidden_state_loss`: one layer's distance between student and teacher hidden states, one of
  :data:`HIDDEN_LOSSES`:

  - ``"mse"`` (BinaryMoS): mean over real tokens and hidden units of ``(h_s - h_t)^2``;
  - ``"normalized_mse"`` (OneBit): mean over real tokens of ``|| h_s/|h_s| - h_t/|h_t| ||^2``, the squared
    distance between per-token L2-normalized states (it equals ``2 * (1 - cos)``, so twice ``"cosine"``);
  - ``"cosine"`` (TernaryLLM's OFF): mean over real tokens of ``1 - cos(h_s, h_t)``.

* :func:`layerwise_hidden_loss`: the sum of :func:`hidden_state_loss` over layers.

Both entry points keep no float32 copy of a whole tensor in the autograd graph: their float32 arithmetic is
recomputed in backward (activation checkpointing of the loss itself), so what backward keeps alive is only
what the inputs already were. Half-precision inputs are upcast inside, so a loss never overflows to ``inf``
the way a float16 KL or squared error does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

#: Hidden-state distances :func:`hidden_state_loss` knows.
HIDDEN_LOSSES = ("mse", "normalized_mse", "cosine")

#: How :func:`logits_kl_loss` turns per-token KL values into one number.
LOGITS_REDUCTIONS = ("batchmean", "token_mean")

#: Guards divisions by a norm of zero (an all-zero hidden state).
_EPS = 1e-8


def _float32_recomputed(function: Callable[..., torch.Tensor], *tensors: torch.Tensor | None) -> torch.Tensor:
    """``function(*tensors)`` computed in float32 with autocast off; under autograd its intermediates are
    recomputed in backward instead of kept (only ``tensors`` are saved)."""

    def run(*args: torch.Tensor | None) -> torch.Tensor:
        device_type = next(t for t in args if t is not None).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return function(*args)

    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        # Nothing random happens inside, so the RNG state need not be saved and restored.
        return checkpoint(run, *tensors, use_reentrant=False, preserve_rng_state=False)
    return run(*tensors)


def _token_weights(attention_mask: torch.Tensor | None, shape: torch.Size, device) -> torch.Tensor:
    """``(batch, seq)`` float32 weights: the mask as 0/1, or all ones."""
    if attention_mask is None:
        return torch.ones(shape, dtype=torch.float32, device=device)
    if attention_mask.shape != shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the tokens have shape {tuple(shape)}"
        )
    return (attention_mask != 0).to(device=device, dtype=torch.float32)


def _kl_sum(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Sum over tokens of ``weights * KL(softmax(t / T) || softmax(s / T))``; inputs ``(tokens, vocab)``."""
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    teacher_probs = teacher_log_probs.exp()
    # Where the teacher gives a token probability 0 (a -inf logit) it adds nothing, not 0 * inf = nan.
    per_entry = torch.where(teacher_probs > 0, teacher_probs * (teacher_log_probs - student_log_probs), 0.0)
    return (per_entry.sum(dim=-1) * weights).sum()


def logits_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    chunk_tokens: int = 0,
) -> torch.Tensor:
    """``KL(teacher || student)`` between next-token distributions, in float32.

    Args:
        student_logits: ``(batch, seq, vocab)``, any float dtype; gradients flow through it.
        teacher_logits: ``(batch, seq, vocab)``; treated as a constant target.
        attention_mask: ``(batch, seq)``, ``0`` marks padding, which is left out; ``None`` keeps every token.
        temperature: both distributions are ``softmax(logits / temperature)`` and the result is multiplied by
            ``temperature ** 2`` so gradient magnitudes do not depend on it; ``1.0`` is no temperature.
        reduction: ``"batchmean"`` divides the sum over real tokens by the batch size (the BinaryMoS and
            OneBit recipe: ``F.kl_div(..., reduction="batchmean")`` on ``(batch, seq, vocab)``), so the value
            grows with the sequence length; ``"token_mean"`` divides by the number of real tokens.
        chunk_tokens: compute the float32 softmaxes over this many tokens at a time (``0`` = all at once);
            bounds the float32 working memory to ``chunk_tokens * vocab`` values for large vocabularies.

    Returns:
        A float32 scalar.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "the teacher and the student must share the tokenizer and vocabulary size."
        )
    if reduction not in LOGITS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LOGITS_REDUCTIONS}, got {reduction!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, seq, vocab = student_logits.shape
    weights = _token_weights(attention_mask, torch.Size((batch, seq)), student_logits.device).reshape(-1)
    student_flat = student_logits.reshape(-1, vocab)
    teacher_flat = teacher_logits.detach().reshape(-1, vocab)
    step = chunk_tokens if chunk_tokens > 0 else student_flat.shape[0]
    total = torch.zeros((), dtype=torch.float32, device=student_logits.device)
    for start in range(0, student_flat.shape[0], step):
        stop = start + step
        total = total + _float32_recomputed(
            lambda s, t, w: _kl_sum(s, t, w, temperature),
            student_flat[start:stop],
            teacher_flat[start:stop],
            weights[start:stop],
        )
    denominator = batch if reduction == "batchmean" else weights.sum().clamp_min(1.0)
    return total * (temperature**2) / denominator


def _hidden_distance_sum(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, weights: torch.Tensor, kind: str
) -> torch.Tensor:
    """Sum over tokens of ``weights * distance`` (``distance`` per token as defined by ``kind``)."""
    student = student_hidden.float()
    teacher = teacher_hidden.float()
    if kind == "mse":
        per_token = (student - teacher).pow(2).sum(dim=-1)
    elif kind == "normalized_mse":
        student = student / student.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        teacher = teacher / teacher.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        per_token = (student - teacher).pow(2).sum(dim=-1)
    else:  # cosine
        dot = (student * teacher).sum(dim=-1)
        norms = (student.norm(dim=-1) * teacher.norm(dim=-1)).clamp_min(_EPS)
        per_token = 1.0 - dot / norms
    return (per_token * weights).sum()


def hidden_state_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    kind: str = "mse",
) -> torch.Tensor:
    """Distance between one layer's student and teacher hidden states, in float32.

    Args:
        student_hidden: ``(batch, seq, hidden)``, any float dtype; gradients flow through it.
        teacher_hidden: ``(batch, seq, hidden)``; treated as a constant target.
        attention_mask: ``(batch, seq)``, ``0`` marks padding, which is left out; ``None`` keeps every token.
        kind: ``"mse"``, ``"normalized_mse"`` or ``"cosine"`` (see the module docstring).

    Returns:
        A float32 scalar: a mean over real tokens (and, for ``"mse"``, over hidden units too).
    """
    if kind not in HIDDEN_LOSSES:
        raise ValueError(f"kind must be one of {HIDDEN_LOSSES}, got {kind!r}")
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"Student hidden state {tuple(student_hidden.shape)} and teacher hidden state "
            f"{tuple(teacher_hidden.shape)} differ: distill a student converted from the teacher's architecture."
        )
    batch, seq, hidden = student_hidden.shape
    weights = _token_weights(attention_mask, torch.Size((batch, seq)), student_hidden.device)
    total = _float32_recomputed(
        lambda s, t, w: _hidden_distance_sum(s, t, w, kind), student_hidden, teacher_hidden.detach(), weights
    )
    count = weights.sum().clamp_min(1.0)
    if kind == "mse":
        count = count * hidden
    return total / count


def layerwise_hidden_loss(
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    kind: str = "mse",
) -> torch.Tensor:
    """Sum over layers of :func:`hidden_state_loss`; both sequences hold ``(batch, seq, hidden)`` tensors."""
    if len(student_states) != len(teacher_states):
        raise ValueError(
            f"{len(student_states)} student hidden states but {len(teacher_states)} teacher ones"
        )
    if not student_states:
        raise ValueError("layerwise_hidden_loss needs at least one layer")
    losses = [
        hidden_state_loss(student, teacher, attention_mask, kind)
        for student, teacher in zip(student_states, teacher_states, strict=True)
    ]
    return torch.stack(losses).sum()
