"""int8 activations in the packed BinaryMoS layers (``activation_bits=8``): the rounding, the native kernel (default
and portable builds) against the rounding applied in torch, the layer setting and its environment variable."""

from __future__ import annotations

import pytest
import torch

from optimum_binarymos import PackedBinaryMoSLinear, PackedTernaryLinear, pack_signs, unpack_signs
from optimum_binarymos.kernels import (
    ACTIVATION_BITS_VARIABLE,
    binarymos_linear,
    quantize_activations,
    set_activation_bits,
    torch_backend,
)
from optimum_binarymos.kernels.native import NativeKernels, build_library, native_kernels


def test_quantize_activations_rounds_each_token_to_127_levels_of_its_largest_value():
    x = torch.tensor([[2.0, -1.0, 0.005, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, float("inf"), 0.0, 0.0]])
    y = quantize_activations(x)
    step = 2.0 / 127
    torch.testing.assert_close(y[0], torch.round(x[0] / step) * step)
    assert y[0, 0] == 2.0 and y[0, 2] == 0.0  # the largest value is kept, values under half a step vanish
    assert torch.equal(y[1], torch.zeros(4))
    assert torch.isnan(y[2]).all()
    integers = torch.randint(-127, 128, (3, 50)).float()
    integers[:, 0] = 127.0
    assert torch.equal(quantize_activations(integers), integers)  # already on the grid: unchanged


def integer_case(tokens: int, k: int, n: int, experts: int, seed: int):
    """Activations already on the int8 grid (integers, largest 127) and unit input scales: the int8 product is then
    exact, so it must equal the float formula."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(-127, 128, (tokens, k), generator=generator).float()
    x[:, seed % k] = 127.0
    weight = torch.randn(n, k, generator=generator)
    scale_out = 0.01 + torch.rand(experts, n, generator=generator)
    gates = torch.softmax(torch.randn(tokens, experts, generator=generator), -1) if experts > 1 else None
    bias = torch.randn(n, generator=generator)
    case = dict(
        x=x, packed=pack_signs(weight), in_features=k, scale_in=torch.ones(experts, k), scale_out=scale_out,
        gates=gates, bias=bias,
    )  # fmt: skip
    s_out = scale_out[0] if gates is None else gates @ scale_out
    expected = (x.double() @ unpack_signs(case["packed"], k).double().T) * s_out.double() + bias.double()
    return case, expected


# tokens cover the kernel's tiles (4, 2, 1 tokens; 8, 4, 1 rows) and more than NATIVE_MAX_TOKENS; K a multiple of
# 64 columns and not; N leaves a partial task of rows.
SHAPES = [(1, 203, 150), (3, 256, 150), (5, 77, 29), (9, 640, 37), (40, 203, 150)]


def _check_integer_cases(kernels: NativeKernels) -> None:
    for tokens, k, n in SHAPES:
        for experts in (1, 4):
            case, expected = integer_case(tokens, k, n, experts, seed=tokens + k)
            y = kernels.linear(**case, activation_bits=8)
            torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_native_int8_kernel_is_exact_on_the_grid():
    kernels = native_kernels()
    if kernels is None:
        pytest.fail("the native kernels did not build with the system C compiler")
    _check_integer_cases(kernels)


def test_portable_int8_loop_is_exact_on_the_grid(tmp_path):
    kernels = NativeKernels(build_library(cache_dir=tmp_path, extra_flags=("-DBINARYMOS_PORTABLE",)))
    assert kernels.q8_simd == "portable"
    _check_integer_cases(kernels)
    _check_non_finite_tokens(kernels)


def test_avx2_int8_loop_is_exact_on_the_grid(tmp_path):
    """Built without the AVX-512 loops: the AVX2 int8 loop on any AVX2 CPU (what AVX2-only CPUs run; on an AVX-512
    machine this is its only test), the portable one on an older CPU."""
    kernels = NativeKernels(build_library(cache_dir=tmp_path, extra_flags=("-DBINARYMOS_NO_AVX512",)))
    assert kernels.q8_simd == ("avx2" if native_kernels().simd in ("avx512", "avx2") else "portable")
    _check_integer_cases(kernels)
    _check_non_finite_tokens(kernels)


def _check_non_finite_tokens(kernels: NativeKernels) -> None:
    x = torch.randn(3, 100)
    x[0, 37], x[2, 5] = float("nan"), float("inf")
    y = kernels.linear(x, pack_signs(torch.randn(8, 100)), 100, None, None, None, None, activation_bits=8)
    assert torch.isnan(y[0]).all() and torch.isnan(y[2]).all()  # a NaN is not lost by the largest-value search
    assert torch.isfinite(y[1]).all()


def test_native_int8_kernel_gives_nan_for_non_finite_tokens():
    _check_non_finite_tokens(native_kernels())


@pytest.mark.parametrize("tokens", [1, 6, 70])
def test_native_int8_layer_matches_the_rounding_in_torch(tokens):
    """Random activations, 4 experts and a router: the native kernel (C++ operator or ctypes) against the same
    rounding done in torch and the float product; a value at a rounding midpoint may land one code apart, hence the
    tolerance of a few codes."""
    torch.manual_seed(tokens)
    layer = PackedBinaryMoSLinear(203, 150, num_experts=4, bias=True).requires_grad_(False)
    layer.weight.random_(0, 256)
    layer.scale_in.uniform_(0.5, 1.5)
    layer.scale_out.uniform_(0.01, 0.03)
    layer.router_weight.normal_(0.0, 0.05)
    layer.bias.normal_()
    x = torch.randn(tokens, 203)
    with torch.no_grad():
        float_y = layer(x)
        assert set_activation_bits(layer, 8) == 1
        y = layer(x)
        emulated = torch_backend.packed_linear(
            x, layer.weight, 203, layer.scale_in, layer.scale_out, None, layer.bias, use_native=False,
            router_weight=layer.router_weight, activation_bits=8,
        )  # fmt: skip
        direct = binarymos_linear(
            x, layer.weight, 203, layer.scale_in, layer.scale_out, bias=layer.bias, router_weight=layer.router_weight,
            activation_bits=8,
        )  # fmt: skip
    scale = float_y.abs().max().item()
    torch.testing.assert_close(y, emulated, rtol=0, atol=4 * (1 / 127) * scale / 10)
    assert torch.equal(y, direct)
    assert 0 < (y - float_y).abs().max().item() < 0.1 * scale  # rounded, and close to the float product


def test_bfloat16_activations_come_back_in_bfloat16():
    layer = PackedBinaryMoSLinear(64, 32, num_experts=1).requires_grad_(False)
    layer.activation_bits = 8
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        y = layer(x)
    expected = torch_backend.packed_linear(
        x, layer.weight, 64, layer.scale_in, layer.scale_out, use_native=False, activation_bits=8
    )
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected)


def test_activation_bits_setting_environment_and_refusals(monkeypatch):
    monkeypatch.setenv(ACTIVATION_BITS_VARIABLE, "8")
    layer = PackedBinaryMoSLinear(16, 8, num_experts=1)
    assert layer.activation_bits == 8  # read at first use
    monkeypatch.setenv(ACTIVATION_BITS_VARIABLE, "")
    assert layer.activation_bits == 8  # and kept
    assert PackedBinaryMoSLinear(16, 8, num_experts=1).activation_bits is None
    layer.activation_bits = None
    assert layer.activation_bits is None
    monkeypatch.setenv(ACTIVATION_BITS_VARIABLE, "4")
    with pytest.raises(ValueError, match=f"{ACTIVATION_BITS_VARIABLE} must be None or 8, got '4'"):
        _ = PackedBinaryMoSLinear(16, 8, num_experts=1).activation_bits
    model = torch.nn.Sequential(layer, PackedTernaryLinear(8, 8))
    with pytest.raises(ValueError, match="activation_bits must be None or 8, got 16"):
        set_activation_bits(model, 16)
    assert layer.activation_bits is None  # nothing changed by the refused call
    assert set_activation_bits(model, 8) == 1  # ternary layers take float activations: not counted


def test_compiled_int8_layer_equals_eager():
    layer = PackedBinaryMoSLinear(96, 48, num_experts=4).requires_grad_(False)
    layer.router_weight.normal_()
    set_activation_bits(layer, 8)
    x = torch.randn(1, 96)
    with torch.no_grad():
        eager = layer(x)
        compiled = torch.compile(layer, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
