"""The packed kernels as torch operators (``torch.ops.optimum_binarymos.*``), the one way every mode calls them.

Eager forwards, ``torch.compile`` (any backend), ``torch.export`` and FX tracing all go through the same
operators, so the compiler sees a packed layer as one node of known output shape (the fake implementations
below) instead of breaking its graph at an opaque ctypes or Triton call:

* ``optimum_binarymos::packed_linear(x, packed, in_features, scale_in, scale_out, gates, bias, backend,
  router_weight, activation_bits)`` (the router weight instead of the gates: the kernel mixes the scales itself;
  ``activation_bits=8``: int8 activations, :func:`.torch_backend.quantize_activations`)
* ``optimum_binarymos::ternary_matmul(x, codes, scale, shift, in_features, group_size, code_packing, backend)``
* ``optimum_binarymos::int8_linear(x, codes, scale, bias)`` (8-bit ``lm_head``, :mod:`.rows`)
* ``optimum_binarymos::int4_linear(x, codes, scale, bias)`` (4-bit ``lm_head``, :mod:`.rows`)

Each takes 2-D activations; the first two also take the backend name of :mod:`.dispatch` (``"auto"``, ``"triton"`` or ``"torch"``, as
chosen by the layer), which it resolves for the tensors' device when it runs. They are registered with
:class:`torch.library.Library` under ``CompositeExplicitAutograd``: the dispatcher then costs 2-4 us a call on
CPU (about 5 % of a 576 x 1536 BinaryMoS layer at one token), where ``torch.library.custom_op``'s Python wrapper
costs tens (a 135M model makes about 200 calls per decoded token). The operators have no backward: the layers
call them only when no gradient is needed, and take the differentiable reference path otherwise.
"""

from __future__ import annotations

import torch

from .dispatch import select_backend
from .rows import int4_linear as int4_linear_inference
from .rows import int8_linear as int8_linear_inference
from .ternary import ternary_matmul_inference
from .torch_backend import packed_linear as torch_packed_linear
from .torch_backend import router_gates

NAMESPACE = "optimum_binarymos"

_LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")  # kept alive: dropping it unregisters the operators


def run_packed_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    in_features: int,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    gates: torch.Tensor | None,
    bias: torch.Tensor | None,
    backend: str = "auto",
    router_weight: torch.Tensor | None = None,
    activation_bits: int | None = None,
) -> torch.Tensor:
    """``((x * s_in) @ sign(W)^T) * s_out + bias``: ``x`` ``(M, K)`` -> ``(M, N)`` in ``x``'s dtype, on the
    backend ``backend`` resolves to for ``x``'s device (the body of ``optimum_binarymos::packed_linear``;
    arguments as :func:`optimum_binarymos.kernels.binarymos_linear`). The Triton kernels take float activations
    only: with ``activation_bits=8`` the torch backend runs on every device."""
    backend = select_backend(x.device, backend)
    if backend == "triton" and activation_bits is None:
        from .triton.linear import packed_linear as triton_linear

        if gates is None and router_weight is not None:
            gates = router_gates(x, router_weight)
        return triton_linear(x, packed, in_features, scale_in, scale_out, gates, bias)
    return torch_packed_linear(
        x, packed, in_features, scale_in, scale_out, gates, bias, router_weight=router_weight,
        activation_bits=activation_bits,
    )  # fmt: skip


_LIBRARY.define(
    "packed_linear(Tensor x, Tensor packed, SymInt in_features, Tensor scale_in, Tensor scale_out, "
    'Tensor? gates, Tensor? bias, str backend="auto", Tensor? router_weight=None, int? activation_bits=None) '
    "-> Tensor"
)
_LIBRARY.impl("packed_linear", run_packed_linear, "CompositeExplicitAutograd")
_LIBRARY.define(
    "ternary_matmul(Tensor x, Tensor codes, Tensor scale, Tensor shift, SymInt in_features, SymInt group_size, "
    'str code_packing, str backend="auto") -> Tensor'
)
_LIBRARY.impl("ternary_matmul", ternary_matmul_inference, "CompositeExplicitAutograd")
_LIBRARY.define("int8_linear(Tensor x, Tensor codes, Tensor scale, Tensor? bias) -> Tensor")
_LIBRARY.impl("int8_linear", int8_linear_inference, "CompositeExplicitAutograd")
_LIBRARY.define("int4_linear(Tensor x, Tensor codes, Tensor scale, Tensor? bias) -> Tensor")
_LIBRARY.impl("int4_linear", int4_linear_inference, "CompositeExplicitAutograd")


@torch.library.register_fake(f"{NAMESPACE}::packed_linear")
def _(x, packed, in_features, scale_in, scale_out, gates, bias, backend="auto", router_weight=None, activation_bits=None):
    return x.new_empty(x.shape[0], packed.shape[0])


@torch.library.register_fake(f"{NAMESPACE}::ternary_matmul")
def _(x, codes, scale, shift, in_features, group_size, code_packing, backend="auto"):
    return x.new_empty(x.shape[0], codes.shape[0])


@torch.library.register_fake(f"{NAMESPACE}::int8_linear")
def _(x, codes, scale, bias):
    return x.new_empty(x.shape[0], codes.shape[0])


@torch.library.register_fake(f"{NAMESPACE}::int4_linear")
def _(x, codes, scale, bias):
    return x.new_empty(x.shape[0], codes.shape[0])


#: The operators' overloads, called directly (skipping the overload lookup of ``torch.ops``).
packed_linear = torch.ops.optimum_binarymos.packed_linear.default
ternary_matmul = torch.ops.optimum_binarymos.ternary_matmul.default
int8_linear = torch.ops.optimum_binarymos.int8_linear.default
int4_linear = torch.ops.optimum_binarymos.int4_linear.default
