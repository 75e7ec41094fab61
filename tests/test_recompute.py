"""Training keeps no dense quantized weight from forward to backward, and the gradients stay those of plain
autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from optimum_binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from optimum_binarymos.kernels.ternary import ternary_matmul_torch
from optimum_binarymos.nn.ternary import PackedTernaryLinear, TernaryLinear
from optimum_binarymos.recompute import keep_quantized_weights, linear_recomputing_weight

IN, OUT = 40, 24


def saved_for_backward(run):
    """Run ``run()`` and return ``(result, shapes)``: the shape of every tensor autograd kept for backward."""
    shapes = []

    def keep(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        result = run()
    return result, shapes


def weight_sized(shapes):
    return [shape for shape in shapes if torch.Size(shape).numel() == OUT * IN]


def gradients(run, tensors, seed=0):
    """Gradients of ``<run(), g>`` for a fixed random ``g`` with respect to each of ``tensors``."""
    for tensor in tensors:
        tensor.grad = None
    y = run()
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype))
    return [tensor.grad.clone() for tensor in tensors]


def plain_linear(x, make_weight, *weight_inputs):
    return F.linear(x, make_weight(*weight_inputs).to(x.dtype))


def scaled_tanh(weight, scale):
    return torch.tanh(weight) * scale[:, None]


def test_gradients_equal_plain_autograd_for_every_input():
    torch.manual_seed(0)
    x = torch.randn(3, 5, IN, requires_grad=True)
    weight = torch.randn(OUT, IN, requires_grad=True)
    scale = torch.rand(OUT, requires_grad=True)
    expected = gradients(lambda: plain_linear(x, scaled_tanh, weight, scale), [x, weight, scale])
    actual = gradients(lambda: linear_recomputing_weight(x, scaled_tanh, weight, scale), [x, weight, scale])
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_only_the_inputs_that_need_it_get_a_gradient_and_activations_are_kept_only_for_the_weight():
    torch.manual_seed(0)
    x = torch.randn(4, IN, requires_grad=True)
    weight = torch.randn(OUT, IN)  # frozen: nothing but x needs a gradient
    y, shapes = saved_for_backward(lambda: linear_recomputing_weight(x, torch.sign, weight))
    assert shapes == [(OUT, IN)]  # the frozen weight itself, neither x nor a made weight
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.sign(weight).sum(0).expand(4, IN))
    with torch.no_grad():
        torch.testing.assert_close(linear_recomputing_weight(x, torch.sign, weight), x @ torch.sign(weight).T)


def test_autocast_computes_like_f_linear():
    torch.manual_seed(0)
    x = torch.randn(3, 5, IN, requires_grad=True)
    weight = torch.randn(OUT, IN, requires_grad=True)
    results = []
    for run in (plain_linear, linear_recomputing_weight):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = run(x, scaled_tanh, weight, torch.ones(OUT))
        assert y.dtype == torch.bfloat16
        results.append([y.detach(), *gradients(lambda y=y: y, [x, weight])])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def binarymos_layers():
    torch.manual_seed(0)
    latent = BinaryMoSLinear.from_float(torch.randn(OUT, IN), torch.randn(OUT), num_experts=4)
    with torch.no_grad():
        latent.scale_in.mul_(1 + 0.3 * torch.randn_like(latent.scale_in))
    packed = PackedBinaryMoSLinear.from_latent(latent)
    return latent, packed


def ternary_layers():
    torch.manual_seed(0)
    latent = TernaryLinear.from_float(torch.randn(OUT, IN), torch.randn(OUT), group_size=16)
    return latent, PackedTernaryLinear.from_latent(latent)


def binarymos_plain_forward(layer, x):
    """The layer's formula with plain autograd: keeps the dense signs."""
    scale_in, scale_out = layer.token_scales(x)
    return F.linear(x * scale_in, layer.signs(x.dtype)) * scale_out + layer.bias


def ternary_plain_forward(layer, x):
    return F.linear(x, layer.quantized_weight(), layer.bias)


@pytest.mark.parametrize(
    "make_layers, plain_forward",
    [(binarymos_layers, binarymos_plain_forward), (ternary_layers, ternary_plain_forward)],
    ids=["binarymos", "ternary"],
)
def test_latent_layers_train_like_plain_autograd_without_keeping_a_dense_weight(make_layers, plain_forward):
    latent, _ = make_layers()
    x = torch.randn(2, 7, IN, requires_grad=True)
    tensors = [x, *latent.parameters()]
    expected = gradients(lambda: plain_forward(latent, x), tensors)
    actual = gradients(lambda: latent(x), tensors)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    _, plain_shapes = saved_for_backward(lambda: plain_forward(latent, x))
    _, shapes = saved_for_backward(lambda: latent(x))
    # Plain autograd keeps the latent weight and the quantized copy (as its transpose); the layer keeps the
    # latent weight only.
    assert sorted(weight_sized(plain_shapes)) == sorted([(OUT, IN), (IN, OUT)])
    assert weight_sized(shapes) == [(OUT, IN)]


@pytest.mark.parametrize("make_layers", [binarymos_layers, ternary_layers], ids=["binarymos", "ternary"])
def test_packed_layers_pass_gradients_to_activations_without_unpacking_for_backward(make_layers):
    """Adapters trained over a packed model: the input gradient is exact and nothing dense is kept."""
    latent, packed = make_layers()
    latent.requires_grad_(False)
    x = torch.randn(3, IN, requires_grad=True)
    (expected,) = gradients(lambda: latent(x), [x])
    y, shapes = saved_for_backward(lambda: packed(x))
    assert (OUT, IN) not in shapes
    assert all(torch.Size(shape).numel() < OUT * IN for shape in shapes)
    (actual,) = gradients(lambda: packed(x), [x])
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_packed_ternary_torch_path_trains_its_scale_like_plain_autograd():
    _, packed = ternary_layers()
    scale = packed.weight_scale.requires_grad_(True)
    groups, size = scale.shape[1], packed.group_size
    x = torch.randn(3, IN)

    def written_out():
        trits = F.pad(packed.trits().float(), (0, groups * size - IN)).view(OUT, groups, size)
        weight = (trits * scale.unsqueeze(-1)).flatten(1)[:, :IN]
        group_sums = F.pad(x, (0, groups * size - IN)).view(3, groups, size).sum(-1)
        return x @ weight.T + group_sums @ packed.weight_shift.T

    args = (packed.weight, scale, packed.weight_shift, IN, size)
    (actual,) = gradients(lambda: ternary_matmul_torch(x, *args), [scale])
    (expected,) = gradients(written_out, [scale])
    assert actual.abs().sum() > 0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_keep_quantized_weights_trades_memory_for_speed_in_its_block_only():
    latent, _ = binarymos_layers()
    x = torch.randn(2, IN, requires_grad=True)
    with keep_quantized_weights():
        _, kept = saved_for_backward(lambda: latent(x))
        expected = gradients(lambda: latent(x), [x, latent.weight])
    assert len(weight_sized(kept)) == 2  # the latent weight and the dense signs
    with pytest.raises(RuntimeError, match="inside"), keep_quantized_weights():
        raise RuntimeError("inside")
    _, shapes = saved_for_backward(lambda: latent(x))
    assert weight_sized(shapes) == [(OUT, IN)]
    for got, want in zip(gradients(lambda: latent(x), [x, latent.weight]), expected, strict=True):
        torch.testing.assert_close(got, want)
