"""Perplexity of a causal LM on a text, by the protocol of GPTQ, OneBit and BinaryMoS.

The text is tokenized once and cut into non-overlapping windows of ``seq_len`` tokens (the incomplete tail is
dropped). Each window is scored on its own, with no context carried over from the previous one: a window
predicts its tokens 2..seq_len, i.e. ``seq_len - 1`` tokens. The result is
``ppl = exp(mean negative log-likelihood over all predicted tokens)``; the log-softmax runs in float32 whatever
the model's dtype, because a bfloat16 log-softmax over a large vocabulary loses precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .windows import split_into_windows, tokenize_text

__all__ = ["PerplexityResult", "perplexity"]

_MAX_EXP_ARG = math.log(1.7e308)  # math.exp overflows above this


@dataclass(frozen=True)
class PerplexityResult:
    """What :func:`perplexity` measured.

    Attributes:
        ppl: ``exp(nll)``.
        nll: mean negative log-likelihood per predicted token, in nats.
        tokens: number of predicted tokens, ``windows * (seq_len - 1)``.
        windows: number of windows scored.
        seq_len: tokens per window.
    """

    ppl: float
    nll: float
    tokens: int
    windows: int
    seq_len: int


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any = None,
    *,
    text: str | None = None,
    token_ids: torch.Tensor | Sequence[int] | None = None,
    seq_len: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Return the perplexity of ``model`` on a text, scored in non-overlapping windows of ``seq_len`` tokens.

    Args:
        model: a causal LM: called as ``model(input_ids=..., use_cache=False)`` on ``(batch, seq_len)`` ids, it
            returns logits ``(batch, seq_len, vocab)`` (an object with ``.logits``, a tuple or a tensor).
        tokenizer: tokenizes ``text``; not needed with ``token_ids``.
        text: the whole evaluation text, tokenized once (e.g. WikiText-2 test joined with ``"\\n\\n"``).
        token_ids: instead of ``text``: either the tokenized stream ``(num_tokens,)``, cut into windows here,
            or ready-made windows ``(num_windows, seq_len)`` such as :func:`c4_windows` returns (a single row
            ``(1, num_tokens)`` counts as a stream, as ``tokenizer(text, return_tensors="pt").input_ids`` gives).
        seq_len: tokens per window (2048 in the papers). A stream's last ``num_tokens % seq_len`` tokens are
            dropped, as GPTQ does, so every window has the same length.
        max_windows: score only the first ``max_windows`` windows (a quick, deterministic estimate).
        batch_size: windows per forward pass; the result does not depend on it.
        device: where the ids go; defaults to the device of the model's input embeddings.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`PerplexityResult`.

    Raises:
        ValueError: when neither or both of ``text`` and ``token_ids`` are given, ``text`` comes without a
            tokenizer, the text is shorter than one window, or ready-made windows are not ``seq_len`` wide.
    """
    windows = _windows(tokenizer, text, token_ids, seq_len)
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        windows = windows[:max_windows]
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device) if device is not None else _input_device(model)

    was_training = model.training
    model.eval()
    total_nll = 0.0  # a Python float (float64) so that summing many windows loses nothing
    try:
        with (
            torch.no_grad(),
            tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress) as bar,
        ):
            for start in range(0, len(windows), batch_size):
                batch = windows[start : start + batch_size].to(device)
                total_nll += _summed_nll(model, batch)
                bar.update(len(batch))
    finally:
        model.train(was_training)

    tokens = len(windows) * (seq_len - 1)
    nll = total_nll / tokens
    ppl = math.exp(nll) if nll < _MAX_EXP_ARG else math.inf  # a broken model must not crash the report
    return PerplexityResult(ppl=ppl, nll=nll, tokens=tokens, windows=len(windows), seq_len=seq_len)


def _windows(
    tokenizer: Any, text: str | None, token_ids: torch.Tensor | Sequence[int] | None, seq_len: int
) -> torch.Tensor:
    """Return the windows to score, ``(num_windows, seq_len)``, from exactly one of ``text`` and ``token_ids``."""
    if (text is None) == (token_ids is None):
        raise ValueError("pass exactly one of text= and token_ids=")
    if text is not None:
        if tokenizer is None:
            raise ValueError("text= needs a tokenizer: perplexity(model, tokenizer, text=...)")
        return split_into_windows(tokenize_text(tokenizer, text), seq_len)
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if ids.dim() == 2 and ids.shape[0] > 1:
        if ids.shape[1] != seq_len:
            raise ValueError(f"token_ids holds windows of {ids.shape[1]} tokens: pass seq_len={ids.shape[1]}")
        return ids
    return split_into_windows(ids, seq_len)


def _input_device(model: torch.nn.Module) -> torch.device:
    # With a device map the embeddings sit on the first device, which is where the ids must go.
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _summed_nll(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """Return the summed NLL (nats) of tokens 2..seq_len of every window in ``batch`` ``(b, seq_len)``."""
    output = model(input_ids=batch, use_cache=False)
    logits = output.logits if hasattr(output, "logits") else output
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(batch.shape):
        raise ValueError(
            f"expected logits of shape (batch, seq_len, vocab) = ({batch.shape[0]}, {batch.shape[1]}, vocab), "
            f"the model returned {tuple(logits.shape)}"
        )
    targets = batch[:, 1:].to(logits.device)
    total = 0.0
    for row_logits, row_targets in zip(logits, targets, strict=True):
        # Position t predicts token t + 1. float32 because a bf16 log-softmax over a large vocabulary is off;
        # one window at a time so the float32 copy of the logits stays (seq_len, vocab).
        predictions = row_logits[:-1].float()
        total += float(F.cross_entropy(predictions, row_targets, reduction="sum"))
    return total
