"""8-bit embeddings and output head for any method (``embedding_bits=8``): converting, loading, dequantizing.

The model's own accessors (``get_input_embeddings`` / ``set_input_embeddings`` and the output ones) find and
replace the two modules, so this works for any architecture that implements them. A model whose head is tied to
its input embeddings keeps one int8 table: the head's ``weight`` is the embedding's (transformers ties it again
on load, as for the float model) and its ``weight_scale`` a copy (``vocab`` floats), saved with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn.int8 import INT8_LAYER_TYPES, Int8Embedding, Int8Linear, check_embedding, check_head
from ..packing import FIRST_FORMAT_VERSION, ROWS_FORMAT_VERSION

#: Values of ``embedding_bits``: None keeps the embeddings and ``lm_head`` in float.
EMBEDDING_BITS = (None, 8)


def check_embedding_bits(embedding_bits: Any) -> None:
    """Refuse anything but ``None`` or ``8``."""
    if embedding_bits not in EMBEDDING_BITS or isinstance(embedding_bits, bool):
        raise ValueError(
            f"embedding_bits must be None (embeddings and lm_head in float) or 8 (int8 with one scale per row); "
            f"got {embedding_bits!r}"
        )


def required_format_version(embedding_bits: int | None) -> int:
    """The oldest format version that can hold a checkpoint with these embeddings (1 for float ones)."""
    return FIRST_FORMAT_VERSION if embedding_bits is None else ROWS_FORMAT_VERSION


def _modules(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    get_input = getattr(model, "get_input_embeddings", None)
    get_output = getattr(model, "get_output_embeddings", None)
    return (get_input() if get_input else None), (get_output() if get_output else None)


def _require_accessors(model: nn.Module, embedding: nn.Module | None) -> None:
    if embedding is None:
        raise TypeError(
            f"embedding_bits=8 needs the model's input embeddings, but {type(model).__name__} has no "
            "get_input_embeddings(); use embedding_bits=None."
        )


def quantize_embeddings(model: nn.Module) -> int:
    """Replace a float model's input embeddings and output head with their 8-bit layers, in place.

    Layers that are 8-bit already are left alone. A head tied to the input embeddings shares their codes.

    Returns:
        The number of modules replaced (0, 1 or 2).

    Raises:
        TypeError: when the embeddings or the head are not plain ``nn.Embedding`` / ``nn.Linear`` modules (before
            anything changes).
    """
    embedding, head = _modules(model)
    _require_accessors(model, embedding)
    # Both modules are checked before either changes.
    if not isinstance(embedding, Int8Embedding):
        check_embedding(embedding)
    if head is not None and not isinstance(head, Int8Linear):
        check_head(head)
    tied = head is not None and head.weight is embedding.weight
    replaced = 0
    if not isinstance(embedding, Int8Embedding):
        embedding = Int8Embedding.from_float(embedding)
        model.set_input_embeddings(embedding)
        replaced += 1
    if head is not None and not isinstance(head, Int8Linear):
        model.set_output_embeddings(Int8Linear.from_float(head, tied_to=embedding if tied else None))
        replaced += 1
    return replaced


def embedding_skeletons(model: nn.Module, dtype: torch.dtype | None = None) -> None:
    """Before loading an ``embedding_bits=8`` checkpoint: uninitialized 8-bit layers in place of the input
    embeddings and the output head (on the meta device, like the rest of the model being loaded)."""
    embedding, head = _modules(model)
    _require_accessors(model, embedding)
    new_embedding = Int8Embedding.skeleton_of(embedding, dtype)
    new_head = Int8Linear.skeleton_of(head, dtype) if head is not None else None
    model.set_input_embeddings(new_embedding)
    if new_head is not None:
        model.set_output_embeddings(new_head)


def dequantize_embeddings(model: nn.Module, dtype: torch.dtype | None = None) -> None:
    """Back to float ``nn.Embedding`` / ``nn.Linear`` modules with the same values.

    A tied head stays tied, unless the embeddings had an ``embed_scale`` (folded into the float table, so the
    head gets its own copy of the unscaled values).
    """
    embedding, head = _modules(model)
    tied = isinstance(head, Int8Linear) and isinstance(embedding, Int8Embedding) and head.weight is embedding.weight
    shares_values = tied and embedding.embed_scale is None
    if isinstance(embedding, Int8Embedding):
        embedding = embedding.dequantize(dtype)
        model.set_input_embeddings(embedding)
    if isinstance(head, Int8Linear):
        float_head = head.dequantize(dtype)
        if shares_values:
            float_head.weight = embedding.weight
        model.set_output_embeddings(float_head)


def embedding_module_names(model: nn.Module) -> list[str]:
    """Names of the model's input embeddings and output head (those ``embedding_bits=8`` stores in 8 bits)."""
    wanted = [module for module in _modules(model) if module is not None]
    return [name for name, module in model.named_modules() if any(module is target for target in wanted)]


def int8_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}`` of the model's 8-bit embedding and head layers."""
    return {name: module for name, module in model.named_modules() if isinstance(module, INT8_LAYER_TYPES)}


__all__ = [
    "EMBEDDING_BITS",
    "INT8_LAYER_TYPES",
    "check_embedding_bits",
    "dequantize_embeddings",
    "embedding_module_names",
    "embedding_skeletons",
    "int8_modules",
    "quantize_embeddings",
    "required_format_version",
]
