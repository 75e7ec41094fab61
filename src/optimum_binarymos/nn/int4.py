"""4-bit token embeddings and output head (``embedding_bits=4``): codes with one float scale per 32 columns.

Half the bytes of the 8-bit rows (4.5 bits per value with bfloat16 scales): on SmolLM2-135M the tied 49152 x 576
table shrinks from 27 MiB to 17 MiB, which is what takes a packed 1-bit checkpoint past 7x smaller than float16.
Both layers store ``weight`` ``uint8 (rows, 16 * ceil(hidden / 32))`` and ``weight_scale`` ``(rows, ceil(hidden /
32))`` (layout: :func:`optimum_binarymos.packing.quantize_groups4`); what they share with the 8-bit layers is in
:mod:`.rows`.
"""

from __future__ import annotations

from ..kernels import ops
from .rows import RowQuantizedEmbedding, RowQuantizedLinear

__all__ = ["INT4_LAYER_TYPES", "Int4Embedding", "Int4Linear"]


class Int4Embedding(RowQuantizedEmbedding):
    """Token embeddings from 4-bit codes: ``(...)`` token ids -> ``(..., hidden)`` in ``weight_scale``'s dtype
    (each looked-up row dequantized in float32)."""

    bits = 4


class Int4Linear(RowQuantizedLinear):
    """Output head from 4-bit codes: ``(..., in)`` -> ``(..., out)``, ``y = x @ W^T + bias``, through
    ``optimum_binarymos::int4_linear``."""

    bits = 4
    kernel = ops.int4_linear


#: The 4-bit layer classes.
INT4_LAYER_TYPES = (Int4Embedding, Int4Linear)
