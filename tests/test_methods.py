"""The contract every registered quantization method keeps, run over each of them (BinaryMoS and ternary today).

A new method registered in ``optimum_binarymos.methods`` gets these tests by adding its small test config to
``SMALL_CONFIGS``; what is specific to one method stays in that method's own test file.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_float_model, tiny_llama_config
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.quantizers import AutoHfQuantizer

from optimum_binarymos import (
    BinaryMoSConfig,
    TernaryConfig,
    convert_model,
    latent_saving,
    model_footprint,
    pack_model,
    render_model_card,
)
from optimum_binarymos.methods import (
    method_for_config,
    method_for_layer,
    method_for_model,
    method_for_quant_method,
    registered_methods,
)

#: A small config of each registered method, by quant_method.
SMALL_CONFIGS = {
    "binarymos": lambda: BinaryMoSConfig(num_experts=2),
    "binarymos_ternary": lambda: TernaryConfig(group_size=16),
}

METHODS = {method.quant_method: method for method in registered_methods()}


@pytest.fixture(params=sorted(METHODS))
def method(request):
    return METHODS[request.param]


@pytest.fixture
def config(method):
    return SMALL_CONFIGS[method.quant_method]()


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def test_every_registered_method_has_a_small_test_config():
    assert set(SMALL_CONFIGS) == set(METHODS)


def test_the_registry_and_transformers_agree(method, config):
    assert method_for_config(config) is method and method_for_quant_method(method.quant_method) is method
    assert config.quant_method == method.quant_method
    quantizer = AutoHfQuantizer.from_config(config, pre_quantized=False)
    assert quantizer.method is method and quantizer.method_name == method.name
    for layer_class in method.layer_types:
        layer = method.skeleton(64, 32, True, config, layer_class is method.packed_layer, device="meta")
        assert type(layer) is layer_class and method_for_layer(layer) is method


def test_config_saves_with_the_loading_hint_and_reloads_equal(method, config):
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["quant_method"] == method.quant_method
    assert saved["loading"].startswith("import optimum_binarymos")
    again = method.config_class.from_dict(saved)
    assert again.to_dict() == config.to_dict()
    with pytest.raises(ValueError, match=f"{method.config_class.__name__} got unknown arguments: colour"):
        method.config_class(colour="red")
    assert method.config_class(modules_to_not_convert="mlp").modules_to_not_convert == ["mlp"]


def test_convert_pack_save_and_reload_compute_the_same_model(method, config, tokens, tmp_path):
    model = convert_model(make_float_model("llama"), config)
    assert method_for_model(model) is method
    latent = logits(model, tokens)
    assert torch.isfinite(latent).all()
    model.save_pretrained(tmp_path)
    pack_model(model)
    assert all(type(layer) is method.packed_layer for layer in model.modules() if method_for_layer(layer))
    packed = logits(model, tokens)
    # Latent and packed layers compute the same products in float32; only summation order differs.
    torch.testing.assert_close(packed, latent, rtol=1e-4, atol=1e-4)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded.model.layers[0].mlp.down_proj) is method.packed_layer
    assert not any(parameter.requires_grad for parameter in reloaded.parameters())  # loads frozen
    torch.testing.assert_close(logits(reloaded, tokens), packed, rtol=0, atol=0)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as checkpoint:
        # Float embeddings: the first version, which every reader of the layout loads.
        assert checkpoint.metadata()[method.format_metadata_key] == "1"
        assert method.format_version >= 1
        assert checkpoint.get_slice("model.layers.0.mlp.down_proj.weight").get_dtype() == "U8"


def test_latent_checkpoints_reload_trainable_and_equal(method, config, tokens, tmp_path):
    model = convert_model(make_float_model("llama"), config)
    with latent_saving(model):
        model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(again.model.layers[0].mlp.down_proj) is method.latent_layer
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    torch.testing.assert_close(logits(again, tokens), logits(model, tokens), rtol=0, atol=0)


def test_saving_a_given_state_dict_packs_that_state_dict(method, config, tmp_path):
    """What FSDP / ZeRO-3 trainers do: save a full state dict gathered from shards, not the model's own tensors."""
    model = convert_model(make_float_model("llama"), config)
    gathered = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    layer = "model.layers.0.mlp.down_proj"
    gathered[f"{layer}.weight"] = -gathered[f"{layer}.weight"]  # differs from the model's own tensors
    with model.hf_quantizer.saving_state_dict(gathered):
        model.save_pretrained(tmp_path / "gathered")
    with torch.no_grad():
        model.get_submodule(layer).weight.neg_()
    model.save_pretrained(tmp_path / "own")  # outside the block: the model's own (now equal) tensors
    assert model.hf_quantizer.state_dict_to_save is None
    written, expected = (load_file(tmp_path / name / "model.safetensors") for name in ("gathered", "own"))
    assert written.keys() == expected.keys()
    for name in expected:
        assert torch.equal(written[name], expected[name]), name


def test_the_footprint_counts_the_bytes_the_checkpoint_holds(method, config, tmp_path):
    model = convert_model(make_float_model("llama"), config)
    model.save_pretrained(tmp_path)
    on_disk = sum(load_file(tmp_path / "model.safetensors")[name].nbytes for name in model.state_dict())
    assert model_footprint(model, float_bytes=4).packed_bytes == on_disk  # the tiny model is float32


def test_the_card_names_the_method(method, config):
    card = render_model_card(convert_model(make_float_model("llama"), config), "user/tiny")
    assert f"`{method.quant_method}`" in card and all(tag in card for tag in method.tags)
    assert method.citation in card


@pytest.mark.parametrize(
    ("quantization", "smallest_ratio"),
    [(BinaryMoSConfig(num_experts=4), 10.0), (TernaryConfig(), 5.9), (TernaryConfig(code_packing="base3"), 7.0)],
    ids=["binarymos-E4", "ternary-2bit", "ternary-base3"],
)
def test_a_linear_heavy_llama_packs_many_times_smaller_than_float16(quantization, smallest_ratio, tmp_path):
    config = tiny_llama_config(
        vocab_size=320, hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=16
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.float16).save_pretrained(tmp_path / "fp16")
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "fp16", quantization_config=quantization, dtype=torch.float16
    )
    model.save_pretrained(tmp_path / "packed")
    ratio = (tmp_path / "fp16" / "model.safetensors").stat().st_size / (
        tmp_path / "packed" / "model.safetensors"
    ).stat().st_size
    print(f"fp16 / {method_for_config(quantization).footprint_label(model_footprint(model))}: {ratio:.2f}x")
    assert ratio >= smallest_ratio
