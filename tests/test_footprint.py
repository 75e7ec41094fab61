"""Size estimates from a config alone, against the paper's accounting and against real saved files."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from optimum_binarymos import BinaryMoSConfig
from optimum_binarymos.footprint import estimate_footprint, model_footprint

# LLaMA-2 shapes (untied embeddings, vocabulary 32000).
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)
LLAMA_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40)
LLAMA_70B = dict(
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
)


def llama(shape: dict, **overrides) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        **{"vocab_size": 32000, "tie_word_embeddings": False, **shape, **overrides}
    )


def test_llama_7b_matches_the_papers_accounting():
    binarymos = estimate_footprint(llama(LLAMA_7B), BinaryMoSConfig(num_experts=4))
    onebit = estimate_footprint(llama(LLAMA_7B), BinaryMoSConfig(num_experts=1))
    assert 9.8 <= binarymos.ratio <= 10.3  # about 9.9x with 4 experts
    assert binarymos.ratio < onebit.ratio <= 10.3  # OneBit: about 10.1x, no router, one scale pair
    assert binarymos.linear_ratio == pytest.approx(15.4, abs=0.1)  # the linear layers alone
    assert binarymos.parameters == pytest.approx(6.74e9, rel=1e-3)
    assert binarymos.float16_bytes == 2 * binarymos.parameters
    assert 1.0 < binarymos.bits_per_binarized_weight < 1.05


def test_bigger_models_compress_more_and_the_figures_read_well():
    ratios = [estimate_footprint(llama(shape)).ratio for shape in (LLAMA_7B, LLAMA_13B, LLAMA_70B)]
    assert ratios == sorted(ratios) and ratios[-1] > 14
    footprint = estimate_footprint(llama(LLAMA_70B))
    assert f"{footprint.ratio:.2f}x smaller" in str(footprint) and "E=4" in str(footprint)
    assert "| whole model |" in footprint.to_markdown() and "GB" in footprint.to_markdown()


def test_a_packed_checkpoints_config_brings_its_own_number_of_experts():
    config = llama(LLAMA_7B)
    config.quantization_config = BinaryMoSConfig(num_experts=1).to_dict()  # as read back from config.json
    assert estimate_footprint(config).num_experts == 1
    assert estimate_footprint(config) == estimate_footprint(llama(LLAMA_7B), BinaryMoSConfig(num_experts=1))


def test_tied_embeddings_count_once():
    untied = estimate_footprint(llama(LLAMA_7B))
    tied = estimate_footprint(llama(LLAMA_7B, tie_word_embeddings=True))
    assert untied.float16_bytes - tied.float16_bytes == 2 * 32000 * 4096


def test_rows_round_up_to_whole_bytes():
    config = llama(dict(hidden_size=60, intermediate_size=100, num_hidden_layers=1, num_attention_heads=6))
    footprint = estimate_footprint(config, BinaryMoSConfig(num_experts=1))
    # q,k,v,o: 60 rows of ceil(60/8)=8 bytes; gate, up: 100 rows of 8 bytes; down: 60 rows of ceil(100/8)=13.
    signs = 4 * 60 * 8 + 2 * 100 * 8 + 60 * 13
    scales = 2 * (4 * (60 + 60) + 3 * (60 + 100))
    assert footprint.linear_packed_bytes == signs + scales


@pytest.mark.parametrize("num_experts", [4, 1])
def test_estimate_matches_the_saved_files(tmp_path, num_experts):
    config = llama(
        dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4),
        vocab_size=512,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.float16).save_pretrained(tmp_path / "fp16")
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "fp16", quantization_config=BinaryMoSConfig(num_experts=num_experts), dtype=torch.float16
    )
    model.save_pretrained(tmp_path / "packed")
    estimate = estimate_footprint(config, BinaryMoSConfig(num_experts=num_experts))
    fp16_file = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    packed_file = (tmp_path / "packed" / "model.safetensors").stat().st_size
    assert estimate.float16_bytes == pytest.approx(fp16_file, rel=0.03)
    assert estimate.packed_bytes == pytest.approx(packed_file, rel=0.03)
    assert model_footprint(model) == estimate  # measured on the model itself: the same accounting
