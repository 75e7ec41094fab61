"""BinaryMoS layers: forward formula, straight-through estimator, SVID, packed equivalence."""

from __future__ import annotations

import pytest
import torch

from optimum_binarymos import BinaryMoSConfig, BinaryMoSLinear, PackedBinaryMoSLinear, TernaryConfig
from optimum_binarymos.nn import binarize_ste, svid_rank1


def test_ste_forward_is_sign_and_gradient_passes_only_inside_unit_interval():
    weight = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    signs = binarize_ste(weight)
    assert signs.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    (signs * torch.arange(1.0, 8.0)).sum().backward()
    assert weight.grad.tolist() == [0.0, 0.0, 3.0, 4.0, 5.0, 0.0, 0.0]


def test_power_iteration_svid_matches_exact_svd():
    torch.manual_seed(0)
    weight = torch.randn(96, 160) * 0.02
    out_power, in_power = svid_rank1(weight, 30)
    out_exact, in_exact = svid_rank1(weight, 0)
    assert (out_power >= 0).all() and (in_power >= 0).all()
    torch.testing.assert_close(
        torch.outer(out_power, in_power), torch.outer(out_exact, in_exact), rtol=1e-4, atol=1e-7
    )
    left, singular, right = torch.linalg.svd(weight.abs())
    torch.testing.assert_close(
        torch.outer(out_exact, in_exact),
        singular[0] * torch.outer(left[:, 0], right[0]),
        rtol=1e-5,
        atol=1e-8,
    )


def test_svid_of_zero_matrix_is_finite():
    out_scale, in_scale = svid_rank1(torch.zeros(4, 6))
    assert torch.isfinite(out_scale).all() and torch.isfinite(in_scale).all()


def reference_forward(layer, x):
    """The formula of the paper, written out."""
    signs = (
        torch.where(layer.weight >= 0, 1.0, -1.0)
        if isinstance(layer, BinaryMoSLinear)
        else layer.signs(x.dtype)
    )
    if layer.router_weight is None:
        s_in, s_out = layer.scale_in[0], layer.scale_out[0]
    else:
        gates = torch.softmax(x @ layer.router_weight.T, dim=-1)
        s_in, s_out = gates @ layer.scale_in, gates @ layer.scale_out
    y = ((x * s_in) @ signs.T) * s_out
    return y + layer.bias if layer.bias is not None else y


def trained_like_layer(num_experts, bias, in_features=37, out_features=21):
    """A layer whose experts differ (as after training), so that the router matters."""
    torch.manual_seed(num_experts)
    layer = BinaryMoSLinear.from_float(
        torch.randn(out_features, in_features), torch.randn(out_features) if bias else None, num_experts
    )
    with torch.no_grad():
        layer.scale_in.mul_(1 + 0.3 * torch.randn_like(layer.scale_in))
        layer.scale_out.mul_(1 + 0.3 * torch.randn_like(layer.scale_out))
    return layer


@pytest.mark.parametrize("num_experts", [1, 2, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_latent_and_packed_follow_the_formula_for_any_batch_shape(num_experts, bias):
    layer = trained_like_layer(num_experts, bias)
    packed = PackedBinaryMoSLinear.from_latent(layer)
    assert packed.weight.dtype == torch.uint8 and packed.weight.shape == (21, 5)
    for shape in [(37,), (1, 37), (3, 37), (2, 5, 37)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = reference_forward(layer, x)
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)


def test_router_makes_scales_token_adaptive():
    layer = trained_like_layer(4, bias=False)
    s_in, s_out = layer.token_scales(torch.randn(6, 37))
    assert s_in.shape == (6, 37) and s_out.shape == (6, 21)
    assert not torch.allclose(s_in[0], s_in[1])
    one = trained_like_layer(1, bias=False)
    s_in, s_out = one.token_scales(torch.randn(6, 37))
    assert s_in.shape == (37,) and s_out.shape == (21,)


def test_gradients_reach_latent_weight_scales_router_and_bias():
    layer = trained_like_layer(4, bias=True)
    layer(torch.randn(5, 37)).pow(2).sum().backward()
    for name in ("weight", "scale_in", "scale_out", "router_weight", "bias"):
        grad = getattr(layer, name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_latent_weight_gradient_follows_the_straight_through_formula():
    layer = trained_like_layer(4, bias=False)
    with torch.no_grad():
        layer.weight[:3].mul_(50)  # rows far past |w| = 1, where the gradient must stop
    x, grad_y = torch.randn(5, 37), torch.randn(5, 21)
    layer(x).backward(grad_y)
    with torch.no_grad():
        gates = torch.softmax(x @ layer.router_weight.T, dim=-1)
        s_in, s_out = gates @ layer.scale_in, gates @ layer.scale_out
        # y = ((x * s_in) @ sign(W)^T) * s_out, so dL/dsign(W) = (grad_y * s_out)^T @ (x * s_in)
        expected = ((grad_y * s_out).T @ (x * s_in)) * (layer.weight.abs() < 1)
    assert (layer.weight.abs()[:3] >= 1).any() and (expected[:3] == 0).any()
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-6)


def test_half_precision_layers_run():
    layer = trained_like_layer(4, bias=True).to(torch.bfloat16)
    packed = PackedBinaryMoSLinear.from_latent(layer)
    x = torch.randn(3, 37, dtype=torch.bfloat16)
    with torch.no_grad():
        assert packed(x).dtype == torch.bfloat16
        torch.testing.assert_close(packed(x), layer(x))


def test_invalid_number_of_experts():
    with pytest.raises(ValueError, match="num_experts must be >= 1"):
        BinaryMoSLinear(4, 4, num_experts=0)


@pytest.mark.reliability
@pytest.mark.parametrize("method", ["binarymos", "ternary"])
@pytest.mark.parametrize("packed", [False, True], ids=["latent", "packed"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_activations_are_refused_naming_the_layer(method, packed, dtype):
    from optimum_binarymos.methods import method_for_quant_method

    config = BinaryMoSConfig(num_experts=2) if method == "binarymos" else TernaryConfig(group_size=16)
    spec = method_for_quant_method(config.quant_method)
    layer = spec.from_float(torch.randn(8, 32), None, config)
    if packed:
        layer = spec.pack(layer, config)
    with pytest.raises(TypeError, match=rf"{type(layer).__name__} takes float activations.*{dtype}"):
        layer(torch.ones(2, 32, dtype=dtype))
