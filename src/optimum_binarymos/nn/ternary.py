"""Ternary (1.58-bit) linear layers with Dual Learnable Ternarization (DLT): latent and packed forms.

Weights are split into groups of ``group_size`` consecutive input columns per output row (the last group of a
row is padded when ``in_features`` is not a multiple of ``group_size``). Each group ``g`` has a learnable scale
``alpha_g`` (``weight_scale``) and shift ``gamma_g`` (``weight_shift``)::

    T   = clamp(round((W - gamma) / alpha), -1, 1)    # (out, in), one trit per weight
    W_q = alpha * T + gamma                            # what the layer multiplies by
    y   = x @ W_q^T + bias
        = sum_g alpha_g * (x_g @ T_g^T) + gamma_g * sum(x_g) + bias    # the packed form computes this

The latent form trains ``W``, ``alpha`` and ``gamma``; the packed form stores ``T`` at 2 or 1.6 bits
(:mod:`optimum_binarymos.packing`) and ``alpha``/``gamma`` in the model dtype.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.dispatch import KernelBackendMixin
from ..kernels.ternary import ternary_matmul
from ..packing import (
    CODE_PACKINGS,
    PACKED_DTYPE,
    grouped_ratio,
    pack_ternary,
    round_ternary,
    ternarize,
    ternary_groups,
    ternary_packed_columns,
    unpack_ternary,
)
from ..recompute import linear_recomputing_weight
from .inputs import require_float_input

#: Default number of input columns per group.
DEFAULT_GROUP_SIZE = 128

#: Default TWN threshold factor: weights with ``|W - gamma| > 0.7 * mean|W - gamma|`` start as +-1.
DEFAULT_INIT_THRESHOLD = 0.7

#: How the shift ``gamma`` starts: the group mean (DLT's default) or zero (symmetric TWN).
SHIFT_INITS = ("mean", "zero")


class _DualTernarize(torch.autograd.Function):
    """``W_q = alpha * T + gamma`` with the LSQ-style gradients of DLT.

    With ``v = (W - gamma) / alpha`` and ``T = clamp(round(v), -1, 1)``, ``round`` is treated as the identity
    (straight-through) and ``clamp`` keeps its true derivative, so "inside" means ``|v| < 1``:

    * ``d W_q / d W     = 1`` inside, ``0`` outside (the clipped STE);
    * ``d W_q / d alpha = T - v`` inside, ``T`` outside (LSQ's step-size gradient);
    * ``d W_q / d gamma = 1 - alpha * (1 / alpha) = 0`` inside, ``1`` outside (LSQ+'s offset gradient: inside,
      moving gamma moves ``W - gamma`` and ``gamma`` by opposite amounts).

    The alpha and gamma gradients are summed over the real columns of each group; padding columns get none.
    """

    @staticmethod
    def forward(ctx, weight, scale, shift, group_size: int):
        ctx.group_size = group_size
        ctx.save_for_backward(weight, scale, shift)
        ratio = grouped_ratio(weight, scale, shift, group_size)
        quantized = scale.float().unsqueeze(-1) * round_ternary(ratio) + shift.float().unsqueeze(-1)
        return quantized.flatten(1)[:, : weight.shape[1]].to(weight.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        weight, scale, shift = ctx.saved_tensors
        in_features = weight.shape[1]
        ratio = grouped_ratio(weight, scale, shift, ctx.group_size)
        trits = round_ternary(ratio.clone())
        inside = ratio.abs() < 1
        padded_cols = ratio.shape[1] * ratio.shape[2] - in_features
        # Zero gradient in the padding columns keeps them out of the per-group sums.
        grad = F.pad(grad_output.float(), (0, padded_cols)).view_as(ratio)
        grad_weight = grad * inside
        grad_scale = (grad * torch.where(inside, trits - ratio, trits)).sum(-1)
        grad_shift = (grad * ~inside).sum(-1)
        return (
            grad_weight.flatten(1)[:, :in_features].to(weight.dtype),
            grad_scale.to(scale.dtype),
            grad_shift.to(shift.dtype),
            None,
        )


def ternarize_ste(
    weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, group_size: int
) -> torch.Tensor:
    """``alpha * T + gamma`` of a ``(out, in)`` weight with per-group ``(out, groups)`` scale/shift, in
    ``weight``'s dtype, differentiable in all three (gradients in :class:`_DualTernarize`)."""
    return _DualTernarize.apply(weight, scale, shift, group_size)


def _ternarized_weight(
    weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    return ternarize_ste(weight, scale, shift, group_size).to(dtype)


@torch.no_grad()
def twn_init(
    weight: torch.Tensor,
    group_size: int = DEFAULT_GROUP_SIZE,
    threshold: float = DEFAULT_INIT_THRESHOLD,
    shift_init: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN-style initial ``(scale, shift)`` per group, computed in float32 over the real columns only.

    ``gamma`` = group mean (or 0), ``delta = threshold * mean|W - gamma|``, ``alpha`` = mean of the
    ``|W - gamma|`` above ``delta`` (TWN's optimal scale for that support). A constant group gets a tiny
    positive ``alpha``: its trits are then 0 and ``W_q = gamma`` exactly.

    Args:
        weight: ``(out_features, in_features)`` float tensor.

    Returns:
        ``(scale, shift)``, each ``(out_features, ceil(in_features / group_size))`` float32.
    """
    if weight.ndim != 2:
        raise ValueError(f"twn_init expects a 2-D weight, got shape {tuple(weight.shape)}")
    if shift_init not in SHIFT_INITS:
        raise ValueError(f"shift_init must be one of {list(SHIFT_INITS)}, got {shift_init!r}")
    out_features, in_features = weight.shape
    groups = ternary_groups(in_features, group_size)
    padding = groups * group_size - in_features
    values = F.pad(weight.float(), (0, padding)).view(out_features, groups, group_size)
    real = F.pad(torch.ones(in_features, device=weight.device), (0, padding)).view(1, groups, group_size)
    count = real.sum(-1)  # (1, groups)
    if shift_init == "mean":
        shift = values.sum(-1) / count
    else:
        shift = torch.zeros(out_features, groups, device=weight.device)
    distance = (values - shift.unsqueeze(-1)).abs() * real
    delta = threshold * distance.sum(-1, keepdim=True) / count.unsqueeze(-1)
    above = (distance > delta) & (real > 0)
    above_count = above.sum(-1)
    scale = torch.where(
        above_count > 0,
        (distance * above).sum(-1) / above_count.clamp_min(1),
        distance.sum(-1) / count,
    )
    return scale.clamp_min(torch.finfo(weight.dtype).tiny), shift


class _GroupedTernaryMixin(nn.Module):
    """Shape bookkeeping, per-group parameters and bias shared by both forms."""

    in_features: int
    out_features: int
    group_size: int

    def _init_groups(self, in_features, out_features, group_size, bias, device, dtype) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        groups = ternary_groups(in_features, group_size)
        factory = {"device": device, "dtype": dtype}
        self.weight_scale = nn.Parameter(torch.ones(out_features, groups, **factory))
        self.weight_shift = nn.Parameter(torch.zeros(out_features, groups, **factory))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, **factory))
        else:
            self.register_parameter("bias", None)

    @property
    def compute_dtype(self) -> torch.dtype:
        """Float dtype the layer computes in (the dtype of its scales)."""
        return self.weight_scale.dtype

    @property
    def num_groups(self) -> int:
        return self.weight_scale.shape[1]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )


class TernaryLinear(_GroupedTernaryMixin):
    """Trainable DLT layer holding a latent float weight.

    Parameters: ``weight`` ``(out, in)`` (latent; only its ternarization is used in forward),
    ``weight_scale`` (alpha) and ``weight_shift`` (gamma) ``(out, ceil(in / group_size))``, ``bias`` ``(out,)``.
    Forward: ``y = x @ (alpha * T + gamma)^T + bias`` for ``x`` of shape ``(..., in)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int = DEFAULT_GROUP_SIZE,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self._init_groups(in_features, out_features, group_size, bias, device, dtype)

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        group_size: int = DEFAULT_GROUP_SIZE,
        init_threshold: float = DEFAULT_INIT_THRESHOLD,
        shift_init: str = "mean",
    ) -> TernaryLinear:
        """Build a layer from a float ``(out, in)`` weight with TWN-initialized scales and shifts (:func:`twn_init`)."""
        out_features, in_features = weight.shape
        layer = cls(
            in_features, out_features, group_size, bias is not None, device=weight.device, dtype=weight.dtype
        )
        layer.load_float_weight(weight, bias, init_threshold, shift_init)
        return layer

    @torch.no_grad()
    def load_float_weight(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        init_threshold: float = DEFAULT_INIT_THRESHOLD,
        shift_init: str = "mean",
    ) -> None:
        """Set the latent weight and initialize ``alpha``/``gamma`` from it."""
        self.weight.copy_(weight)
        scale, shift = twn_init(weight, self.group_size, init_threshold, shift_init)
        self.weight_scale.copy_(scale)
        self.weight_shift.copy_(shift)
        if bias is not None:
            self.bias.copy_(bias)

    def quantized_weight(self) -> torch.Tensor:
        """``alpha * T + gamma`` ``(out, in)`` in the weight's dtype, with the DLT gradients."""
        return ternarize_ste(self.weight, self.weight_scale, self.weight_shift, self.group_size)

    @torch.no_grad()
    def trits(self) -> torch.Tensor:
        """``T`` as an ``(out, in)`` ``int8`` tensor of -1, 0, +1."""
        return ternarize(self.weight, self.weight_scale, self.weight_shift, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_float_input(x, self)
        # The dense W_q is made again in backward rather than kept from forward to backward.
        make_weight = partial(_ternarized_weight, group_size=self.group_size, dtype=x.dtype)
        y = linear_recomputing_weight(x, make_weight, self.weight, self.weight_scale, self.weight_shift)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y


class PackedTernaryLinear(KernelBackendMixin, _GroupedTernaryMixin):
    """Inference DLT layer: trits packed at 2 bits (``"2bit"``) or 1.6 bits (``"base3"``), scales in float.

    Tensors: ``weight`` ``uint8 (out, ceil(in / per_byte))`` (a buffer of packed codes, layout in
    :mod:`optimum_binarymos.packing`; named ``weight`` so that plain transformers fails on the shape instead
    of loading a wrong model), ``weight_scale`` and ``weight_shift`` ``(out, ceil(in / group_size))``,
    ``bias`` ``(out,)``. Forward: ``y = sum_g alpha_g * (x_g @ T_g^T) + gamma_g * sum(x_g) + bias`` through
    :func:`optimum_binarymos.kernels.ternary.ternary_matmul` (Triton on GPU, torch elsewhere).

    ``kernel_backend`` (``"auto"``, ``"triton"`` or ``"torch"``; :mod:`optimum_binarymos.kernels.dispatch`) chooses
    the kernels: set it here, or for a whole model with :func:`optimum_binarymos.kernels.set_kernel_backend`;
    unset, it is ``BINARYMOS_BACKEND`` (default ``"auto"``) read at the layer's first use.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int = DEFAULT_GROUP_SIZE,
        bias: bool = False,
        code_packing: str = CODE_PACKINGS[0],
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.code_packing = code_packing
        columns = ternary_packed_columns(in_features, code_packing)
        self.register_buffer("weight", torch.zeros(out_features, columns, device=device, dtype=PACKED_DTYPE))
        self._init_groups(in_features, out_features, group_size, bias, device, dtype)

    @classmethod
    @torch.no_grad()
    def from_latent(cls, latent: TernaryLinear, code_packing: str = CODE_PACKINGS[0]) -> PackedTernaryLinear:
        """Pack a trained :class:`TernaryLinear`; the result computes the same function."""
        packed = cls(
            latent.in_features,
            latent.out_features,
            latent.group_size,
            latent.bias is not None,
            code_packing,
            device=latent.weight_scale.device,
            dtype=latent.weight_scale.dtype,
        )
        packed.weight.copy_(pack_ternary(latent.trits(), code_packing))
        packed.weight_scale.copy_(latent.weight_scale)
        packed.weight_shift.copy_(latent.weight_shift)
        if latent.bias is not None:
            packed.bias.copy_(latent.bias)
        return packed.requires_grad_(False)

    def trits(self) -> torch.Tensor:
        """``T`` as an ``(out, in)`` ``int8`` tensor of -1, 0, +1."""
        return unpack_ternary(self.weight, self.in_features, self.code_packing)

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The float weight ``alpha * T + gamma`` ``(out, in)`` in the layer's dtype (for inspection)."""
        trits = self.trits().float()
        padding = self.num_groups * self.group_size - self.in_features
        grouped = F.pad(trits, (0, padding)).view(self.out_features, self.num_groups, self.group_size)
        values = grouped * self.weight_scale.float().unsqueeze(-1) + self.weight_shift.float().unsqueeze(-1)
        return values.flatten(1)[:, : self.in_features].to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_float_input(x, self)
        y = ternary_matmul(
            x,
            self.weight,
            self.weight_scale,
            self.weight_shift,
            self.in_features,
            self.group_size,
            self.code_packing,
            self.kernel_backend,
        )
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, code_packing={self.code_packing!r}"
