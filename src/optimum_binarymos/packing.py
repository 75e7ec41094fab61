"""The one place that knows how quantized weights are laid out in memory and on disk.

Layout of binarized weights (specified for other runtimes in ``docs/FORMAT.md``):

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

#: Newest version of the BinaryMoS on-disk layout, the largest this library reads. Readers refuse checkpoints with
#: a larger number. Version 2 added 8-bit embeddings (:func:`quantize_rows`), version 3 4-bit ones
#: (:func:`quantize_groups4`); a checkpoint is written with the oldest version that holds it (1 with float
#: embeddings, :data:`FIRST_FORMAT_VERSION`), so that older readers keep reading what they can.
FORMAT_VERSION = 3

#: The version written for checkpoints that use nothing newer (float embeddings), for either method.
FIRST_FORMAT_VERSION = 1

#: The first version of either layout with 8-bit embeddings (``embedding_bits=8``).
ROWS_FORMAT_VERSION = 2

#: The first version of either layout with 4-bit embeddings (``embedding_bits=4``).
GROUPS4_FORMAT_VERSION = 3

#: Weights per byte of the packed sign tensor.
SIGNS_PER_BYTE = 8

#: dtype of the packed sign tensor.
PACKED_DTYPE = torch.uint8

_BIT_POSITIONS = torch.arange(SIGNS_PER_BYTE, dtype=torch.uint8)


def packed_columns(in_features: int) -> int:
    """Number of bytes per row needed to hold ``in_features`` signs."""
    return -(-in_features // SIGNS_PER_BYTE)


def sign_with_ties(weight: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``weight >= 0`` and ``-1`` where ``weight < 0``, in ``weight``'s dtype.

    The one tie rule: ``0 -> +1`` (``-0.0`` too). NaN stays NaN.
    """
    # sign() maps 0 (and -0.0) to 0; 2 * sign + 1 is then 3, 1 or -1, and the clamp leaves +1, +1, -1. Three
    # arithmetic passes, and no bool mask: on CPU the comparison torch.where needs is slower than all three.
    return torch.sign(weight).mul_(2).add_(1).clamp_(-1, 1)


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


# ---------------------------------------------------------------------------------------------------------------
# Ternary (1.58-bit) layout, specified for other runtimes in ``docs/FORMAT_TERNARY.md`` (ternary format version 1).
#
# * A ternarized weight of logical shape ``(out_features, in_features)`` has per-group ``scale`` (alpha) and
#   ``shift`` (gamma), groups of ``group_size`` consecutive input columns, the last group padded; its values are
#   ``scale * T + shift`` with ``T = clamp(round((W - shift) / scale), -1, 1)`` (:func:`ternarize`).
# * Each trit ``T`` is stored as the code ``T + 1`` (0, 1 or 2), packed along the input axis, row-major:
#   - ``"2bit"``: 4 codes per byte, code of column ``k`` in bits ``2 * (k % 4)`` and ``2 * (k % 4) + 1`` of byte
#     ``k // 4`` (least significant pair first); code 3 is never written.
#   - ``"base3"``: 5 codes per byte, byte ``b`` holds ``sum_j code[5 * b + j] * 3**j`` (least significant digit
#     first, so a byte is at most 242).
# * Padding columns (``k >= in_features``) hold code 1 (a zero weight); readers must still ignore them.
# ---------------------------------------------------------------------------------------------------------------

#: Newest version of the ternary on-disk layout (2: 8-bit embeddings, 3: 4-bit ones, as for BinaryMoS).
TERNARY_FORMAT_VERSION = 3

#: Codes per byte of each ternary code packing; the first one is the default.
TRITS_PER_BYTE = {"2bit": 4, "base3": 5}

#: Names of the ternary code packings.
CODE_PACKINGS = tuple(TRITS_PER_BYTE)

#: Stored code of a zero trit, also written in padding columns.
TERNARY_PAD_CODE = 1


def _check_code_packing(code_packing: str) -> int:
    if code_packing not in TRITS_PER_BYTE:
        raise ValueError(f"code_packing must be one of {list(CODE_PACKINGS)}, got {code_packing!r}")
    return TRITS_PER_BYTE[code_packing]


def ternary_groups(in_features: int, group_size: int) -> int:
    """Number of groups of ``group_size`` input columns per row (the last one may be partial)."""
    return -(-in_features // group_size)


def ternary_packed_columns(in_features: int, code_packing: str = "2bit") -> int:
    """Bytes per row needed to hold ``in_features`` codes with ``code_packing``."""
    return -(-in_features // _check_code_packing(code_packing))


def grouped_ratio(
    weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, group_size: int
) -> torch.Tensor:
    """``(W - shift) / scale`` per group, in float32.

    Args:
        weight: ``(out_features, in_features)`` float tensor.
        scale, shift: ``(out_features, groups)`` float tensors, ``groups = ceil(in_features / group_size)``.
        group_size: input columns per group.

    Returns:
        ``(out_features, groups, group_size)`` float32 tensor; the padding columns of the last group (weight
        taken as 0) are garbage that callers drop.
    """
    out_features, in_features = weight.shape
    groups = ternary_groups(in_features, group_size)
    if tuple(scale.shape) != (out_features, groups) or tuple(shift.shape) != (out_features, groups):
        raise ValueError(
            f"scale and shift must have shape {(out_features, groups)} for a {tuple(weight.shape)} weight in groups "
            f"of {group_size}; got {tuple(scale.shape)} and {tuple(shift.shape)}"
        )
    # float32 whatever the storage dtype, so that training and packing compute the same trits.
    padded = torch.nn.functional.pad(weight.float(), (0, groups * group_size - in_features))
    padded = padded.view(out_features, groups, group_size)
    return (padded - shift.float().unsqueeze(-1)) / scale.float().unsqueeze(-1)


def round_ternary(ratio: torch.Tensor) -> torch.Tensor:
    """``clamp(round(ratio), -1, 1)``; ties round half to even, so ``|ratio| == 0.5`` gives 0."""
    return ratio.round().clamp_(-1, 1)


def ternarize(
    weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The trits ``T = clamp(round((W - shift) / scale), -1, 1)`` of a weight, per group.

    Args:
        weight: ``(out_features, in_features)`` float tensor.
        scale, shift: ``(out_features, ceil(in_features / group_size))``.

    Returns:
        ``(out_features, in_features)`` ``int8`` tensor of -1, 0, +1.
    """
    trits = round_ternary(grouped_ratio(weight, scale, shift, group_size))
    return trits.flatten(1)[:, : weight.shape[1]].to(torch.int8)


def pack_ternary(trits: torch.Tensor, code_packing: str = "2bit") -> torch.Tensor:
    """Pack trits into bytes.

    Args:
        trits: ``(out_features, in_features)`` integer or float tensor of -1, 0, +1.
        code_packing: ``"2bit"`` (4 per byte) or ``"base3"`` (5 per byte).

    Returns:
        ``(out_features, ceil(in_features / per_byte))`` ``uint8`` tensor on ``trits``' device.
    """
    per_byte = _check_code_packing(code_packing)
    if trits.ndim != 2:
        raise ValueError(f"pack_ternary expects a 2-D tensor, got shape {tuple(trits.shape)}")
    out_features, in_features = trits.shape
    codes = trits.to(torch.int16) + 1
    if codes.numel() and (codes.min() < 0 or codes.max() > 2):
        raise ValueError("pack_ternary expects values in {-1, 0, +1}; ternarize the weight first")
    padded = ternary_packed_columns(in_features, code_packing) * per_byte
    codes = torch.nn.functional.pad(codes, (0, padded - in_features), value=TERNARY_PAD_CODE)
    codes = codes.view(out_features, -1, per_byte)
    if code_packing == "2bit":
        weights = 1 << (2 * torch.arange(per_byte, device=codes.device, dtype=torch.int16))
    else:
        weights = 3 ** torch.arange(per_byte, device=codes.device, dtype=torch.int16)
    # Digits never overlap (bit pairs, or base-3 digits below 3), so the weighted sum is the packed byte.
    return (codes * weights).sum(dim=-1).to(torch.uint8)


def unpack_ternary(
    packed: torch.Tensor, in_features: int, code_packing: str = "2bit", dtype: torch.dtype = torch.int8
) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`.

    Args:
        packed: ``(out_features, ceil(in_features / per_byte))`` ``uint8`` tensor.
        in_features: logical number of columns (padding columns are dropped).
        code_packing: ``"2bit"`` or ``"base3"``, as packed.
        dtype: dtype of the result (integer or float).

    Returns:
        ``(out_features, in_features)`` tensor of -1, 0, +1 in ``dtype``.
    """
    per_byte = _check_code_packing(code_packing)
    if packed.dtype != PACKED_DTYPE or packed.ndim != 2:
        raise ValueError(
            f"unpack_ternary expects a 2-D {PACKED_DTYPE} tensor, got {packed.dtype} of shape {tuple(packed.shape)}"
        )
    if packed.shape[1] != ternary_packed_columns(in_features, code_packing):
        raise ValueError(
            f"packed tensor has {packed.shape[1]} bytes per row but in_features={in_features} needs "
            f"{ternary_packed_columns(in_features, code_packing)} with {code_packing!r} code packing"
        )
    wide = packed.to(torch.int16).unsqueeze(-1)
    positions = torch.arange(per_byte, device=packed.device, dtype=torch.int16)
    if code_packing == "2bit":
        codes = (wide >> (2 * positions)) & 3
    else:
        codes = torch.div(wide, 3**positions, rounding_mode="floor") % 3
    codes = codes.reshape(packed.shape[0], -1)[:, :in_features]
    return (codes - 1).to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# 8-bit rows (embeddings and lm_head, ``embedding_bits=8``; format version 2 of both layouts, ``docs/FORMAT.md``
# section 9).
#
# * A matrix of shape ``(rows, columns)`` (an embedding table ``(vocab, hidden)``, an ``lm_head`` weight
#   ``(vocab, hidden)``) is stored as an ``int8`` tensor ``Q`` of the same shape plus one float scale per row,
#   ``weight_scale`` ``(rows,)`` in the model's float dtype.
# * Its values are ``Q[r, c] * weight_scale[r]``, with ``Q = clamp(round(W / weight_scale), -127, 127)`` and
#   ``weight_scale[r] = max_c |W[r, c]| / 127`` (rounded to the stored dtype first, so the codes are those of the
#   stored scale). ``-128`` is never written; an all-zero row has scale 0 and codes 0.
# ---------------------------------------------------------------------------------------------------------------

#: dtype of the 8-bit codes of :func:`quantize_rows`.
ROW_CODE_DTYPE = torch.int8

#: Largest code magnitude (symmetric: ``-128`` is never written).
ROW_CODE_MAX = 127


def quantize_rows(weight: torch.Tensor, scale_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric 8-bit codes with one scale per row.

    Args:
        weight: ``(rows, columns)`` float tensor.
        scale_dtype: dtype the scales are stored in (default: ``weight``'s); the codes are computed against the
            stored (rounded) scale.

    Returns:
        ``(codes, scale)``: ``(rows, columns)`` ``int8`` and ``(rows,)`` in ``scale_dtype``, on ``weight``'s device.
    """
    if weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_rows expects a 2-D float tensor, got {weight.dtype} of shape {tuple(weight.shape)}")
    wide = weight.float()
    scale = (wide.abs().amax(dim=1) / ROW_CODE_MAX).to(scale_dtype or weight.dtype)
    divisor = scale.float().unsqueeze(1)
    codes = torch.where(divisor > 0, wide / divisor.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return codes.round_().clamp_(-ROW_CODE_MAX, ROW_CODE_MAX).to(ROW_CODE_DTYPE), scale


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``codes * scale[:, None]``: ``(rows, columns)`` in ``dtype`` (default: ``scale``'s), computed in float32."""
    if codes.dtype != ROW_CODE_DTYPE or codes.ndim != 2 or tuple(scale.shape) != (codes.shape[0],):
        raise ValueError(
            f"dequantize_rows expects (rows, columns) {ROW_CODE_DTYPE} codes and (rows,) scales, got {codes.dtype} "
            f"{tuple(codes.shape)} and {tuple(scale.shape)}"
        )
    return (codes.float() * scale.float().unsqueeze(1)).to(dtype or scale.dtype)


# ---------------------------------------------------------------------------------------------------------------
# 4-bit groups (embeddings and lm_head, ``embedding_bits=4``; format version 3 of both layouts, ``docs/FORMAT.md``
# section 10).
#
# * A matrix of shape ``(rows, columns)`` is cut into groups of 32 consecutive columns (the last one padded with
#   zeros) with one float scale each, ``weight_scale`` ``(rows, ceil(columns / 32))`` in the model's float dtype.
# * Each value is a code ``q`` in ``0..15`` standing for ``(q - 8) * scale``, with
#   ``q - 8 = clamp(round(W / scale), -8, 7)`` against the stored (rounded) scale. The format fixes only that
#   formula; how a writer picks the scale is its own business (see :func:`quantize_groups4`). An all-zero group
#   has scale 0 and codes 8.
# * Codes are stored as ``uint8`` ``(rows, 16 * ceil(columns / 32))``, 16 bytes per group: byte ``i`` of group
#   ``g`` holds column ``32 * g + i`` in its low nibble and column ``32 * g + 16 + i`` in its high nibble, so one
#   16-byte load widens to two runs of 16 consecutive columns. Padding columns hold code 8 (zero).
# ---------------------------------------------------------------------------------------------------------------

#: Columns that share one scale in :func:`quantize_groups4`.
GROUP4_SIZE = 32

#: Range of the 4-bit values ``q - 8``.
GROUP4_VALUE_MIN, GROUP4_VALUE_MAX = -8, 7

#: The code of a zero value (codes are values + 8).
GROUP4_ZERO_CODE = 8

#: Candidate scales of :func:`quantize_groups4`: ``m / t`` for the group's largest-magnitude value ``m``, ``t``
#: from -9 to -6 in steps of 0.25 (``m`` lands near the end of the wider, negative side of the range) and ``t = 7``
#: (plain ``max |W| / 7``), each then refitted by least squares. On SmolLM2-135M's embedding table this cuts the
#: relative error from 0.126 (``max |W| / 7``) to 0.106.
GROUP4_SCALE_DIVISORS = (*(t / 4 for t in range(-36, -23)), 7.0)

#: Rows quantized at a time by :func:`quantize_groups4` (bounds its float32 temporaries).
GROUP4_ROWS_PER_CHUNK = 4096


def groups4_count(columns: int) -> int:
    """Number of 32-column groups (scales per row) of a ``columns``-wide matrix."""
    return -(-columns // GROUP4_SIZE)


def groups4_packed_columns(columns: int) -> int:
    """Bytes per row of the 4-bit codes of a ``columns``-wide matrix (16 per group)."""
    return groups4_count(columns) * GROUP4_SIZE // 2


def quantize_groups4(weight: torch.Tensor, scale_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit codes with one scale per 32 columns, packed two per byte.

    Each group's scale is the one, among :data:`GROUP4_SCALE_DIVISORS`' candidates refitted by least squares and
    rounded to ``scale_dtype``, whose codes give the smallest squared error; the codes are computed against that
    stored scale, so a reader's ``(q - 8) * scale`` is what was measured. Scales may be negative.

    Args:
        weight: ``(rows, columns)`` float tensor.
        scale_dtype: dtype the scales are stored in (default: ``weight``'s).

    Returns:
        ``(codes, scale)``: ``(rows, 16 * G)`` ``uint8`` and ``(rows, G)`` in ``scale_dtype``, ``G =
        ceil(columns / 32)``, on ``weight``'s device.
    """
    if weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(
            f"quantize_groups4 expects a 2-D float tensor, got {weight.dtype} of shape {tuple(weight.shape)}"
        )
    rows, columns = weight.shape
    groups = groups4_count(columns)
    scale_dtype = scale_dtype or weight.dtype
    codes, scales = [], []
    for start in range(0, rows, GROUP4_ROWS_PER_CHUNK):
        chunk = weight[start : start + GROUP4_ROWS_PER_CHUNK].float()
        wide = torch.nn.functional.pad(chunk, (0, groups * GROUP4_SIZE - columns)).view(chunk.shape[0], groups, -1)
        chunk_values, chunk_scale = _best_groups4_scale(wide, scale_dtype)
        codes.append(chunk_values.add_(GROUP4_ZERO_CODE).to(torch.uint8))
        scales.append(chunk_scale)
    values = torch.cat(codes) if codes else torch.zeros(0, groups, GROUP4_SIZE, dtype=torch.uint8)
    scale = torch.cat(scales) if scales else torch.zeros(0, groups, dtype=scale_dtype)
    half = GROUP4_SIZE // 2
    packed = values[..., :half] | (values[..., half:] << 4)
    return packed.reshape(rows, groups * half).to(weight.device), scale.to(weight.device)


def _groups4_values(groups: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(round(W / scale), -8, 7)`` per group (0 where the scale is 0): ``(..., 32)`` float32."""
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale).unsqueeze(-1)
    values = (groups / divisor).round_().clamp_(GROUP4_VALUE_MIN, GROUP4_VALUE_MAX)
    return values.masked_fill_((scale == 0).unsqueeze(-1), 0.0)


def _least_squares_scale(groups: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The scale minimizing ``|W - values * scale|^2`` per group (0 for all-zero values)."""
    energy = values.pow(2).sum(-1)
    return torch.where(energy > 0, (groups * values).sum(-1) / energy.clamp_min(1.0), 0.0)


def _best_groups4_scale(groups: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Values (``(rows, G, 32)`` float32 in -8..7) and stored scales (``(rows, G)``) with the least error."""
    largest = groups.gather(-1, groups.abs().argmax(-1, keepdim=True)).squeeze(-1)
    best_values = best_scale = best_error = None
    for divisor in GROUP4_SCALE_DIVISORS:
        values = _groups4_values(groups, largest / divisor)
        stored = _least_squares_scale(groups, values).to(scale_dtype)
        values = _groups4_values(groups, stored.float())
        error = (groups - values * stored.float().unsqueeze(-1)).pow_(2).sum(-1)
        if best_error is None:
            best_values, best_scale, best_error = values, stored, error
            continue
        better = error < best_error
        best_values = torch.where(better.unsqueeze(-1), values, best_values)
        best_scale = torch.where(better, stored, best_scale)
        best_error = torch.minimum(error, best_error)
    return best_values, best_scale


def dequantize_groups4(
    codes: torch.Tensor, scale: torch.Tensor, columns: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Values of :func:`quantize_groups4`'s codes: ``(rows, columns)`` in ``dtype`` (default: ``scale``'s),
    computed in float32.

    Args:
        codes: ``(rows, 16 * G)`` ``uint8``.
        scale: ``(rows, G)``.
        columns: logical number of columns (padding columns are dropped).
    """
    groups = groups4_count(columns)
    rows = codes.shape[0] if codes.ndim == 2 else -1
    if (
        codes.dtype != PACKED_DTYPE
        or codes.ndim != 2
        or codes.shape[1] != groups4_packed_columns(columns)
        or tuple(scale.shape) != (rows, groups)
    ):
        raise ValueError(
            f"dequantize_groups4 expects ({rows}, {groups4_packed_columns(columns)}) {PACKED_DTYPE} codes and "
            f"({rows}, {groups}) scales for {columns} columns, got {codes.dtype} {tuple(codes.shape)} and "
            f"{tuple(scale.shape)}"
        )
    grouped = codes.view(rows, groups, GROUP4_SIZE // 2)
    nibbles = torch.cat([grouped & 15, grouped >> 4], dim=2).float().sub_(GROUP4_ZERO_CODE)
    values = nibbles.mul_(scale.float().unsqueeze(2)).view(rows, groups * GROUP4_SIZE)[:, :columns]
    return values.to(dtype or scale.dtype)


# ---------------------------------------------------------------------------------------------------------------
# The two row layouts by their number of bits (``embedding_bits``).
# ---------------------------------------------------------------------------------------------------------------

#: Values of ``embedding_bits`` that have a row layout.
ROW_LAYOUT_BITS = (8, 4)


def _check_row_layout_bits(bits: int) -> None:
    if bits not in ROW_LAYOUT_BITS:
        raise ValueError(f"no row layout has {bits} bits; the layouts are {ROW_LAYOUT_BITS}")


def row_layout_shapes(bits: int, rows: int, columns: int) -> tuple[tuple[int, int], torch.dtype, tuple[int, ...]]:
    """``(codes shape, codes dtype, scale shape)`` of a ``(rows, columns)`` matrix in the ``bits``-bit layout."""
    _check_row_layout_bits(bits)
    if bits == 8:
        return (rows, columns), ROW_CODE_DTYPE, (rows,)
    return (rows, groups4_packed_columns(columns)), PACKED_DTYPE, (rows, groups4_count(columns))


def quantize_row_layout(
    weight: torch.Tensor, bits: int, scale_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scale)`` of ``weight`` in the ``bits``-bit layout (:func:`quantize_rows` or
    :func:`quantize_groups4`)."""
    _check_row_layout_bits(bits)
    return quantize_rows(weight, scale_dtype) if bits == 8 else quantize_groups4(weight, scale_dtype)


def dequantize_row_layout(
    codes: torch.Tensor, scale: torch.Tensor, columns: int, bits: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``(rows, columns)`` values of a ``bits``-bit layout (:func:`dequantize_rows` or :func:`dequantize_groups4`)."""
    _check_row_layout_bits(bits)
    if bits == 8:
        return dequantize_rows(codes, scale, dtype)
    return dequantize_groups4(codes, scale, columns, dtype)
