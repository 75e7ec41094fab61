"""4-bit embeddings and output head (``embedding_bits=4``): the group layout, the kernel, conversion, saving, loading.

References are written here: codes by hand for a small matrix, products in float64 from the dequantized values.
Models are tiny random LLaMAs with a tied and an untied head (helpers shared with the 8-bit tests).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_embeddings8 import _float_llama
from transformers import AutoModelForCausalLM

from optimum_binarymos import BinaryMoSConfig
from optimum_binarymos.kernels import ops
from optimum_binarymos.kernels.rows import NATIVE_MAX_TOKENS
from optimum_binarymos.methods.embeddings import quantize_embeddings
from optimum_binarymos.nn.int4 import Int4Embedding, Int4Linear
from optimum_binarymos.nn.int8 import Int8Embedding
from optimum_binarymos.packing import dequantize_groups4, quantize_groups4

pytestmark = pytest.mark.usefixtures("one_thread")

def test_quantize_groups4_by_hand():
    # One row of 40 columns: a full group of 32 and a partial one of 8 (padded with zero codes). Both groups lie
    # on a grid the search finds exactly: steps of 0.5 over the whole range -8..7 (the largest magnitude on the
    # negative side), and steps of 2 over -7..7, which the negative candidates reach first, as the scale -2.
    weight = torch.zeros(1, 40)
    weight[0, 0], weight[0, 1], weight[0, 16], weight[0, 31] = -4.0, 3.5, 1.0, -1.5
    weight[0, 32], weight[0, 33] = 14.0, -2.0
    codes, scale = quantize_groups4(weight, torch.float32)
    assert codes.shape == (1, 32) and codes.dtype == torch.uint8
    assert scale.tolist() == [[0.5, -2.0]]
    # Codes are values + 8; byte i of a group: column i in the low nibble, column 16 + i in the high one.
    low, high = (codes[0] & 15).tolist(), (codes[0] >> 4).tolist()
    assert low[:2] == [0, 15] and high[0] == 10 and high[15] == 5  # -4 / 0.5 = -8 is code 0
    assert low[16:18] == [1, 9]  # second group: 14 / -2 = -7, -2 / -2 = 1
    assert high[16:] == [8] * 16 and low[18:] == [8] * 14  # zeros and padding columns: code 8
    values = dequantize_groups4(codes, scale, 40)
    assert values.shape == (1, 40)
    assert torch.equal(values, weight)


def test_quantize_groups4_stores_codes_of_the_stored_scale_and_beats_max_over_7():
    torch.manual_seed(0)
    weight = torch.randn(64, 100, dtype=torch.bfloat16)
    codes, scale = quantize_groups4(weight)
    assert scale.dtype == torch.bfloat16 and scale.shape == (64, 4)
    # What a reader computes, (q - 8) * scale, with q = clamp(round(W / scale), -8, 7) + 8 for the stored scale.
    wide = torch.nn.functional.pad(weight.float(), (0, 28)).view(64, 4, 32)
    expected = (wide / scale.float().unsqueeze(2)).round().clamp(-8, 7)
    values = dequantize_groups4(codes, scale, 100, torch.float32)
    assert torch.equal(values, (expected * scale.float().unsqueeze(2)).view(64, 128)[:, :100])
    # Never worse than the plain max |w| / 7 scale (one of the candidates), per group; better on the whole.
    plain = (wide.abs().amax(2) / 7).to(torch.bfloat16).float().unsqueeze(2)
    plain_error = (wide - (wide / plain).round().clamp(-7, 7) * plain).pow(2).sum(2)
    error = (torch.nn.functional.pad(values, (0, 28)).view(64, 4, 32) - wide).pow(2).sum(2)
    assert (error <= plain_error * (1 + 1e-6)).all() and error.sum() < 0.9 * plain_error.sum()
    zero_codes, zero_scale = quantize_groups4(torch.zeros(3, 32))
    assert torch.equal(zero_scale, torch.zeros(3, 1)) and torch.equal(zero_codes, torch.full((3, 16), 0x88))


@pytest.mark.parametrize("tokens", [1, 3, 9, NATIVE_MAX_TOKENS, NATIVE_MAX_TOKENS + 8])
@pytest.mark.parametrize("columns", [64, 77, 20])  # whole groups, a partial last group, one partial group
@pytest.mark.parametrize("with_bias", [False, True])
def test_int4_linear_matches_a_float64_product(tokens, columns, with_bias):
    """Few tokens take the native kernel, more the blockwise dequantize-and-matmul path; both against float64."""
    torch.manual_seed(tokens * columns)
    codes, scale = quantize_groups4(torch.randn(300, columns))
    x = torch.randn(tokens, columns)
    bias = torch.randn(300) if with_bias else None
    reference = x.double() @ dequantize_groups4(codes, scale, columns, torch.float64).T
    if bias is not None:
        reference += bias.double()
    y = ops.int4_linear(x, codes, scale, bias)
    assert y.dtype == torch.float32 and y.shape == (tokens, 300)
    torch.testing.assert_close(y.double(), reference, rtol=0, atol=2e-5)


def test_int4_linear_refuses_mismatched_shapes():
    codes, scale = quantize_groups4(torch.randn(10, 64))
    with pytest.raises(ValueError, match="do not fit"):
        ops.int4_linear(torch.randn(1, 96), codes, scale, None)


def test_int4_head_passes_gradients_to_its_input():
    torch.manual_seed(2)
    head = Int4Linear.from_float(torch.nn.Linear(40, 24, bias=False))
    x = torch.randn(3, 40, requires_grad=True)
    head(x).sum().backward()
    expected = dequantize_groups4(head.weight, head.weight_scale, 40).sum(0).expand(3, -1)
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-6)
    assert not head.weight.requires_grad and not head.weight_scale.requires_grad
    with torch.no_grad():  # the kernel path computes the same product
        torch.testing.assert_close(head(x), x @ dequantize_groups4(head.weight, head.weight_scale, 40).T)


def test_int4_embedding_looks_up_dequantized_rows():
    torch.manual_seed(3)
    float_embedding = torch.nn.Embedding(20, 40)
    embedding = Int4Embedding.from_float(float_embedding)
    ids = torch.tensor([[0, 5, 19], [5, 5, 2]])
    expected = dequantize_groups4(embedding.weight, embedding.weight_scale, 40)[ids]
    assert torch.equal(embedding(ids), expected)
    error = (embedding(ids) - float_embedding(ids)).norm() / float_embedding(ids).norm()
    assert error < 0.15  # 4 bits with a fitted scale per 32 values: about 0.1 on Gaussian rows
    assert "4-bit rows" in repr(embedding)


def test_int4_config_over_an_int8_checkpoint_is_refused(tmp_path):
    """A config that says 4-bit over a file with 8-bit rows: the mis-shaped tensors are named."""
    _float_llama(tmp_path, tied=False)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "float", quantization_config=BinaryMoSConfig(embedding_bits=8)
    )
    model.save_pretrained(tmp_path / "packed")
    config_path = tmp_path / "packed" / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"].update(embedding_bits=4, format_version=3)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.embed_tokens\.weight"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "packed")


def test_embeddings_of_another_layout_are_refused_before_anything_changes(tmp_path):
    model = _float_llama(tmp_path, tied=False)
    quantize_embeddings(model, 8)
    head = model.get_output_embeddings()
    with pytest.raises(TypeError, match="already quantized with 8 bits"):
        quantize_embeddings(model, 4)
    assert isinstance(model.get_input_embeddings(), Int8Embedding) and model.get_output_embeddings() is head
