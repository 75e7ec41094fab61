"""Conversion on load, packed save and reload, on every supported architecture."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import ARCHITECTURES
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from optimum_binarymos import BinaryMoSConfig, BinaryMoSLinear, PackedBinaryMoSLinear


def expected_converted(model: torch.nn.Module, arch: str) -> list[str]:
    suffixes = ARCHITECTURES[arch][1]
    pattern = re.compile(rf".*\.\d+\.({'|'.join(map(re.escape, suffixes))})")
    names = [name for name, _ in model.named_modules() if pattern.fullmatch(name)]
    assert len(names) == 2 * len(suffixes)
    return names


def exact_svid_reference(model: torch.nn.Module, names: list[str]) -> torch.nn.Module:
    """``model`` with each named weight replaced by ``sign(W) * rank1(|W|)`` (exact SVD, ties 0 -> +1)."""
    with torch.no_grad():
        for name in names:
            module = model.get_submodule(name)
            weight = module.weight.t() if isinstance(module, Conv1D) else module.weight
            left, singular, right = torch.linalg.svd(weight.abs().double())
            rank1 = singular[0] * torch.outer(left[:, 0], right[0])  # sign-invariant product
            replaced = torch.where(weight >= 0, 1.0, -1.0).double() * rank1
            replaced = replaced.t() if isinstance(module, Conv1D) else replaced
            module.weight.copy_(replaced.to(module.weight.dtype))
    return model


@pytest.mark.parametrize("num_experts", [1, 4])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_conversion_equals_sign_times_rank1_and_packed_reload_matches(
    arch, num_experts, float_checkpoint, tokens, tmp_path
):
    folder = float_checkpoint(arch)
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    names = expected_converted(reference, arch)
    exact_svid_reference(reference, names)

    config = BinaryMoSConfig(num_experts=num_experts)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config).eval()
    converted = sorted(n for n, m in model.named_modules() if isinstance(m, BinaryMoSLinear))
    assert converted == sorted(names)
    for name in names:
        layer = model.get_submodule(name)
        assert (layer.router_weight is None) == (num_experts == 1)
        if num_experts > 1:
            assert layer.router_weight.abs().sum() > 0  # random, never zero

    with torch.no_grad():
        expected = reference(tokens).logits
        logits = model(tokens).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)

    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as checkpoint:
        keys = set(checkpoint.keys())
        for name in names:
            packed = checkpoint.get_tensor(f"{name}.weight")
            layer = model.get_submodule(name)
            assert packed.dtype == torch.uint8
            assert packed.shape == (layer.out_features, -(-layer.in_features // 8))
            assert (f"{name}.router_weight" in keys) == (num_experts > 1)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert sorted(n for n, m in reloaded.named_modules() if isinstance(m, PackedBinaryMoSLinear)) == sorted(
        names
    )
    assert not any(isinstance(m, BinaryMoSLinear) for m in reloaded.modules())
    assert reloaded.config.quantization_config.num_experts == num_experts
    with torch.no_grad():
        again = reloaded(tokens).logits
    torch.testing.assert_close(again, logits, rtol=1e-5, atol=1e-5)

    generated = reloaded.generate(tokens[:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


def test_fused_moe_experts_stay_float_with_one_log_line(tmp_path, caplog):
    import transformers

    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=88,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="optimum_binarymos"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=BinaryMoSConfig())
    fused_lines = [r for r in caplog.records if "fused MoE expert" in r.getMessage()]
    assert len(fused_lines) == 1
    assert "4 fused MoE expert tensors" in fused_lines[0].getMessage()
    experts = model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.dtype == torch.float32 and experts.gate_up_proj.ndim == 3
    converted = [n for n, m in model.named_modules() if isinstance(m, BinaryMoSLinear)]
    assert len(converted) == 8  # q, k, v, o in each of 2 layers; the router gate is not a Linear
