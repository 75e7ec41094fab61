"""8-bit embeddings and output head (``embedding_bits=8``): the row layout, the kernel, conversion, saving, loading.

References are written here: codes by hand for a small matrix, products in float64 from the dequantized values.
Models are tiny random LLaMAs with a tied and an untied head.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama_config
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import optimum_binarymos
from optimum_binarymos import BinaryMoSConfig, TernaryConfig, model_footprint
from optimum_binarymos.kernels import ops
from optimum_binarymos.kernels.native import native_kernels
from optimum_binarymos.kernels.rows import NATIVE_MAX_TOKENS
from optimum_binarymos.nn.int4 import Int4Embedding, Int4Linear
from optimum_binarymos.nn.int8 import Int8Embedding, Int8Linear
from optimum_binarymos.packing import dequantize_rows, quantize_row_layout, quantize_rows

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    "onebit": lambda bits: BinaryMoSConfig(num_experts=1, embedding_bits=bits),
    "binarymos": lambda bits: BinaryMoSConfig(num_experts=4, embedding_bits=bits),
    "ternary": lambda bits: TernaryConfig(group_size=32, embedding_bits=bits),
}

#: embedding_bits -> (embedding class, head class, (dtype, shape) of the saved codes and of a saved scale, version),
#: for the tiny LLaMA (vocabulary 96, hidden 64: two 4-bit groups of 16 bytes per row).
LAYOUTS = {
    8: (Int8Embedding, Int8Linear, ("I8", [96, 64]), [96], "2"),
    4: (Int4Embedding, Int4Linear, ("U8", [96, 32]), [96, 2], "3"),
}


def test_quantize_rows_by_hand():
    weight = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [-2.54, 1.27, 0.01, 2.0]])
    codes, scale = quantize_rows(weight, torch.float32)
    # Row 0: scale 1/127, codes round(w * 127); row 1: all zero, scale 0; row 2: scale 2.54 / 127 = 0.02.
    assert scale.tolist() == pytest.approx([1 / 127, 0.0, 0.02])
    assert codes.dtype == torch.int8
    assert codes.tolist() == [[127, -64, 32, 0], [0, 0, 0, 0], [-127, 64, 0, 100]]  # -63.5 and 63.5 round to even
    assert torch.equal(dequantize_rows(codes, scale), codes.float() * scale[:, None])


def test_quantize_rows_error_is_half_a_step_against_the_stored_scale():
    torch.manual_seed(0)
    weight = torch.randn(64, 100, dtype=torch.bfloat16)
    codes, scale = quantize_rows(weight)
    assert scale.dtype == torch.bfloat16
    step = scale.float()[:, None]
    error = (dequantize_rows(codes, scale, torch.float32) - weight.float()).abs()
    # Codes are computed against the rounded bf16 scale, so the error is half a step (float32 division slack).
    assert (error <= step / 2 * (1 + 1e-5)).all()
    assert codes.abs().max() <= 127


@pytest.mark.parametrize("tokens", [1, 3, NATIVE_MAX_TOKENS, NATIVE_MAX_TOKENS + 8])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_linear_matches_a_float64_product(tokens, with_bias):
    """Few tokens take the native kernel, more the blockwise dequantize-and-matmul path; both against float64."""
    torch.manual_seed(tokens)
    codes, scale = quantize_rows(torch.randn(300, 77))  # 77: not a multiple of the kernel's 8 or 32 lanes
    x = torch.randn(tokens, 77)
    bias = torch.randn(300) if with_bias else None
    reference = x.double() @ (codes.double() * scale.double()[:, None]).T
    if bias is not None:
        reference += bias.double()
    y = ops.int8_linear(x, codes, scale, bias)
    assert y.dtype == torch.float32 and y.shape == (tokens, 300)
    torch.testing.assert_close(y.double(), reference, rtol=0, atol=2e-5)  # float32 sums of 77 terms of size ~1


@pytest.mark.parametrize("bits", [8, 4])
def test_head_product_runs_the_native_kernel_for_few_tokens(monkeypatch, bits):
    kernels = native_kernels()
    if kernels is None:
        pytest.skip("the native CPU kernels did not build on this machine")
    name = {8: "int8_linear", 4: "int4_linear"}[bits]
    calls = []
    original = getattr(type(kernels), name)
    monkeypatch.setattr(type(kernels), name, lambda self, *a: calls.append(a[0].shape) or original(self, *a))
    codes, scale = quantize_row_layout(torch.randn(40, 32), bits)
    product = getattr(ops, name)
    product(torch.randn(1, 32), codes, scale, None)
    product(torch.randn(NATIVE_MAX_TOKENS + 1, 32), codes, scale, None)
    assert calls == [(1, 32)]


def test_int8_linear_in_bfloat16_rounds_once():
    torch.manual_seed(1)
    codes, scale = quantize_rows(torch.randn(50, 64), torch.bfloat16)
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    exact = x.double() @ (codes.double() * scale.double()[:, None]).T
    y = ops.int8_linear(x, codes, scale, None)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), exact.to(torch.bfloat16).double(), rtol=0, atol=0)


def test_int8_head_passes_gradients_to_its_input():
    torch.manual_seed(2)
    head = Int8Linear.from_float(torch.nn.Linear(16, 24, bias=False))
    x = torch.randn(3, 16, requires_grad=True)
    head(x).sum().backward()
    # d(sum(x @ W^T))/dx = column sums of W, W the dequantized weight.
    expected = (head.weight.float() * head.weight_scale[:, None]).sum(0).expand(3, -1)
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-6)
    assert not head.weight.requires_grad and not head.weight_scale.requires_grad


def test_int8_embedding_looks_up_dequantized_rows():
    torch.manual_seed(3)
    float_embedding = torch.nn.Embedding(20, 8)
    embedding = Int8Embedding.from_float(float_embedding)
    ids = torch.tensor([[0, 5, 19], [5, 5, 2]])
    expected = dequantize_rows(embedding.weight, embedding.weight_scale)[ids]
    assert torch.equal(embedding(ids), expected)
    # Within half a step of the float table.
    step = embedding.weight_scale[ids].unsqueeze(-1)
    assert ((embedding(ids) - float_embedding(ids)).abs() <= step / 2 * (1 + 1e-5)).all()


def _float_llama(tmp_path, tied: bool):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(tie_word_embeddings=tied)).eval()
    model.save_pretrained(tmp_path / "float")
    return model


def _header(path):
    with safe_open(str(path), framework="pt") as checkpoint:
        tensors = {key: (checkpoint.get_slice(key).get_dtype(), checkpoint.get_slice(key).get_shape()) for key in checkpoint.keys()}
        return tensors, checkpoint.metadata()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("bits", list(LAYOUTS))
def test_converted_model_saves_quantized_tables_and_reloads_bit_exact(tmp_path, bits, method, tied):
    embedding_type, head_type, codes_header, scale_shape, version = LAYOUTS[bits]
    _float_llama(tmp_path, tied)
    config = CONFIGS[method](bits)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=config).eval()
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(embedding, embedding_type) and isinstance(head, head_type)
    assert (head.weight is embedding.weight) is tied
    ids = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        in_memory = model(ids).logits
    model.save_pretrained(tmp_path / "packed")

    tensors, metadata = _header(tmp_path / "packed" / "model.safetensors")
    key = "binarymos_format_version" if method != "ternary" else "ternary_format_version"
    assert metadata[key] == version
    assert tensors["model.embed_tokens.weight"] == codes_header
    assert tensors["model.embed_tokens.weight_scale"][1] == scale_shape
    assert ("lm_head.weight" in tensors) is not tied  # a tied head is the embedding table, as for float models
    assert tensors["lm_head.weight_scale"][1] == scale_shape
    saved = json.loads((tmp_path / "packed" / "config.json").read_text())["quantization_config"]
    assert saved["embedding_bits"] == bits and saved["format_version"] == int(version)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed").eval()
    assert isinstance(reloaded.get_input_embeddings(), embedding_type)
    assert isinstance(reloaded.get_output_embeddings(), head_type)
    assert (reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight) is tied
    assert not any(param.requires_grad for param in reloaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, in_memory, rtol=0, atol=1e-6)


def test_float_embeddings_still_write_format_version_1(tmp_path):
    """Without 8-bit embeddings a checkpoint is what version-1 readers know: no new key, version 1."""
    _float_llama(tmp_path, tied=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=BinaryMoSConfig())
    model.save_pretrained(tmp_path / "packed")
    saved = json.loads((tmp_path / "packed" / "config.json").read_text())["quantization_config"]
    assert saved["format_version"] == 1 and "embedding_bits" not in saved
    assert _header(tmp_path / "packed" / "model.safetensors")[1]["binarymos_format_version"] == "1"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    assert type(reloaded.get_input_embeddings()) is torch.nn.Embedding


def test_int8_checkpoint_with_float_embeddings_is_refused(tmp_path):
    """A config that says 8-bit over a file whose embeddings are float: named, not cast to int8."""
    _float_llama(tmp_path, tied=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=BinaryMoSConfig())
    model.save_pretrained(tmp_path / "packed")
    config_path = tmp_path / "packed" / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"].update(embedding_bits=8, format_version=2)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.embed_tokens\.weight is a float weight .*expected int8"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "packed")


@pytest.mark.parametrize("bits", [8, 4])
def test_convert_model_and_dequantize_round_trip(tmp_path, bits):
    model = _float_llama(tmp_path, tied=True)
    optimum_binarymos.convert_model(model, BinaryMoSConfig(num_experts=1, embedding_bits=bits))
    assert isinstance(model.get_input_embeddings(), {8: Int8Embedding, 4: Int4Embedding}[bits])
    ids = torch.randint(0, 96, (1, 7))
    with torch.no_grad():
        quantized = model(ids).logits
    model.dequantize()
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert type(embedding) is torch.nn.Embedding and type(head) is torch.nn.Linear
    assert head.weight is embedding.weight
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, quantized, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", list(LAYOUTS))
def test_footprint_counts_quantized_tables_as_saved(tmp_path, bits):
    _float_llama(tmp_path, tied=True)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "float", quantization_config=BinaryMoSConfig(embedding_bits=bits), dtype=torch.bfloat16
    )
    model.save_pretrained(tmp_path / "packed")
    tensors, _ = _header(tmp_path / "packed" / "model.safetensors")
    sizes = {"I8": 1, "U8": 1, "BF16": 2, "F16": 2, "F32": 4}
    stored = sum(sizes[dtype] * torch.Size(shape).numel() for dtype, shape in tensors.values())
    footprint = model_footprint(model)
    assert footprint.packed_bytes == stored
    assert footprint.embedding_bits == bits
    float_model = AutoModelForCausalLM.from_config(tiny_llama_config(tie_word_embeddings=True))
    assert footprint.float16_bytes == model_footprint(float_model).float16_bytes
    # The same figure from the float model and the config, before converting anything.
    assert model_footprint(float_model, BinaryMoSConfig(embedding_bits=bits)).packed_bytes == stored


def test_embedding_bits_values_are_checked():
    with pytest.raises(ValueError, match="embedding_bits must be None .*, 8 .* or 4"):
        BinaryMoSConfig(embedding_bits=2)
    with pytest.raises(ValueError, match="embedding_bits must be None .*, 8 .* or 4"):
        TernaryConfig(embedding_bits=True)


def test_a_head_that_is_not_a_linear_is_refused_before_anything_changes(tmp_path):
    model = _float_llama(tmp_path, tied=False)
    model.lm_head = torch.nn.Sequential(model.lm_head)
    embedding = model.get_input_embeddings()
    with pytest.raises(TypeError, match="output head; this model's is a Sequential"):
        optimum_binarymos.methods.embeddings.quantize_embeddings(model)
    assert model.get_input_embeddings() is embedding
