"""The one place that knows how binarized weights are laid out in memory and on disk.

Layout (format version 1, specified for other runtimes in ``docs/FORMAT.md``):

* A binarized weight of logical shape ``(out_features, in_features)`` is stored as a ``uint8`` tensor of
  shape ``(out_features, ceil(in_features / 8))``, row-major, packed along the input axis.
* Bit ``j`` (least significant bit first) of byte ``b`` in row ``n`` holds the sign of column ``8 * b + j``:
  ``1`` means ``+1`` and ``0`` means ``-1``.
* The tie rule is ``sign(0) = +1``; training uses the same rule (:func:`sign_with_ties`), so the packed model
  computes exactly what the latent model computed.
* When ``in_features`` is not a multiple of 8, the last byte of each row is padded with ``0`` bits; readers must
  ignore columns ``>= in_features``.
"""

from __future__ import annotations

import torch

#: Version of the on-disk layout. Readers refuse checkpoints with a larger number.
FORMAT_VERSION = 1

#: Weights per byte of the packed sign tensor.
SIGNS_PER_BYTE = 8

#: dtype of the packed sign tensor.
PACKED_DTYPE = torch.uint8

_BIT_POSITIONS = torch.arange(SIGNS_PER_BYTE, dtype=torch.uint8)


def packed_columns(in_features: int) -> int:
    """Number of bytes per row needed to hold ``in_features`` signs."""
    return -(-in_features // SIGNS_PER_BYTE)


def sign_with_ties(weight: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``weight >= 0`` and ``-1`` elsewhere, in ``weight``'s dtype (the one tie rule: 0 -> +1)."""
    one = torch.ones((), dtype=weight.dtype, device=weight.device)
    return torch.where(weight >= 0, one, -one)


def pack_signs(weight: torch.Tensor) -> torch.Tensor:
    """Pack the signs of a 2-D weight into bits.

    Args:
        weight: ``(out_features, in_features)`` float tensor (any float dtype, any device).

    Returns:
        ``(out_features, ceil(in_features / 8))`` ``uint8`` tensor on ``weight``'s device.
    """
    if weight.ndim != 2:
        raise ValueError(f"pack_signs expects a 2-D weight, got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    padded = packed_columns(in_features) * SIGNS_PER_BYTE
    bits = (weight >= 0).to(torch.uint8)
    if padded != in_features:
        bits = torch.nn.functional.pad(bits, (0, padded - in_features))
    bits = bits.view(out_features, -1, SIGNS_PER_BYTE)
    shifts = _BIT_POSITIONS.to(weight.device)
    # Each bit lands on its own position, so the sum over the byte axis is a bitwise OR.
    return (bits << shifts).sum(dim=-1, dtype=torch.uint8)


def unpack_signs(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`pack_signs`.

    Args:
        packed: ``(out_features, ceil(in_features / 8))`` ``uint8`` tensor.
        in_features: logical number of columns (padding columns are dropped).
        dtype: float dtype of the result.

    Returns:
        ``(out_features, in_features)`` tensor of ``+1`` / ``-1`` in ``dtype``.
    """
    if packed.dtype != PACKED_DTYPE or packed.ndim != 2:
        raise ValueError(
            f"unpack_signs expects a 2-D {PACKED_DTYPE} tensor, got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    if packed.shape[1] != packed_columns(in_features):
        raise ValueError(
            f"packed tensor has {packed.shape[1]} bytes per row but in_features={in_features} needs "
            f"{packed_columns(in_features)}"
        )
    shifts = _BIT_POSITIONS.to(packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    bits = bits.reshape(packed.shape[0], -1)[:, :in_features]
    return bits.to(dtype) * 2 - 1
