"""ctypes binding of the compiled C kernels: argument types, checks, and torch-tensor wrappers.

The C functions take raw pointers, so every wrapper checks dtype, device, shape and contiguity first: a wrong
tensor must raise here, not read out of bounds in C.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from ...packing import (
    PACKED_DTYPE,
    groups4_count,
    groups4_packed_columns,
    packed_columns,
    ternary_groups,
    ternary_packed_columns,
)

#: Must match ABI_VERSION in binarymos_cpu.c; a cached library built from another version is refused.
ABI_VERSION = 4

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


def _rows_product(
    function, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Run one of the quantized-rows kernels (int8 or int4, same signature) on checked tensors: ``(M, N)`` float32."""
    rows, k = x.shape
    n = codes.shape[0]
    y = torch.empty(rows, n, dtype=torch.float32)
    function(
        x.data_ptr(), rows, k, x.stride(0),
        codes.data_ptr(), n, codes.stride(0),
        scale.data_ptr(), _pointer(bias),
        y.data_ptr(), n, torch.get_num_threads(),
    )  # fmt: skip
    return y


def _check_activations(x: torch.Tensor) -> tuple[int, int]:
    """``(M, K)`` of the activations of a product kernel, after checking they are what the C code reads."""
    if x.ndim != 2 or x.dtype != torch.float32 or x.device.type != "cpu" or x.stride(1) != 1:
        raise ValueError("x must be a 2-D float32 CPU tensor with unit column stride")
    return x.shape[0], x.shape[1]


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


# The checks run at every call of a packed layer: is_cpu and torch.Size == tuple, not device.type and tuple().
def _check_float32(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tensor.dtype != torch.float32 or not tensor.is_cpu or not tensor.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous float32 CPU tensor, got {tensor.dtype} on {tensor.device}"
        )
    if tensor.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


def _check_packed(packed: torch.Tensor, rows: int, in_features: int) -> None:
    if packed.dtype != PACKED_DTYPE or not packed.is_cpu or packed.ndim != 2:
        raise ValueError(
            f"packed must be a 2-D {PACKED_DTYPE} CPU tensor, got {packed.dtype} on {packed.device}"
        )
    if packed.shape != (rows, packed_columns(in_features)) or packed.stride(1) != 1:
        raise ValueError(
            f"packed must be ({rows}, {packed_columns(in_features)}) with unit column stride, "
            f"got {tuple(packed.shape)} with strides {packed.stride()}"
        )


class NativeKernels:
    """The loaded library. Build one with :func:`optimum_binarymos.kernels.native.native_kernels`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lib = ctypes.CDLL(str(self.path))
        self._lib.bmos_abi_version.restype = ctypes.c_int
        self._lib.bmos_simd_path.restype = ctypes.c_int
        version = self._lib.bmos_abi_version()
        if version != ABI_VERSION:
            raise RuntimeError(f"{self.path} has ABI version {version}, expected {ABI_VERSION}")
        self._lib.bmos_linear_f32.restype = ctypes.c_int
        self._lib.bmos_linear_f32.argtypes = [
            _PTR, _I64, _I64, _I64,  # x, M, K, ldx
            _PTR, _I64, _PTR,  # gates, E, router
            _PTR, _PTR, _PTR,  # scale_in, scale_out, bias
            _PTR, _I64, _I64,  # packed, N, ldw
            _PTR, _I64, ctypes.c_int,  # y, ldy, threads
        ]  # fmt: skip
        self._lib.bmos_linear_q8_f32.restype = ctypes.c_int
        self._lib.bmos_linear_q8_f32.argtypes = self._lib.bmos_linear_f32.argtypes
        self._lib.bmos_q8_simd_path.restype = ctypes.c_int
        self._lib.bmos_int8_linear_f32.restype = None
        self._lib.bmos_int8_linear_f32.argtypes = [
            _PTR, _I64, _I64, _I64,  # x, M, K, ldx
            _PTR, _I64, _I64,  # q, N, ldq
            _PTR, _PTR,  # scale, bias
            _PTR, _I64, ctypes.c_int,  # y, ldy, threads
        ]  # fmt: skip
        self._lib.bmos_int4_linear_f32.restype = None
        self._lib.bmos_int4_linear_f32.argtypes = self._lib.bmos_int8_linear_f32.argtypes
        self._lib.bmos_ternary_f32.restype = ctypes.c_int
        self._lib.bmos_ternary_f32.argtypes = [
            _PTR, _I64, _I64, _I64,  # x, M, K, ldx
            _PTR, _I64, _I64,  # codes, N, ldc
            _PTR, _PTR, _I64, _I64,  # scale, shift, G, group size
            _PTR, _I64, ctypes.c_int,  # y, ldy, threads
        ]  # fmt: skip
        self._lib.bmos_unpack_f32.restype = None
        self._lib.bmos_unpack_f32.argtypes = [_PTR, _I64, _I64, _I64, _PTR, ctypes.c_int]

    @property
    def linear_address(self) -> int:
        """Address of ``bmos_linear_f32`` in this library, for the C++ operator of :mod:`.torch_op`."""
        return ctypes.cast(self._lib.bmos_linear_f32, ctypes.c_void_p).value

    @property
    def linear_q8_address(self) -> int:
        """Address of ``bmos_linear_q8_f32`` (int8 activations), for the C++ operator of :mod:`.torch_op`."""
        return ctypes.cast(self._lib.bmos_linear_q8_f32, ctypes.c_void_p).value

    @property
    def q8_simd(self) -> str:
        """``"avx512_vnni"`` or ``"avx2"``: the vector loop of the int8-activation product, else ``"portable"`` (a
        plain C loop: the same integers, several times slower)."""
        return {2: "avx512_vnni", 1: "avx2"}.get(self._lib.bmos_q8_simd_path(), "portable")

    @property
    def simd(self) -> str:
        """``"avx512"`` or ``"avx2"``: the vector inner loops compiled in (by ``-march=native``), else
        ``"portable"``."""
        return {2: "avx512", 1: "avx2"}.get(self._lib.bmos_simd_path(), "portable")

    def linear(
        self,
        x: torch.Tensor,
        packed: torch.Tensor,
        in_features: int,
        scale_in: torch.Tensor | None,
        scale_out: torch.Tensor | None,
        gates: torch.Tensor | None,
        bias: torch.Tensor | None,
        router: torch.Tensor | None = None,
        activation_bits: int | None = None,
    ) -> torch.Tensor:
        """``((x * s_in) @ sign(W)^T) * s_out + bias`` with the mixture of scales fused, all in float32.

        Args:
            x: ``(M, K)`` float32, unit stride along ``K`` (any row stride).
            packed: ``(N, ceil(K / 8))`` ``uint8`` signs (any row stride).
            in_features: ``K``.
            scale_in: ``(E, K)`` float32 contiguous, or None for no input scale (then scale_out and gates
                are None too).
            scale_out: ``(E, N)`` float32 contiguous, or None.
            gates: ``(M, E)`` float32 contiguous router weights, or None when ``E == 1`` or ``router`` is given.
            bias: ``(N,)`` float32 or None.
            router: ``(E, K)`` float32 contiguous router weight: the kernel computes the gates,
                ``softmax(x @ router^T)``, itself (``gates`` is then None).
            activation_bits: None, or 8 to round ``x * s_in`` to int8 per token before the product
                (``bmos_linear_q8_f32``; :func:`optimum_binarymos.kernels.quantize_activations` is its rounding).

        Returns:
            ``(M, N)`` float32.
        """
        rows, k = x.shape
        n = packed.shape[0]
        if x.dtype != torch.float32 or not x.is_cpu or x.stride(1) != 1 or k != in_features:
            raise ValueError(f"x must be (M, {in_features}) float32 on CPU with unit column stride")
        _check_packed(packed, n, in_features)
        if (scale_in is None) != (scale_out is None) or (scale_in is None and gates is not None):
            raise ValueError("scale_in and scale_out are both given or both None (and then gates are None)")
        experts = 1 if scale_in is None else scale_in.shape[0]
        if scale_in is not None:
            _check_float32("scale_in", scale_in, (experts, in_features))
            _check_float32("scale_out", scale_out, (experts, n))
        if router is not None:
            if gates is not None:
                raise ValueError("give the gates or the router weight, not both")
            _check_float32("router", router, (experts, in_features))
        elif gates is None:
            if experts != 1:
                raise ValueError(f"gates or the router weight are required with {experts} experts")
        else:
            _check_float32("gates", gates, (rows, experts))
        if bias is not None:
            _check_float32("bias", bias, (n,))
        if activation_bits not in (None, 8):
            raise ValueError(f"activation_bits must be None or 8, got {activation_bits!r}")
        y = torch.empty(rows, n, dtype=torch.float32)
        kernel = self._lib.bmos_linear_f32 if activation_bits is None else self._lib.bmos_linear_q8_f32
        status = kernel(
            x.data_ptr(), rows, in_features, x.stride(0),
            _pointer(gates), experts, _pointer(router),
            _pointer(scale_in), _pointer(scale_out), _pointer(bias),
            packed.data_ptr(), n, packed.stride(0),
            y.data_ptr(), n, torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("the native BinaryMoS kernel could not allocate its scratch buffer")
        return y

    def int8_linear(
        self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``(x @ weight^T) * scale + bias`` for an ``int8`` weight with one scale per row, in float32.

        Args:
            x: ``(M, K)`` float32, unit stride along ``K`` (any row stride).
            weight: ``(N, K)`` ``int8`` (any row stride, unit column stride).
            scale: ``(N,)`` float32 contiguous.
            bias: ``(N,)`` float32 or None.

        Returns:
            ``(M, N)`` float32.
        """
        _, k = _check_activations(x)
        if weight.dtype != torch.int8 or weight.device.type != "cpu" or weight.ndim != 2 or weight.stride(1) != 1:
            raise ValueError(f"weight must be a 2-D int8 CPU tensor with unit column stride, got {weight.dtype}")
        n = weight.shape[0]
        if weight.shape[1] != k:
            raise ValueError(f"weight must have {k} columns, got {tuple(weight.shape)}")
        _check_float32("scale", scale, (n,))
        if bias is not None:
            _check_float32("bias", bias, (n,))
        return _rows_product(self._lib.bmos_int8_linear_f32, x, weight, scale, bias)

    def int4_linear(
        self, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``x @ W^T + bias`` for the 4-bit groups of :func:`optimum_binarymos.packing.quantize_groups4`, in float32.

        Args:
            x: ``(M, K)`` float32, unit stride along ``K`` (any row stride).
            codes: ``(N, 16 * ceil(K / 32))`` ``uint8`` (any row stride, unit column stride).
            scale: ``(N, ceil(K / 32))`` float32 contiguous.
            bias: ``(N,)`` float32 or None.

        Returns:
            ``(M, N)`` float32.
        """
        _, k = _check_activations(x)
        n, columns = codes.shape[0], groups4_packed_columns(k)
        if codes.dtype != PACKED_DTYPE or not codes.is_cpu or codes.ndim != 2 or codes.shape[1] != columns:
            raise ValueError(f"codes must be ({n}, {columns}) uint8 on the CPU, got {codes.dtype} {tuple(codes.shape)}")
        if codes.stride(1) != 1:
            raise ValueError("codes must have unit column stride")
        _check_float32("scale", scale, (n, groups4_count(k)))
        if bias is not None:
            _check_float32("bias", bias, (n,))
        return _rows_product(self._lib.bmos_int4_linear_f32, x, codes, scale, bias)

    def ternary(
        self, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, group_size: int
    ) -> torch.Tensor:
        """``sum_g alpha_g * (x_g @ T_g^T) + gamma_g * sum(x_g)`` for ``"2bit"`` codes, in float32.

        Args:
            x: ``(M, K)`` float32, unit stride along ``K``.
            codes: ``(N, ceil(K / 4))`` ``uint8`` ``"2bit"`` codes (unit column stride).
            scale, shift: ``(N, ceil(K / group_size))`` float32 contiguous.
            group_size: a multiple of 8.

        Returns:
            ``(M, N)`` float32.
        """
        rows, k = _check_activations(x)
        n, columns = codes.shape[0], ternary_packed_columns(k, "2bit")
        if codes.dtype != PACKED_DTYPE or codes.ndim != 2 or codes.shape[1] != columns or codes.stride(1) != 1:
            raise ValueError(f"codes must be ({n}, {columns}) uint8 with unit column stride, got {tuple(codes.shape)}")
        if group_size <= 0 or group_size % 8:
            raise ValueError(f"group_size must be a positive multiple of 8, got {group_size}")
        groups = ternary_groups(k, group_size)
        _check_float32("scale", scale, (n, groups))
        _check_float32("shift", shift, (n, groups))
        y = torch.empty(rows, n, dtype=torch.float32)
        status = self._lib.bmos_ternary_f32(
            x.data_ptr(), rows, k, x.stride(0),
            codes.data_ptr(), n, codes.stride(0),
            scale.data_ptr(), shift.data_ptr(), groups, group_size,
            y.data_ptr(), n, torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("the native ternary kernel could not allocate its scratch buffer")
        return y

    def unpack(self, packed: torch.Tensor, in_features: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Signs of ``packed`` ``(N, ceil(K / 8))`` as a ``(N, K)`` float32 tensor of +1 / -1 (written into
        ``out`` when given)."""
        n = packed.shape[0]
        _check_packed(packed, n, in_features)
        if out is None:
            out = torch.empty(n, in_features, dtype=torch.float32)
        _check_float32("out", out, (n, in_features))
        self._lib.bmos_unpack_f32(
            packed.data_ptr(), n, in_features, packed.stride(0), out.data_ptr(), torch.get_num_threads()
        )
        return out
