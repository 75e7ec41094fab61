"""``model.dequantize()`` (transformers' quantizer convention) and the modules a quantizer must leave in float."""

from __future__ import annotations

import pytest
import torch
from conftest import make_float_model
from torch import nn
from transformers import AutoModelForCausalLM, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from optimum_binarymos import (
    BinaryMoSConfig,
    PackedBinaryMoSLinear,
    TernaryConfig,
    convert_model,
    modules_to_convert,
    pack_model,
)
from optimum_binarymos.replacement import QUANTIZED_LAYER_TYPES

# float32 reference: the quantized layer computes (x * s_in) @ sign(W)^T * s_out, the dense one x @ W^T; the two
# orders of rounding differ by a few ulp of the logits (|logit| < 10 here), far below this.
ATOL = 1e-5

CASES = {
    "onebit": ("llama", BinaryMoSConfig(num_experts=1), False),
    "onebit-packed": ("llama", BinaryMoSConfig(num_experts=1), True),
    "onebit-gpt2": ("gpt2", BinaryMoSConfig(num_experts=1), True),
    "ternary": ("llama", TernaryConfig(group_size=16), False),
    "ternary-packed": ("llama", TernaryConfig(group_size=16, code_packing="base3"), True),
}


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("case", CASES)
def test_dequantize_gives_a_plain_float_model_with_equal_logits(case, tokens, tmp_path):
    arch, config, packed = CASES[case]
    model = convert_model(make_float_model(arch), config)
    if packed:
        model = pack_model(model)
    expected = logits(model, tokens)

    dense = model.dequantize()

    assert not any(isinstance(module, QUANTIZED_LAYER_TYPES) for module in dense.modules())
    float_type = Conv1D if arch == "gpt2" else nn.Linear
    assert isinstance(dense.get_submodule(modules_to_convert(make_float_model(arch))[0]), float_type)
    assert getattr(dense, "hf_quantizer", None) is None and not hasattr(dense.config, "quantization_config")
    torch.testing.assert_close(logits(dense, tokens), expected, rtol=0, atol=ATOL)
    # It is an ordinary checkpoint now: plain transformers reloads it, without this package's quantizer.
    dense.save_pretrained(tmp_path / "dense")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    assert getattr(again, "hf_quantizer", None) is None
    torch.testing.assert_close(logits(again, tokens), expected, rtol=0, atol=ATOL)


def test_dequantize_refuses_token_dependent_scales_and_changes_nothing(tokens):
    model = pack_model(convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=4)))
    expected = logits(model, tokens)
    with pytest.raises(ValueError, match="4 scaling experts has no single float weight"):
        model.dequantize()
    assert isinstance(model.model.layers[0].mlp.down_proj, PackedBinaryMoSLinear)
    assert model.hf_quantizer is not None
    torch.testing.assert_close(logits(model, tokens), expected, rtol=0, atol=0)


def test_modules_the_architecture_keeps_in_float32_are_not_converted(float_checkpoint, monkeypatch):
    monkeypatch.setattr(LlamaForCausalLM, "_keep_in_fp32_modules", ["down_proj"])
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig(num_experts=2)
    )
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear
    assert not any("down_proj" in name for name in model.hf_quantizer.converted_modules)
    assert any("up_proj" in name for name in model.hf_quantizer.converted_modules)
