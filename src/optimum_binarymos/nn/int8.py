"""8-bit token embeddings and output head (``embedding_bits=8``): int8 codes with one float scale per row.

On a small model the embedding table is most of the bytes (SmolLM2-135M: 49152 x 576, 82 % of a packed 1-bit
checkpoint) and, as the ``lm_head`` tied to it, the largest product of every decoded token. Both layers store
``weight`` ``int8 (rows, hidden)`` and ``weight_scale`` ``(rows,)`` (layout: :func:`optimum_binarymos.packing.
quantize_rows`); what they share with the 4-bit layers is in :mod:`.rows`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import ops
from .rows import RowQuantizedEmbedding, RowQuantizedLinear, check_embedding, check_head

__all__ = ["INT8_LAYER_TYPES", "Int8Embedding", "Int8Linear", "check_embedding", "check_head"]


class Int8Embedding(RowQuantizedEmbedding):
    """Token embeddings from 8-bit codes: ``(...)`` token ids -> ``(..., hidden)`` in ``weight_scale``'s dtype."""

    bits = 8

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input_ids, self.weight, self.padding_idx)
        out = rows.to(self.weight_scale.dtype) * self.weight_scale[input_ids].unsqueeze(-1)
        return out if self.embed_scale is None else out * self.embed_scale


class Int8Linear(RowQuantizedLinear):
    """Output head from 8-bit codes: ``(..., in)`` -> ``(..., out)``, ``y = (x @ Q^T) * scale + bias``, through
    ``optimum_binarymos::int8_linear``."""

    bits = 8
    kernel = ops.int8_linear


#: The 8-bit layer classes.
INT8_LAYER_TYPES = (Int8Embedding, Int8Linear)
