"""What the 8-bit and 4-bit embedding and output-head layers share (``embedding_bits=8`` / ``4``).

Both kinds store ``weight`` (codes) and ``weight_scale`` (float scales) in one of the row layouts of
:mod:`optimum_binarymos.packing` (:func:`~optimum_binarymos.packing.row_layout_shapes`); they are frozen (no
gradient reaches the codes), and a head still passes gradients to its input, so adapters train through it. The
concrete layers are in :mod:`.int8` and :mod:`.int4`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..packing import dequantize_row_layout, quantize_row_layout, row_layout_shapes


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


class _RowQuantizedMixin:
    """``weight`` (codes) and ``weight_scale`` (floats) of a ``(rows, columns)`` matrix in the ``bits``-bit layout."""

    #: The layout's number of bits (8 or 4), set by each concrete layer.
    bits: ClassVar[int]
    weight: nn.Parameter
    weight_scale: nn.Parameter

    def _init_rows(self, rows: int, columns: int, device, dtype) -> None:
        self._columns = columns
        codes_shape, codes_dtype, scale_shape = row_layout_shapes(self.bits, rows, columns)
        self.weight = _frozen(torch.zeros(codes_shape, dtype=codes_dtype, device=device))
        self.weight_scale = _frozen(torch.ones(scale_shape, dtype=dtype or torch.get_default_dtype(), device=device))

    @torch.no_grad()
    def _load_rows(self, weight: torch.Tensor) -> None:
        codes, scale = quantize_row_layout(weight, self.bits, self.weight_scale.dtype)
        self.weight.copy_(codes)
        self.weight_scale.copy_(scale)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(rows, columns)`` float weight the layer computes with (``weight_scale``'s dtype by default)."""
        return dequantize_row_layout(self.weight, self.weight_scale, self._columns, self.bits, dtype)


class RowQuantizedEmbedding(_RowQuantizedMixin, nn.Module):
    """Token embeddings from quantized rows: ``(...)`` token ids -> ``(..., hidden)`` in ``weight_scale``'s dtype.

    ``embed_scale`` (a constant factor some architectures, such as Gemma, apply to their embeddings) is kept when
    the float embedding had one.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        embed_scale: float | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self._init_rows(num_embeddings, embedding_dim, device, dtype)
        self.embed_scale = embed_scale

    @classmethod
    def skeleton_of(cls, embedding: nn.Embedding, dtype: torch.dtype | None = None):
        """An uninitialized layer shaped like ``embedding`` (on its device; meta while loading)."""
        check_embedding(embedding)
        return cls(
            embedding.num_embeddings,
            embedding.embedding_dim,
            embedding.padding_idx,
            _embed_scale(embedding),
            device=embedding.weight.device,
            dtype=dtype or embedding.weight.dtype,
        )

    @classmethod
    def from_float(cls, embedding: nn.Embedding):
        """The quantized layer of a float ``nn.Embedding`` (codes and scales of the class's layout)."""
        layer = cls.skeleton_of(embedding)
        layer._load_rows(embedding.weight.detach())
        return layer

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        rows = dequantize_row_layout(
            self.weight.index_select(0, flat), self.weight_scale.index_select(0, flat), self.embedding_dim, self.bits
        )
        out = rows.view(*input_ids.shape, self.embedding_dim)
        return out if self.embed_scale is None else out * self.embed_scale

    def dequantize(self, dtype: torch.dtype | None = None) -> nn.Embedding:
        """The float ``nn.Embedding`` with this layer's values (``embed_scale`` folded in)."""
        weight = self.dequantized_weight(torch.float32)
        if self.embed_scale is not None:
            weight = weight * self.embed_scale
        embedding = nn.Embedding(
            self.num_embeddings, self.embedding_dim, self.padding_idx, device=weight.device,
            dtype=dtype or self.weight_scale.dtype,
        )  # fmt: skip
        with torch.no_grad():
            embedding.weight.copy_(weight)
        return embedding

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.bits}-bit rows"


class RowQuantizedLinear(_RowQuantizedMixin, nn.Module):
    """Output head from quantized rows: ``(..., in)`` -> ``(..., out)``.

    Without a gradient to compute it runs the class's ``kernel`` (a ``torch.ops.optimum_binarymos`` operator, whose
    native CPU kernel reads the codes as they are stored); when autograd must flow to its input (adapters trained
    below it) it multiplies by the dequantized weight instead.
    """

    #: ``kernel(x (M, in), codes, scale, bias) -> (M, out)``, set by each concrete layer.
    kernel: ClassVar[object]

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._init_rows(out_features, in_features, device, dtype)
        self.bias = None
        if bias:
            self.bias = _frozen(torch.zeros(out_features, dtype=self.weight_scale.dtype, device=device))

    @classmethod
    def skeleton_of(cls, linear: nn.Linear, dtype: torch.dtype | None = None):
        """An uninitialized layer shaped like ``linear`` (on its device; meta while loading)."""
        check_head(linear)
        return cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device=linear.weight.device,
            dtype=dtype or linear.weight.dtype,
        )

    @classmethod
    def from_float(cls, linear: nn.Linear, tied_to: RowQuantizedEmbedding | None = None):
        """The quantized layer of a float ``nn.Linear``. With ``tied_to`` (the model ties its head to its input
        embeddings) the codes are that layer's ``weight`` itself and the scales a copy of its ``weight_scale``."""
        layer = cls.skeleton_of(linear)
        if tied_to is not None:
            layer.weight = tied_to.weight
            with torch.no_grad():
                layer.weight_scale.copy_(tied_to.weight_scale)
        else:
            layer._load_rows(linear.weight.detach())
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        flat = x.reshape(-1, self.in_features)
        y = type(self).kernel(flat, self.weight, self.weight_scale, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """The float ``nn.Linear`` with this layer's values."""
        dtype = dtype or self.weight_scale.dtype
        linear = nn.Linear(
            self.in_features, self.out_features, self.bias is not None, device=self.weight.device, dtype=dtype
        )
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight(torch.float32))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.bits}-bit rows"


def _embed_scale(embedding: nn.Module) -> float | None:
    scale = getattr(embedding, "embed_scale", None)
    if scale is None:
        return None
    return float(scale.item() if isinstance(scale, torch.Tensor) else scale)


def check_embedding(embedding: nn.Module) -> None:
    """Refuse input embeddings whose forward is not a plain lookup (times a constant ``embed_scale``).

    Raises:
        TypeError: naming the module type, with the way out (``embedding_bits=None``).
    """
    plain = isinstance(embedding, nn.Embedding) and (
        type(embedding).forward is nn.Embedding.forward or _embed_scale(embedding) is not None
    )
    if not plain or embedding.max_norm is not None:
        raise TypeError(
            f"embedding_bits stores nn.Embedding tables; this model's input embeddings are a "
            f"{type(embedding).__name__}, whose forward does more than a lookup. Keep them in float with "
            "embedding_bits=None."
        )


def check_head(linear: nn.Module) -> None:
    """Refuse an output head that is not an ``nn.Linear``.

    Raises:
        TypeError: naming the module type, with the way out (``embedding_bits=None``).
    """
    if type(linear) is not nn.Linear:
        raise TypeError(
            f"embedding_bits stores an nn.Linear output head; this model's is a {type(linear).__name__}. Keep "
            "it in float with embedding_bits=None."
        )
