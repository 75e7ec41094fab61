"""The transformers integration: config validation, bad checkpoints, in-memory conversion and packing, sizes."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import make_float_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from optimum_binarymos import (
    BinaryMoSConfig,
    BinaryMoSLinear,
    PackedBinaryMoSLinear,
    TernaryConfig,
    convert_model,
    modules_to_convert,
    pack_model,
)
from optimum_binarymos.packing import FORMAT_VERSION


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_experts": 0}, "num_experts must be an integer >= 1"),
        ({"num_experts": "4"}, "num_experts must be an integer >= 1"),
        ({"num_experts": True}, "num_experts must be an integer >= 1"),
        ({"svid_iterations": -1}, "svid_iterations must be an integer from 0 to 10000"),
        ({"svid_iterations": 10**9}, "svid_iterations must be an integer from 0 to 10000"),
        ({"modules_to_not_convert": [""]}, "modules_to_not_convert must be a list"),
        ({"format_version": 0}, "format_version must be a positive integer"),
        ({"format_version": 99}, f"reads up to version {FORMAT_VERSION}. Upgrade it"),
        ({"num_expert": 4}, "unknown arguments: num_expert"),
    ],
)
def test_invalid_config_values_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BinaryMoSConfig(**kwargs)


def test_convert_model_names_the_config_it_takes():
    with pytest.raises(TypeError, match="takes a BinaryMoSConfig or TernaryConfig, got dict"):
        convert_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), {"num_experts": 2})


def test_config_round_trips_through_json():
    config = BinaryMoSConfig(num_experts=2, modules_to_not_convert=["mlp.down_proj"])
    again = BinaryMoSConfig.from_dict(json.loads(config.to_json_string()))
    assert again.to_dict() == config.to_dict()


@pytest.fixture
def packed_checkpoint(float_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig()
    )
    model.save_pretrained(tmp_path)
    return tmp_path


def test_newer_format_version_is_refused(packed_checkpoint):
    config_path = packed_checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"]["format_version"] = FORMAT_VERSION + 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}.*pip install -U optimum-binarymos"):
        AutoModelForCausalLM.from_pretrained(packed_checkpoint)


def test_wrong_shape_in_checkpoint_names_the_tensor(packed_checkpoint):
    path = packed_checkpoint / "model.safetensors"
    tensors = load_file(path)
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(
        ValueError,
        match=r"model\.layers\.1\.mlp\.up_proj\.weight has shape \[88, 7\], expected \[88, 8\]",
    ):
        AutoModelForCausalLM.from_pretrained(packed_checkpoint)


def test_missing_tensor_in_checkpoint_names_it(packed_checkpoint):
    path = packed_checkpoint / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.0.self_attn.k_proj.scale_out"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.scale_out is missing"):
        AutoModelForCausalLM.from_pretrained(packed_checkpoint)


def test_no_convertible_layer_is_an_error_and_leaves_the_model_untouched(float_checkpoint):
    with pytest.raises(ValueError, match="no linear layer inside its decoder blocks"):
        AutoModelForCausalLM.from_pretrained(
            float_checkpoint("llama"), quantization_config=BinaryMoSConfig(modules_to_not_convert=["layers"])
        )
    model = make_float_model("llama")
    before = {name: type(module) for name, module in model.named_modules()}
    with pytest.raises(ValueError, match="no linear layer"):
        convert_model(model, BinaryMoSConfig(modules_to_not_convert=["self_attn", "mlp"]))
    assert {name: type(module) for name, module in model.named_modules()} == before
    assert not hasattr(model, "hf_quantizer")


def test_modules_to_not_convert_matches_whole_name_components():
    model = make_float_model("llama")
    names = modules_to_convert(model, ["mlp.down_proj", "layers.0"])
    assert names == [
        f"model.layers.1.{s}"
        for s in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
        )
    ]
    assert "lm_head" not in modules_to_convert(model)


def test_in_memory_convert_then_pack_then_save_matches_from_pretrained(float_checkpoint, tokens, tmp_path):
    model = convert_model(make_float_model("opt"), BinaryMoSConfig(num_experts=4))
    on_load = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("opt"), quantization_config=BinaryMoSConfig()
    )
    with torch.no_grad():
        latent_logits = model(tokens).logits
        # Right after conversion the experts are identical, so the (random) router does not matter.
        torch.testing.assert_close(latent_logits, on_load(tokens).logits, rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="already a BinaryMoS model"):
        convert_model(model)
    pack_model(model)
    assert not any(isinstance(m, BinaryMoSLinear) for m in model.modules())
    assert sum(isinstance(m, PackedBinaryMoSLinear) for m in model.modules()) == 12
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, latent_logits, rtol=1e-6, atol=1e-6)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, latent_logits, rtol=1e-6, atol=1e-6)


def test_trained_latent_model_reloads_packed_with_equal_logits(float_checkpoint, tokens, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("qwen3"), quantization_config=BinaryMoSConfig()
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):  # a few steps so experts, router and signs all move away from their init
        optimizer.zero_grad()
        model(tokens, labels=tokens).loss.backward()
        optimizer.step()
    layer = model.model.layers[0].mlp.up_proj
    assert not torch.allclose(layer.scale_in[0], layer.scale_in[1])
    model.eval()
    with torch.no_grad():
        expected = model(tokens).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_conversion_keeps_scales_in_model_dtype(float_checkpoint, tokens, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig(), dtype=torch.bfloat16
    )
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.weight.dtype == layer.scale_in.dtype == layer.router_weight.dtype == torch.bfloat16
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["model.layers.0.self_attn.q_proj.scale_out"].dtype == torch.bfloat16
    assert tensors["model.layers.0.self_attn.q_proj.weight"].dtype == torch.uint8
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.model.layers[0].self_attn.q_proj.scale_in.dtype == torch.bfloat16
    # Every float tensor comes back bit for bit, and the signs are the latent weights' signs.
    loaded = dict(reloaded.named_parameters())
    for name, param in model.named_parameters():
        if name.endswith(".weight") and isinstance(model.get_submodule(name[: -len(".weight")]), BinaryMoSLinear):
            signs = reloaded.get_submodule(name[: -len(".weight")]).signs(torch.bfloat16)
            assert torch.equal(signs, torch.where(param >= 0, 1.0, -1.0).to(torch.bfloat16)), name
        else:
            assert torch.equal(loaded[name], param), name
    # Same arithmetic on both sides (the packed path unpacks the same signs in bfloat16): equal logits.
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, model(tokens).logits, rtol=0, atol=0)


def test_trainer_accepts_the_latent_model_and_refuses_nothing(float_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig()
    )
    assert model.hf_quantizer.is_trainable and model.hf_quantizer.is_qat_trainable
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    transformers.Trainer(model=model, args=args)  # raises for quantized models that cannot train


def test_float_weights_under_a_binarymos_config_are_refused(float_checkpoint, tmp_path):
    # The shape of the authors' Hub checkpoints: float latent weights under a quantized config.
    import shutil

    shutil.copytree(float_checkpoint("llama"), tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = BinaryMoSConfig().to_dict()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight is a float weight"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_latent_saving_writes_float_latent_weights_that_reload_trainable(float_checkpoint, tokens, tmp_path):
    from optimum_binarymos import latent_saving

    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("gpt2"), quantization_config=BinaryMoSConfig()
    )
    with latent_saving(model):
        model.save_pretrained(tmp_path / "latent")
    assert model.config.quantization_config.checkpoint_form == "packed"
    saved = json.loads((tmp_path / "latent" / "config.json").read_text())["quantization_config"]
    assert saved["checkpoint_form"] == "latent"
    tensors = load_file(tmp_path / "latent" / "model.safetensors")
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (192, 64)  # latent, (out, in)

    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "latent")
    layer = resumed.transformer.h[0].attn.c_attn
    assert isinstance(layer, BinaryMoSLinear)
    torch.testing.assert_close(layer.weight, model.transformer.h[0].attn.c_attn.weight, rtol=0, atol=0)
    torch.testing.assert_close(
        layer.router_weight, model.transformer.h[0].attn.c_attn.router_weight, rtol=0, atol=0
    )
    assert resumed.hf_quantizer.is_qat_trainable
    with torch.no_grad():
        torch.testing.assert_close(resumed(tokens).logits, model(tokens).logits, rtol=1e-6, atol=1e-6)

    resumed.save_pretrained(tmp_path / "packed")  # outside the block: packed again
    assert "transformer.h.0.attn.c_attn.weight" in load_file(tmp_path / "packed" / "model.safetensors")

    pack_model(model)
    with pytest.raises(ValueError, match="no latent weights"):
        with latent_saving(model):
            pass


def test_packed_models_train_only_through_adapters(packed_checkpoint):
    packed = AutoModelForCausalLM.from_pretrained(packed_checkpoint)
    assert packed.hf_quantizer.is_trainable and not packed.hf_quantizer.is_qat_trainable
    latent = convert_model(make_float_model("llama"))
    assert latent.hf_quantizer.is_qat_trainable
    pack_model(latent)
    assert not latent.hf_quantizer.is_qat_trainable


@pytest.mark.parametrize("config_class", [BinaryMoSConfig, TernaryConfig])
def test_one_module_name_given_as_a_string_is_one_name(config_class):
    # A string used to become its characters (['m', 'l', 'p']) and every MLP layer was converted.
    model = convert_model(make_float_model("llama"), config_class(modules_to_not_convert="mlp"))
    assert config_class(modules_to_not_convert="mlp").modules_to_not_convert == ["mlp"]
    for block in model.model.layers:
        assert all(type(getattr(block.mlp, name)) is torch.nn.Linear for name in ("gate_proj", "up_proj", "down_proj"))
        assert type(block.self_attn.q_proj) is not torch.nn.Linear


@pytest.mark.reliability
def test_packed_checkpoint_loads_frozen_and_runs_packed_kernels_with_grad_enabled(tmp_path, tokens, monkeypatch):
    import optimum_binarymos.nn.binarymos as layers_module

    model = convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=2))
    model.save_pretrained(tmp_path / "packed")
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    assert not any(param.requires_grad for param in packed.parameters())

    kernel_calls = []
    kernel = layers_module.binarymos_linear

    def recording_kernel(*args, **kwargs):
        kernel_calls.append(args[0].shape)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(layers_module, "binarymos_linear", recording_kernel)  # the kernel the layers call
    assert torch.is_grad_enabled()
    packed(tokens)  # no torch.no_grad(): a user calling the model as is
    layers = sum(isinstance(module, PackedBinaryMoSLinear) for module in packed.modules())
    assert len(kernel_calls) == layers > 0

    # Training the scales stays possible, explicitly: then the differentiable path runs.
    kernel_calls.clear()
    packed.model.layers[0].mlp.up_proj.requires_grad_(True)
    packed(tokens).logits.sum().backward()
    assert packed.model.layers[0].mlp.up_proj.scale_out.grad is not None
    assert len(kernel_calls) < layers
