"""LoRA on BinaryMoS models through plain peft and transformers' adapter API, on tiny random models."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import make_float_model
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from optimum_binarymos import (
    BinaryMoSConfig,
    PackedBinaryMoSLinear,
    PackedTernaryLinear,
    TernaryConfig,
    convert_model,
    pack_model,
)
from optimum_binarymos.integrations.peft import (
    BinaryMoSLoraLinear,
    load_lora_adapter,
    lora_target_modules,
    register_lora_layers,
)

LLAMA_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def packed_model(arch: str = "llama", config=None) -> torch.nn.Module:
    return pack_model(convert_model(make_float_model(arch), config or BinaryMoSConfig(num_experts=2)))


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("packed-llama")
    packed_model().save_pretrained(folder)
    return str(folder)


def lora_config(**overrides) -> LoraConfig:
    settings = {"r": 4, "lora_alpha": 8, "target_modules": LLAMA_TARGETS, "task_type": "CAUSAL_LM"}
    return register_lora_layers(LoraConfig(**{**settings, **overrides}))


def train_steps(model: torch.nn.Module, tokens: torch.Tensor, steps: int = 3) -> list[float]:
    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2", "llama-ternary"])
def test_plain_get_peft_model_trains_only_lora_on_packed_model(arch, tokens):
    ternary = arch.endswith("-ternary")
    model = packed_model(arch.removesuffix("-ternary"), TernaryConfig(group_size=32) if ternary else None)
    base_logits = logits(model, tokens)
    packed_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    targets = lora_target_modules(model)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "Unsupported layer type" warning from peft
        peft_model = get_peft_model(model, lora_config(target_modules=targets))

    wrapped = [module for module in peft_model.modules() if isinstance(module, BinaryMoSLoraLinear)]
    packed_type = PackedTernaryLinear if ternary else PackedBinaryMoSLinear
    assert len(wrapped) == sum(isinstance(m, packed_type) for m in peft_model.modules()) > 0
    trainable = [name for name, param in peft_model.named_parameters() if param.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    # lora_B starts at zero: the adapted model computes exactly the packed model.
    torch.testing.assert_close(logits(peft_model, tokens), base_logits, rtol=0, atol=1e-6)

    losses = train_steps(peft_model, tokens)
    assert losses[-1] < losses[0]
    assert (logits(peft_model, tokens) - base_logits).abs().max() > 1e-3
    # The 1-bit model itself is untouched: signs, scales, router, norms, embeddings.
    for name, tensor in peft_model.get_base_model().state_dict().items():
        if ".lora_" not in name:
            original = name.replace(".base_layer.", ".")
            assert torch.equal(tensor, packed_state[original]), name


def test_adapter_saves_and_reloads_with_equal_outputs(packed_dir, tmp_path, tokens):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(packed_dir), lora_config())
    train_steps(model, tokens, steps=2)
    expected = logits(model, tokens)
    model.save_pretrained(tmp_path / "adapter")
    saved = sorted(path.name for path in (tmp_path / "adapter").iterdir())
    assert saved == ["README.md", "adapter_config.json", "adapter_model.safetensors"]

    # adapter_config.json carries no custom-module mapping: load_lora_adapter registers it on the loaded config.
    reloaded = load_lora_adapter(AutoModelForCausalLM.from_pretrained(packed_dir), tmp_path / "adapter")
    assert isinstance(reloaded, PeftModel)
    assert any(isinstance(module, BinaryMoSLoraLinear) for module in reloaded.modules())
    torch.testing.assert_close(logits(reloaded, tokens), expected, rtol=0, atol=1e-6)
    assert not any(param.requires_grad for param in reloaded.parameters())  # inference mode by default


def test_transformers_add_adapter_and_load_adapter(packed_dir, tmp_path, tokens):
    model = AutoModelForCausalLM.from_pretrained(packed_dir)
    model.add_adapter(lora_config())
    assert any(isinstance(module, BinaryMoSLoraLinear) for module in model.modules())
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)
    train_steps(model, tokens, steps=2)
    expected = logits(model, tokens)
    model.save_pretrained(tmp_path / "adapter")  # a model with an adapter saves the adapter only

    again = AutoModelForCausalLM.from_pretrained(packed_dir)
    saved_config = register_lora_layers(LoraConfig.from_pretrained(str(tmp_path / "adapter")))
    again.load_adapter(str(tmp_path / "adapter"), peft_config=saved_config)
    torch.testing.assert_close(logits(again, tokens), expected, rtol=0, atol=1e-6)


def test_merging_into_packed_weights_is_refused(tokens):
    # embed_tokens comes before every BinaryMoS layer: the refusal must come before it is merged.
    model = get_peft_model(packed_model(), lora_config(target_modules=["embed_tokens", *LLAMA_TARGETS]))
    train_steps(model, tokens, steps=1)
    expected = logits(model, tokens)
    for merge in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(ValueError, match=r"Embedding.*no layer of it merges"):
            merge()
    assert not any(getattr(module, "merged", False) for module in model.modules())  # nothing half-merged
    torch.testing.assert_close(logits(model, tokens), expected, rtol=0, atol=0)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    with pytest.raises(ValueError, match="PackedBinaryMoSLinear"):
        layer.merge()  # the layer refuses on its own too
    base = model.unload()  # dropping the adapter is fine
    assert not any(isinstance(module, BinaryMoSLoraLinear) for module in base.modules())


def test_gradient_checkpointing_with_adapters(tokens):
    def lora_grads(use_reentrant: bool | None) -> dict[str, torch.Tensor]:
        model = packed_model()
        if use_reentrant is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # renamed activation_checkpointing_* in 5.x
                model.gradient_checkpointing_enable({"use_reentrant": use_reentrant})
            # With reentrant checkpointing, the frozen embeddings must hand a grad-requiring input to the blocks.
            model.enable_input_require_grads()
        torch.manual_seed(
            0
        )  # the same random, non-zero lora_A and lora_B every time: every adapter gets a grad
        peft_model = get_peft_model(model, lora_config(init_lora_weights=False))
        peft_model.train()
        peft_model(input_ids=tokens, labels=tokens).loss.backward()
        return {name: param.grad for name, param in peft_model.named_parameters() if param.requires_grad}

    plain = lora_grads(use_reentrant=None)
    for use_reentrant in (False, True):
        checkpointed = lora_grads(use_reentrant)
        first_layer = [name for name in checkpointed if ".layers.0." in name]
        assert first_layer and all(checkpointed[name].abs().sum() > 0 for name in first_layer)
        assert checkpointed.keys() == plain.keys()
        for name, grad in plain.items():
            torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6)


def test_lora_on_latent_model_keeps_latent_weights_frozen(tokens):
    model = convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=2))
    base_logits = logits(model, tokens)
    peft_model = get_peft_model(model, lora_config())
    trainable = [name for name, param in peft_model.named_parameters() if param.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)
    torch.testing.assert_close(logits(peft_model, tokens), base_logits, rtol=0, atol=1e-6)
    losses = train_steps(peft_model, tokens)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"use_dora": True}, "DoraLinearVariant is not supported"), ({"init_lora_weights": "pissa"}, "pissa")],
)
def test_options_needing_a_dense_weight_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_peft_model(packed_model(), lora_config(**overrides))


def test_lora_target_modules_lists_binarized_layers():
    model = packed_model()
    assert lora_target_modules(model) == LLAMA_TARGETS
    assert lora_target_modules(get_peft_model(model, lora_config())) == LLAMA_TARGETS
    with pytest.raises(ValueError, match="no BinaryMoS layer"):
        lora_target_modules(make_float_model("llama"))


def test_a_plain_lora_config_does_not_know_quantized_layers():
    """No hook changes peft behind the user's back: only a registered config wraps quantized layers."""
    with pytest.raises(ValueError, match="not supported"):
        get_peft_model(packed_model(), LoraConfig(r=4, target_modules=LLAMA_TARGETS))


def test_registering_keeps_the_users_own_mapping():
    class MyLora(torch.nn.Module):
        pass

    config = LoraConfig(r=4, target_modules=LLAMA_TARGETS)
    config._register_custom_module({PackedBinaryMoSLinear: MyLora})
    assert register_lora_layers(register_lora_layers(config)) is config
    assert config._custom_modules[PackedBinaryMoSLinear] is MyLora
    assert config._custom_modules[PackedTernaryLinear] is BinaryMoSLoraLinear
    with pytest.raises(TypeError, match="takes the LoraConfig"):
        register_lora_layers()


def test_importing_the_package_does_not_import_or_patch_peft():
    script = textwrap.dedent(
        """
        import sys
        import optimum_binarymos
        assert "peft" not in sys.modules, "peft was imported eagerly"
        from peft.tuners.lora import LoraModel
        assert LoraModel._check_merge_allowed.__module__ == "peft.tuners.lora.model"
        assert LoraModel._create_new_module.__module__ == "peft.tuners.lora.model"
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
