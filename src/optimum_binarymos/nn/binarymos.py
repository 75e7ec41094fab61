"""BinaryMoS linear layers: the latent (trainable) form and the packed (inference) form.

Both compute, for tokens ``x`` of shape ``(..., in_features)``::

    g     = softmax(x @ router_weight^T)           # (..., E), in float32; absent when E == 1
    s_in  = g @ scale_in                           # (..., in_features)
    s_out = g @ scale_out                          # (..., out_features)
    y     = ((x * s_in) @ sign(W)^T) * s_out + bias

They differ only in where ``sign(W)`` comes from: a float latent weight through a straight-through estimator,
or bits packed by :mod:`optimum_binarymos.packing`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ..kernels import binarymos_linear
from ..kernels.dispatch import ActivationBitsMixin, KernelBackendMixin
from ..kernels.torch_backend import router_gates
from ..packing import PACKED_DTYPE, pack_signs, packed_columns, unpack_signs
from ..recompute import linear_recomputing_weight
from .inputs import require_float_input
from .ste import binarize_ste
from .svid import DEFAULT_SVID_ITERATIONS, svid_rank1


def _latent_signs(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return binarize_ste(weight).to(dtype)


class _MixtureOfScalesMixin(nn.Module):
    """Scaling experts, router and bias shared by both forms; subclasses provide :meth:`signs`."""

    in_features: int
    out_features: int
    num_experts: int

    def _init_scales(self, num_experts: int, bias: bool, device, dtype) -> None:
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.num_experts = num_experts
        factory = {"device": device, "dtype": dtype}
        self.scale_in = nn.Parameter(torch.ones(num_experts, self.in_features, **factory))
        self.scale_out = nn.Parameter(torch.ones(num_experts, self.out_features, **factory))
        if num_experts > 1:
            self.router_weight = nn.Parameter(torch.empty(num_experts, self.in_features, **factory))
            self.reset_router()
        else:
            # One expert is OneBit's static dual scaling: no router at all.
            self.register_parameter("router_weight", None)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, **factory))
        else:
            self.register_parameter("bias", None)

    @torch.no_grad()
    def reset_router(self) -> None:
        """``nn.Linear``'s default init. Never zero: with identical experts a zero router gets no gradient."""
        if self.router_weight is not None and self.router_weight.device.type != "meta":
            nn.init.kaiming_uniform_(self.router_weight, a=math.sqrt(5))

    @property
    def compute_dtype(self) -> torch.dtype:
        """Float dtype the layer computes in (the dtype of its scales)."""
        return self.scale_in.dtype

    def router_gates(self, x: torch.Tensor) -> torch.Tensor | None:
        """Softmax mixing weights ``(..., E)`` in float32, or ``None`` for a single expert."""
        if self.router_weight is None:
            return None
        return router_gates(x, self.router_weight)  # the kernels' formula: logits in x's dtype, softmax in float32

    def token_scales(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-adaptive scales ``(s_in, s_out)`` of shapes ``(..., in)`` and ``(..., out)`` (or ``(in,)``, ``(out,)``)."""
        gates = self.router_gates(x)
        if gates is None:
            return self.scale_in[0], self.scale_out[0]
        gates = gates.to(self.scale_in.dtype)
        return gates @ self.scale_in, gates @ self.scale_out

    def sign_recipe(self, dtype: torch.dtype) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]:
        """A function and the tensors it takes that make ``sign(W)`` ``(out_features, in_features)`` in ``dtype``.

        Forward calls it once, and backward once more instead of keeping the dense signs
        (:func:`~optimum_binarymos.recompute.linear_recomputing_weight`).
        """
        raise NotImplementedError

    def signs(self, dtype: torch.dtype) -> torch.Tensor:
        """``(out_features, in_features)`` tensor of ``+1``/``-1`` in ``dtype``."""
        make_signs, inputs = self.sign_recipe(dtype)
        return make_signs(*inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_float_input(x, self)
        scale_in, scale_out = self.token_scales(x)
        # Scales may be stored in a narrower dtype than the activations; compute in the activations' dtype.
        scaled = x * scale_in.to(x.dtype)
        make_signs, sign_inputs = self.sign_recipe(scaled.dtype)
        y = linear_recomputing_weight(scaled, make_signs, *sign_inputs) * scale_out.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_experts={self.num_experts}, bias={self.bias is not None}"
        )


class BinaryMoSLinear(_MixtureOfScalesMixin):
    """Trainable BinaryMoS layer holding a latent float weight.

    Parameters: ``weight`` ``(out, in)`` (only its sign is used in forward), ``scale_in`` ``(E, in)``,
    ``scale_out`` ``(E, out)``, ``router_weight`` ``(E, in)`` (absent when ``E == 1``), ``bias`` ``(out,)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_experts: int = 4,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self._init_scales(num_experts, bias, device, dtype)

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        num_experts: int = 4,
        svid_iterations: int = DEFAULT_SVID_ITERATIONS,
    ) -> BinaryMoSLinear:
        """Build a layer from a float ``(out, in)`` weight with SVID-initialized experts and a random router."""
        out_features, in_features = weight.shape
        layer = cls(
            in_features, out_features, num_experts, bias is not None, device=weight.device, dtype=weight.dtype
        )
        layer.load_float_weight(weight, bias, svid_iterations)
        return layer

    @torch.no_grad()
    def load_float_weight(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        svid_iterations: int = DEFAULT_SVID_ITERATIONS,
    ) -> None:
        """Set the latent weight and initialize every expert to the rank-1 factors of ``|weight|``."""
        self.weight.copy_(weight)
        out_scale, in_scale = svid_rank1(weight, svid_iterations)
        self.scale_in.copy_(in_scale.expand_as(self.scale_in))
        self.scale_out.copy_(out_scale.expand_as(self.scale_out))
        if bias is not None:
            self.bias.copy_(bias)
        self.reset_router()

    def sign_recipe(self, dtype: torch.dtype) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]:
        return partial(_latent_signs, dtype=dtype), (self.weight,)


class PackedBinaryMoSLinear(KernelBackendMixin, ActivationBitsMixin, _MixtureOfScalesMixin):
    """Inference BinaryMoS layer: signs at 1 bit each, scales and router in float.

    Tensors: ``weight`` ``uint8 (out, ceil(in / 8))`` (a buffer of packed signs; layout in
    :mod:`optimum_binarymos.packing`; the name is ``weight`` so that plain transformers, without this package,
    fails on the shape instead of silently loading a wrong model),
    ``scale_in`` ``(E, in)``, ``scale_out`` ``(E, out)``, ``router_weight`` ``(E, in)`` (absent when ``E == 1``),
    ``bias`` ``(out,)``.

    ``kernel_backend`` (``"auto"``, ``"triton"`` or ``"torch"``; :mod:`optimum_binarymos.kernels.dispatch`) chooses
    the kernels: set it here, or for a whole model with :func:`optimum_binarymos.kernels.set_kernel_backend`;
    unset, it is ``BINARYMOS_BACKEND`` (default ``"auto"``) read at the layer's first use. ``activation_bits``
    (None or 8; :class:`optimum_binarymos.kernels.dispatch.ActivationBitsMixin`) rounds the activations to int8
    per token before the product: set it here, with :func:`optimum_binarymos.kernels.set_activation_bits`, or
    through ``BINARYMOS_ACTIVATION_BITS``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_experts: int = 4,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer(
            "weight",
            torch.zeros(out_features, packed_columns(in_features), device=device, dtype=PACKED_DTYPE),
        )
        self._init_scales(num_experts, bias, device, dtype)

    @classmethod
    @torch.no_grad()
    def from_latent(cls, latent: BinaryMoSLinear) -> PackedBinaryMoSLinear:
        """Pack a trained :class:`BinaryMoSLinear`; the result computes the same function."""
        packed = cls(
            latent.in_features,
            latent.out_features,
            latent.num_experts,
            latent.bias is not None,
            device=latent.scale_in.device,
            dtype=latent.scale_in.dtype,
        )
        packed.weight.copy_(pack_signs(latent.weight))
        for name in ("scale_in", "scale_out", "router_weight", "bias"):
            source = getattr(latent, name)
            if source is not None:
                getattr(packed, name).copy_(source)
        return packed.requires_grad_(False)

    def sign_recipe(self, dtype: torch.dtype) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]:
        return partial(unpack_signs, in_features=self.in_features, dtype=dtype), (self.weight,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in)`` -> ``(..., out)`` with the packed kernels of :mod:`optimum_binarymos.kernels` (Triton on
        CUDA, native C or torch on CPU; :attr:`kernel_backend` forces one), which never unpack a whole weight.

        The kernels have no backward, so when autograd has to flow through the layer (adapters trained on top,
        or scales left trainable) the differentiable reference path runs instead.
        """
        require_float_input(x, self)
        if torch.is_grad_enabled() and (
            x.requires_grad or any(param.requires_grad for param in self.parameters(recurse=False))
        ):
            return super().forward(x)
        # The router goes in with the rest: the native kernel computes the gates itself, in the same call.
        return binarymos_linear(
            x,
            self.weight,
            self.in_features,
            self.scale_in,
            self.scale_out,
            None,
            self.bias,
            self.kernel_backend,
            self.router_weight,
            self.activation_bits,
        )
