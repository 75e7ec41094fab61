"""Distillation data: text tokenized, concatenated and cut into fixed-length blocks (no padding).

This is how BinaryMoS and OneBit prepare their corpora (C4 + WikiText-2 joined, cut into 2048-token blocks).
Documents are joined with the tokenizer's end-of-sequence token, and the incomplete tail is dropped.

Example::

    blocks = load_text_blocks(["a.txt", "b.txt"], tokenizer, block_size=2048)
    blocks[0]   # {"input_ids": LongTensor (2048,)}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

#: Characters per tokenizer call when a file is long: bounds the tokenizer's memory and avoids its
#: "sequence longer than the model maximum" warning on whole books.
TEXT_PIECE_CHARS = 200_000


def pack_into_blocks(token_ids: Sequence[int] | torch.Tensor, block_size: int) -> torch.Tensor:
    """Cut a stream of token ids into consecutive blocks of ``block_size``, dropping the incomplete tail.

    Args:
        token_ids: a 1-D sequence (list or tensor) of token ids.
        block_size: tokens per block, >= 1.

    Returns:
        ``LongTensor (len(token_ids) // block_size, block_size)``; row ``i`` is
        ``token_ids[i * block_size : (i + 1) * block_size]``.

    Raises:
        ValueError: for ``block_size < 1`` or fewer tokens than one block.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    blocks = ids.numel() // block_size
    if blocks == 0:
        raise ValueError(
            f"Only {ids.numel()} tokens, fewer than one block of {block_size}: give more text or a smaller block_size."
        )
    return ids[: blocks * block_size].reshape(blocks, block_size).clone()


def _pieces(text: str, limit: int = TEXT_PIECE_CHARS) -> list[str]:
    """``text`` split into pieces of at most ``limit`` characters, cut only after a newline unless one line
    is longer than ``limit``; tokens then differ from tokenizing the whole at most around those cuts."""
    pieces, start = [], 0
    while start < len(text):
        stop = min(start + limit, len(text))
        if stop < len(text):
            newline = text.rfind("\n", start, stop)
            if newline > start:
                stop = newline + 1
        pieces.append(text[start:stop])
        start = stop
    return pieces


def tokenize_documents(texts: Iterable[str], tokenizer, separator_id: int | None = -1) -> list[int]:
    """Token ids of ``texts`` one after another, each document followed by ``separator_id``.

    Args:
        texts: documents (strings); empty ones are skipped.
        tokenizer: a Hugging Face tokenizer; special tokens (BOS) are not added inside documents.
        separator_id: id appended after each document; ``-1`` (default) means the tokenizer's
            ``eos_token_id`` (nothing if it has none), ``None`` means no separator.
    """
    if separator_id == -1:
        separator_id = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for text in texts:
        if not text:
            continue
        for piece_ids in tokenizer(_pieces(text), add_special_tokens=False)["input_ids"]:
            ids.extend(piece_ids)
        if separator_id is not None:
            ids.append(separator_id)
    return ids


class TokenBlocks(Dataset):
    """A dataset of fixed-length token blocks; item ``i`` is ``{"input_ids": LongTensor (block_size,)}``."""

    def __init__(self, blocks: torch.Tensor) -> None:
        if blocks.ndim != 2:
            raise ValueError(f"blocks must be (num_blocks, block_size), got shape {tuple(blocks.shape)}")
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[index]}

    def split(self, num_eval: int) -> tuple[TokenBlocks, TokenBlocks]:
        """``(first blocks, last num_eval blocks)``: a held-out split that never shares a block with training."""
        if not 0 < num_eval < len(self):
            raise ValueError(
                f"num_eval must be in [1, {len(self) - 1}] for {len(self)} blocks, got {num_eval}"
            )
        return TokenBlocks(self.blocks[:-num_eval]), TokenBlocks(self.blocks[-num_eval:])


def text_blocks(
    texts: Iterable[str], tokenizer, block_size: int, max_blocks: int | None = None
) -> TokenBlocks:
    """Tokenize ``texts`` (e.g. the text column of a ``datasets`` split), join them and cut into blocks.

    Returns at most ``max_blocks`` blocks when it is given.
    """
    blocks = pack_into_blocks(tokenize_documents(texts, tokenizer), block_size)
    if max_blocks is not None:
        blocks = blocks[:max_blocks]
    return TokenBlocks(blocks)


def load_text_blocks(
    files: Iterable[str | Path], tokenizer, block_size: int, max_blocks: int | None = None
) -> TokenBlocks:
    """Read UTF-8 text files (each one a document), tokenize, join and cut them into ``block_size`` blocks.

    Raises:
        FileNotFoundError: naming the first file that does not exist.
        ValueError: when all files together give fewer tokens than one block.
    """
    paths = [Path(file) for file in files]
    if not paths:
        raise ValueError("load_text_blocks needs at least one text file")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Text file not found: {path}")
    return text_blocks(
        (path.read_text(encoding="utf-8") for path in paths), tokenizer, block_size, max_blocks
    )
