"""8-bit and 4-bit embeddings and output head for any method (``embedding_bits``): converting, loading, dequantizing.

The model's own accessors (``get_input_embeddings`` / ``set_input_embeddings`` and the output ones) find and
replace the two modules, so this works for any architecture that implements them. A model whose head is tied to
its input embeddings keeps one table of codes: the head's ``weight`` is the embedding's (transformers ties it again
on load, as for the float model) and its ``weight_scale`` a copy (its scales), saved with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn.int4 import INT4_LAYER_TYPES, Int4Embedding, Int4Linear
from ..nn.int8 import INT8_LAYER_TYPES, Int8Embedding, Int8Linear
from ..nn.rows import RowQuantizedEmbedding, RowQuantizedLinear, check_embedding, check_head
from ..packing import FIRST_FORMAT_VERSION, GROUPS4_FORMAT_VERSION, ROWS_FORMAT_VERSION

#: Values of ``embedding_bits``: None keeps the embeddings and ``lm_head`` in float.
EMBEDDING_BITS = (None, 8, 4)

#: ``{bits: (embedding layer, head layer)}``.
ROW_LAYERS = {8: (Int8Embedding, Int8Linear), 4: (Int4Embedding, Int4Linear)}

#: Every quantized embedding and head layer class.
ROW_LAYER_TYPES = (*INT8_LAYER_TYPES, *INT4_LAYER_TYPES)

_FORMAT_VERSIONS = {None: FIRST_FORMAT_VERSION, 8: ROWS_FORMAT_VERSION, 4: GROUPS4_FORMAT_VERSION}


def check_embedding_bits(embedding_bits: Any) -> None:
    """Refuse anything but ``None``, ``8`` or ``4``."""
    if embedding_bits not in EMBEDDING_BITS or isinstance(embedding_bits, bool):
        raise ValueError(
            "embedding_bits must be None (embeddings and lm_head in float), 8 (int8 with one scale per row) or 4 "
            f"(4-bit codes with one scale per 32 columns); got {embedding_bits!r}"
        )


def required_format_version(embedding_bits: int | None) -> int:
    """The oldest format version that can hold a checkpoint with these embeddings (1 for float ones)."""
    return _FORMAT_VERSIONS[embedding_bits]


def _modules(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    get_input = getattr(model, "get_input_embeddings", None)
    get_output = getattr(model, "get_output_embeddings", None)
    return (get_input() if get_input else None), (get_output() if get_output else None)


def _require_accessors(model: nn.Module, embedding: nn.Module | None) -> None:
    if embedding is None:
        raise TypeError(
            f"embedding_bits needs the model's input embeddings, but {type(model).__name__} has no "
            "get_input_embeddings(); use embedding_bits=None."
        )


def quantize_embeddings(model: nn.Module, bits: int = 8) -> int:
    """Replace a float model's input embeddings and output head with their ``bits``-bit layers, in place.

    Layers in that layout already are left alone. A head tied to the input embeddings shares their codes.

    Returns:
        The number of modules replaced (0, 1 or 2).

    Raises:
        TypeError: when the embeddings or the head are not plain ``nn.Embedding`` / ``nn.Linear`` modules, or are
            quantized in another layout (before anything changes).
    """
    check_embedding_bits(bits)
    embedding_type, head_type = ROW_LAYERS[bits]
    embedding, head = _modules(model)
    _require_accessors(model, embedding)
    # Both modules are checked before either changes.
    for module, wanted, check in ((embedding, embedding_type, check_embedding), (head, head_type, check_head)):
        if module is None or isinstance(module, wanted):
            continue
        if isinstance(module, ROW_LAYER_TYPES):
            raise TypeError(
                f"{type(module).__name__} is already quantized with {module.bits} bits; dequantize the model "
                f"before storing it with embedding_bits={bits}"
            )
        check(module)
    tied = head is not None and head.weight is embedding.weight
    replaced = 0
    if not isinstance(embedding, embedding_type):
        embedding = embedding_type.from_float(embedding)
        model.set_input_embeddings(embedding)
        replaced += 1
    if head is not None and not isinstance(head, head_type):
        model.set_output_embeddings(head_type.from_float(head, tied_to=embedding if tied else None))
        replaced += 1
    return replaced


def embedding_skeletons(model: nn.Module, bits: int, dtype: torch.dtype | None = None) -> None:
    """Before loading an ``embedding_bits=bits`` checkpoint: uninitialized ``bits``-bit layers in place of the input
    embeddings and the output head (on the meta device, like the rest of the model being loaded)."""
    check_embedding_bits(bits)
    embedding_type, head_type = ROW_LAYERS[bits]
    embedding, head = _modules(model)
    _require_accessors(model, embedding)
    new_embedding = embedding_type.skeleton_of(embedding, dtype)
    new_head = head_type.skeleton_of(head, dtype) if head is not None else None
    model.set_input_embeddings(new_embedding)
    if new_head is not None:
        model.set_output_embeddings(new_head)


def dequantize_embeddings(model: nn.Module, dtype: torch.dtype | None = None) -> None:
    """Back to float ``nn.Embedding`` / ``nn.Linear`` modules with the same values.

    A tied head stays tied, unless the embeddings had an ``embed_scale`` (folded into the float table, so the
    head gets its own copy of the unscaled values).
    """
    embedding, head = _modules(model)
    tied = (
        isinstance(head, RowQuantizedLinear)
        and isinstance(embedding, RowQuantizedEmbedding)
        and head.weight is embedding.weight
    )
    shares_values = tied and embedding.embed_scale is None
    if isinstance(embedding, RowQuantizedEmbedding):
        embedding = embedding.dequantize(dtype)
        model.set_input_embeddings(embedding)
    if isinstance(head, RowQuantizedLinear):
        float_head = head.dequantize(dtype)
        if shares_values:
            float_head.weight = embedding.weight
        model.set_output_embeddings(float_head)


def embedding_module_names(model: nn.Module) -> list[str]:
    """Names of the model's input embeddings and output head (those ``embedding_bits`` stores quantized)."""
    wanted = [module for module in _modules(model) if module is not None]
    return [name for name, module in model.named_modules() if any(module is target for target in wanted)]


def row_quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}`` of the model's quantized (8-bit or 4-bit) embedding and head layers."""
    return {name: module for name, module in model.named_modules() if isinstance(module, ROW_LAYER_TYPES)}


__all__ = [
    "EMBEDDING_BITS",
    "ROW_LAYERS",
    "ROW_LAYER_TYPES",
    "check_embedding_bits",
    "dequantize_embeddings",
    "embedding_module_names",
    "embedding_skeletons",
    "quantize_embeddings",
    "required_format_version",
    "row_quantized_modules",
]
