"""Token windows for perplexity: one tokenized stream cut in consecutive windows, or random windows of documents.

Both follow the protocol of GPTQ, which OneBit and BinaryMoS reuse: WikiText-2 is tokenized once as a whole and
cut into non-overlapping windows; C4 is scored on random windows drawn from documents longer than a window.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["tokenize_text", "split_into_windows", "c4_windows"]


def tokenize_text(tokenizer: Any, text: str) -> torch.Tensor:
    """Tokenize ``text`` in one piece and return its ids as a 1-D ``int64`` tensor ``(num_tokens,)``.

    The tokenizer adds its special tokens as it would for any input (a BOS token for LLaMA-style tokenizers),
    once at the start of the text, as GPTQ does.
    """
    # verbose=False: a whole test set is longer than model_max_length on purpose; it is cut into windows later.
    encoded = tokenizer(text, return_tensors="pt", verbose=False)
    return encoded["input_ids"][0].to(torch.long)


def split_into_windows(token_ids: torch.Tensor | Sequence[int], seq_len: int) -> torch.Tensor:
    """Cut a token stream into consecutive, non-overlapping windows of ``seq_len`` tokens.

    Args:
        token_ids: the whole tokenized text, shape ``(num_tokens,)`` (or ``(1, num_tokens)``).
        seq_len: tokens per window, at least 2 (a window predicts ``seq_len - 1`` tokens).

    Returns:
        ``int64`` tensor ``(num_tokens // seq_len, seq_len)``. The incomplete tail (``num_tokens % seq_len``
        tokens) is dropped, as GPTQ does, so that every window has the same length and the same context.

    Raises:
        ValueError: when ``seq_len < 2`` or the stream is shorter than one window.
    """
    _check_seq_len(seq_len)
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(f"expected one token stream of shape (num_tokens,), got shape {tuple(ids.shape)}")
    num_windows = ids.numel() // seq_len
    if num_windows == 0:
        raise ValueError(
            f"the text has {ids.numel()} tokens, fewer than one window of seq_len={seq_len}: "
            "pass more text or a smaller seq_len"
        )
    return ids[: num_windows * seq_len].reshape(num_windows, seq_len)


def c4_windows(
    tokenizer: Any, documents: Sequence[str], seq_len: int = 2048, n: int = 256, seed: int = 0
) -> torch.Tensor:
    """Draw ``n`` random windows of ``seq_len`` tokens from ``documents`` (the C4 protocol of GPTQ).

    Each draw picks a document uniformly; a document of ``seq_len`` tokens or fewer is skipped and another
    is drawn; then a start offset is drawn uniformly in ``[0, num_tokens - seq_len - 1]``. The random
    sequence is that of ``random.seed(seed)`` followed by ``random.randint`` calls, so with the C4
    validation shard ``en/c4-validation.00000-of-00008`` and ``seed=0`` this gives GPTQ's windows, while the
    global ``random`` state is left untouched. Works on any list of documents.

    Args:
        tokenizer: a Hugging Face tokenizer (called on one document at a time).
        documents: the texts to draw from.
        seq_len: tokens per window, at least 2.
        n: number of windows.
        seed: seed of the draws.

    Returns:
        ``int64`` tensor ``(n, seq_len)``, ready for ``perplexity(model, token_ids=...)``.

    Raises:
        ValueError: when no document is longer than ``seq_len`` tokens.
    """
    _check_seq_len(seq_len)
    if not documents:
        raise ValueError("c4_windows needs at least one document")
    rng = random.Random(seed)
    too_short: set[int] = set()  # remembered so that a short document is tokenized once
    windows = []
    while len(windows) < n:
        index = rng.randint(0, len(documents) - 1)
        if index not in too_short:
            ids = tokenize_text(tokenizer, documents[index])
            if ids.numel() > seq_len:
                start = rng.randint(0, ids.numel() - seq_len - 1)
                windows.append(ids[start : start + seq_len].clone())  # not a view: frees the document
                continue
            too_short.add(index)
        if len(too_short) == len(documents):  # every further draw would be skipped: stop instead of spinning
            raise ValueError(f"no document is longer than seq_len={seq_len} tokens")
    return torch.stack(windows) if windows else torch.empty(0, seq_len, dtype=torch.long)


def _check_seq_len(seq_len: int) -> None:
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (a window predicts seq_len - 1 tokens), got {seq_len}")
