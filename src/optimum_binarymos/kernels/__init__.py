"""Kernels of the packed BinaryMoS linear: Triton on GPU, native C or torch on CPU, one entry point.

:func:`binarymos_linear` computes, from packed signs and without ever storing a float weight::

    s_in  = g @ S_in ;  s_out = g @ S_out     # g: router gates (tokens, E), or the single expert's scales
    y     = ((x * s_in) @ sign(W)^T) * s_out + bias

The backend is one of :data:`BACKENDS` (:mod:`.dispatch`), chosen once per packed layer
(``layer.kernel_backend``) or per model (:func:`set_kernel_backend`); a layer never given one takes
``BINARYMOS_BACKEND`` (default ``auto``) at its first use. With ``auto``, CUDA tensors go to the Triton kernels
of :mod:`.triton` (a split-K GEMV for few tokens, a ``tl.dot`` GEMM otherwise), CPU tensors to
:mod:`.torch_backend` (a native C kernel for few tokens, a blocked unpack and matmul otherwise). The kernels
always run as torch operators (:mod:`.ops`), so ``torch.compile`` traces packed models whole. Importing this
package never imports ``triton``.

Example::

    >>> import torch
    >>> from optimum_binarymos import pack_signs
    >>> from optimum_binarymos.kernels import binarymos_linear
    >>> weight, x = torch.randn(6, 20), torch.randn(3, 20)
    >>> scale_in, scale_out = torch.rand(1, 20), torch.rand(1, 6)
    >>> y = binarymos_linear(x, pack_signs(weight), 20, scale_in, scale_out)
    >>> reference = ((x * scale_in[0]) @ torch.where(weight >= 0, 1.0, -1.0).T) * scale_out[0]
    >>> torch.allclose(y, reference, atol=1e-5)
    True

Choosing the backend of a whole packed model (``torch``: the CPU path, even for CUDA tensors)::

    >>> from optimum_binarymos import PackedBinaryMoSLinear
    >>> from optimum_binarymos.kernels import set_kernel_backend
    >>> model = torch.nn.Sequential(PackedBinaryMoSLinear(20, 6), PackedBinaryMoSLinear(6, 4))
    >>> set_kernel_backend(model, "torch")
    2
    >>> model[0].kernel_backend
    'torch'
"""

from __future__ import annotations

import torch

from . import ops
from .dispatch import (
    ACTIVATION_BITS_VARIABLE,
    BACKEND_VARIABLE,
    BACKENDS,
    ActivationBitsMixin,
    KernelBackendMixin,
    requested_backend,
    select_backend,
    validate_activation_bits,
    validate_backend,
)
from .torch_backend import NATIVE_MAX_TOKENS, quantize_activations

__all__ = [
    "ACTIVATION_BITS_VARIABLE",
    "BACKENDS",
    "BACKEND_VARIABLE",
    "binarymos_linear",
    "quantize_activations",
    "requested_backend",
    "select_backend",
    "set_activation_bits",
    "set_kernel_backend",
]


#: The C++ operators of the native kernel (:mod:`.native.torch_op`) by activation bits (None: float32, 8: int8),
#: None where they cannot be built; absent before the first eager call that could use them.
_native_operators: dict = {}


def native_operator(activation_bits: int | None = None):
    """The C++ operator of the native linear (``optimum_binarymos_cpu::linear_f32``, or ``::linear_q8`` for
    ``activation_bits=8``), or None.

    Resolved (built on first use) at the first eager call that could take it; under ``torch.compile`` an unresolved
    operator counts as absent for that trace, so compiling never builds anything.
    """
    if activation_bits not in _native_operators:
        if torch.compiler.is_compiling():
            return None
        from .native.torch_op import native_linear_op, native_linear_q8_op

        _native_operators[activation_bits] = native_linear_op() if activation_bits is None else native_linear_q8_op()
    return _native_operators[activation_bits]


def _float32_tables(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or (t.dtype == torch.float32 and t.is_contiguous()) for t in tensors)


def set_kernel_backend(model: torch.nn.Module, name: str | None) -> int:
    """Set ``kernel_backend`` of every packed layer in ``model`` (``model`` itself included).

    Args:
        model: any module; its packed BinaryMoS and ternary layers (every :class:`.dispatch.KernelBackendMixin`)
            are changed, nothing else.
        name: one of :data:`BACKENDS` (``"auto"``, ``"triton"``, ``"torch"``), or None to return the layers to
            the default of ``BINARYMOS_BACKEND``, read again at their next use.

    Returns:
        The number of packed layers changed (0 when ``model`` has none).

    Raises:
        ValueError: for an unknown name, before any layer is changed.
    """
    if name is not None:
        name = validate_backend(name)
    layers = [module for module in model.modules() if isinstance(module, KernelBackendMixin)]
    for layer in layers:
        layer.kernel_backend = name
    return len(layers)


def set_activation_bits(model: torch.nn.Module, bits: int | None) -> int:
    """Set ``activation_bits`` of every packed BinaryMoS layer in ``model`` (``model`` itself included).

    With 8, each layer rounds its scaled activations ``x * s_in`` to int8, one scale per token
    (:func:`quantize_activations`), before the product with the signs: on CPU the native kernel then sums 64
    weights per two instructions (AVX-512 VNNI) instead of 16 per masked add, at every number of tokens, for a
    small change of the model's outputs (measured in ``docs/KERNELS.md``). None: activations as they come.

    Args:
        model: any module; its :class:`~optimum_binarymos.PackedBinaryMoSLinear` layers (OneBit and BinaryMoS)
            change, nothing else (ternary layers take float activations).
        bits: 8 or None.

    Returns:
        The number of layers changed.

    Raises:
        ValueError: for another value, before any layer is changed.

    Example::

        >>> import torch
        >>> from optimum_binarymos import PackedBinaryMoSLinear
        >>> from optimum_binarymos.kernels import set_activation_bits
        >>> model = torch.nn.Sequential(PackedBinaryMoSLinear(64, 32), PackedBinaryMoSLinear(32, 8))
        >>> set_activation_bits(model, 8)
        2
        >>> model[0].activation_bits
        8
    """
    bits = validate_activation_bits(bits)
    layers = [module for module in model.modules() if isinstance(module, ActivationBitsMixin)]
    for layer in layers:
        layer.activation_bits = bits
    return len(layers)


def binarymos_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    in_features: int,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    gates: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    backend: str | None = None,
    router_weight: torch.Tensor | None = None,
    activation_bits: int | None = None,
) -> torch.Tensor:
    """Packed BinaryMoS linear on the backend :func:`select_backend` picks for ``backend`` and ``x``'s device.

    Args:
        x: ``(..., in_features)`` activations, float32, float16 or bfloat16.
        packed: ``(out_features, ceil(in_features / 8))`` ``uint8`` signs
            (:func:`~optimum_binarymos.pack_signs`).
        in_features: logical number of input columns ``K``.
        scale_in: ``(E, in_features)`` input-side scaling experts.
        scale_out: ``(E, out_features)`` output-side scaling experts.
        gates: ``(..., E)`` float32 router weights, ``softmax(x @ router_weight^T)`` as
            :meth:`~optimum_binarymos.PackedBinaryMoSLinear.router_gates` computes them; None when ``E == 1``.
        bias: ``(out_features,)`` or None.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (:mod:`.dispatch`); None reads ``BINARYMOS_BACKEND``
            now. Packed layers pass their ``kernel_backend``.
        router_weight: ``(E, in_features)``, given instead of ``gates``: the gates are then
            ``softmax(x @ router_weight^T)``, computed inside the kernel where it can (the native CPU kernel), so a
            layer makes one call per forward. Packed layers pass theirs.
        activation_bits: None, or 8 to round ``x * s_in`` to int8 per token before the product
            (:func:`quantize_activations`; :func:`set_activation_bits`). Packed layers pass theirs.

    Returns:
        ``(..., out_features)`` in ``x``'s dtype. No gradient flows through it (inference only).

    Raises:
        ValueError: on mismatched shapes or an unknown backend name.
        RuntimeError: when the ``triton`` backend is forced but cannot run here.
    """
    out_features = packed.shape[0]
    experts = scale_in.shape[0]
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension, expected {in_features}")
    if scale_in.shape != (experts, in_features) or scale_out.shape != (experts, out_features):
        raise ValueError(
            f"scale_in {tuple(scale_in.shape)} and scale_out {tuple(scale_out.shape)} must be "
            f"({experts}, {in_features}) and ({experts}, {out_features})"
        )
    if gates is not None and router_weight is not None:
        raise ValueError("give the gates or the router weight, not both")
    if router_weight is not None and router_weight.shape != (experts, in_features):
        raise ValueError(
            f"router_weight must have shape {(experts, in_features)}, got {tuple(router_weight.shape)}"
        )
    if gates is None and router_weight is None and experts != 1:
        raise ValueError(f"gates or router_weight are required with {experts} experts")
    if gates is not None and gates.shape != (*x.shape[:-1], experts):
        raise ValueError(f"gates must have shape {(*x.shape[:-1], experts)}, got {tuple(gates.shape)}")
    flat = x.reshape(-1, in_features)
    flat_gates = None if gates is None else gates.reshape(-1, experts)
    if flat.shape[0] == 0:
        return x.new_empty(*x.shape[:-1], out_features)
    if backend is None:
        backend = requested_backend()
    if activation_bits is not None:
        activation_bits = validate_activation_bits(activation_bits)
    if flat_gates is None and backend != "triton" and flat.is_cpu and flat.dtype == torch.float32:
        # Resolved at any eager float32 call on CPU (a long prefill included), so that a decode step compiled
        # afterwards traces the C++ operator rather than the Python-bodied one.
        operator = native_operator(activation_bits)
        if (
            operator is not None
            and (activation_bits is not None or flat.shape[0] <= NATIVE_MAX_TOKENS)
            and flat.stride(-1) == 1
            and packed.stride(-1) == 1
            and _float32_tables(scale_in, scale_out, bias, router_weight)
        ):
            # Float32 on CPU (few tokens, or any number with int8 activations): the C++ operator calls the native
            # kernel with no Python in between.
            y = operator(flat, packed, in_features, scale_in, scale_out, bias, router_weight)
            return y.reshape(*x.shape[:-1], out_features)
    # The operator in every mode: one node under torch.compile, a few microseconds of dispatch in eager mode.
    y = ops.packed_linear(
        flat, packed, in_features, scale_in, scale_out, flat_gates, bias, backend, router_weight, activation_bits
    )
    return y.reshape(*x.shape[:-1], out_features)
