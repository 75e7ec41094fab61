"""Data-aware initialization: the mixture is token-adaptive and the router trains from step 0."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_float_model
from transformers import AutoModelForCausalLM

from optimum_binarymos import (
    BinaryMoSConfig,
    BinaryMoSLinear,
    TernaryConfig,
    calibrate_model,
    convert_model,
    pack_model,
)
from optimum_binarymos.calibration import (
    calibration_token_ids,
    fit_layer,
    fit_ternary_layer,
    spherical_kmeans,
)
from optimum_binarymos.nn.ternary import TernaryLinear
from optimum_binarymos.packing import sign_with_ties


def calibration_ids(rows: int = 4, seed: int = 3) -> torch.Tensor:
    return torch.randint(1, VOCAB, (rows, 64), generator=torch.Generator().manual_seed(seed))


def calibrated(num_experts: int, seed: int = 0) -> torch.nn.Module:
    model = convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=num_experts))
    calibrate_model(model, calibration_ids(), num_tokens=256, sequence_length=64, seed=seed, progress=False)
    return model


def router_gradient_ratio(model: torch.nn.Module, tokens: torch.Tensor) -> float:
    """|d loss / d router| relative to |d loss / d scale_out| in the first layer."""
    model.zero_grad()
    model(input_ids=tokens).logits.float().square().mean().backward()
    layer = model.model.layers[0].self_attn.q_proj
    return (layer.router_weight.grad.norm() / layer.scale_out.grad.norm()).item()


def test_after_svid_the_router_gets_no_gradient_and_after_calibration_it_does(tokens):
    svid = convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=4))
    # Identical experts: the loss does not depend on the gates; float rounding leaves ~1e-7 of the scales'.
    assert router_gradient_ratio(svid, tokens) < 1e-5
    assert router_gradient_ratio(calibrated(4), tokens) > 1e-2


def test_calibrated_experts_differ_and_scales_vary_over_tokens():
    model = calibrated(4)
    layer = model.model.layers[1].mlp.down_proj
    spread = (layer.scale_out.std(dim=0) / layer.scale_out.mean(dim=0)).median()
    assert spread > 0.01
    x = torch.randn(32, layer.in_features, generator=torch.Generator().manual_seed(0))
    _, scale_out = layer.token_scales(x)
    assert (scale_out.std(dim=0) / scale_out.mean(dim=0)).median() > 1e-3


def test_calibration_is_reproducible_with_a_seed():
    first, again, other = calibrated(4, seed=0), calibrated(4, seed=0), calibrated(4, seed=1)
    for name, tensor in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0)
    assert not torch.equal(first.model.layers[0].mlp.up_proj.router_weight, other.model.layers[0].mlp.up_proj.router_weight)


def test_fitted_output_scales_match_the_float_outputs_root_mean_square():
    # One expert, written out: S_out[i] = rms over tokens of (x W^T)_i / rms of ((x * s_in) sign(W)^T)_i.
    torch.manual_seed(0)
    weight = torch.randn(6, 16)
    layer = BinaryMoSLinear.from_float(weight, num_experts=1)
    x = torch.randn(300, 16)
    scale_in = layer.scale_in[0].clone()
    fit_layer(layer, x, route_temperature=4.0, generator=torch.Generator().manual_seed(0))
    float_rms = (x @ weight.T).square().mean(0).sqrt()
    one_bit_rms = ((x * scale_in) @ torch.where(weight >= 0, 1.0, -1.0).T).square().mean(0).sqrt()
    torch.testing.assert_close(layer.scale_out[0], float_rms / one_bit_rms)
    torch.testing.assert_close(layer.scale_in[0], scale_in)  # SVID's input scale kept
    assert torch.equal(sign_with_ties(layer.weight), sign_with_ties(weight))  # the signs are not touched


def test_router_rows_point_at_the_clusters():
    # Two well separated directions: each token's gate favours the centroid of its own cluster.
    generator = torch.Generator().manual_seed(0)
    base = torch.zeros(2, 8)
    base[0, 0], base[1, 1] = 1.0, 1.0
    x = torch.cat([base[0] + 0.05 * torch.randn(50, 8, generator=generator), base[1] + 0.05 * torch.randn(50, 8, generator=generator)])
    centroids = spherical_kmeans(x, 2, torch.Generator().manual_seed(0))
    assignment = (x @ centroids.T).argmax(1)
    assert assignment[:50].unique().numel() == 1 and assignment[50:].unique().numel() == 1
    assert assignment[0] != assignment[50]


def test_calibrated_model_packs_and_reloads_to_equal_logits(tokens, tmp_path):
    model = calibrated(4)
    expected = model(input_ids=tokens).logits
    pack_model(model).save_pretrained(tmp_path / "packed")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    torch.testing.assert_close(reloaded(input_ids=tokens).logits, expected, rtol=0, atol=1e-4)


def test_from_pretrained_calibrates_from_text_files(float_checkpoint, tmp_path, tokens):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    text = tmp_path / "calibration.txt"
    generator = torch.Generator().manual_seed(0)
    text.write_text(" ".join(f"w{i}" for i in torch.randint(1, VOCAB, (400,), generator=generator).tolist()))
    config = BinaryMoSConfig(num_experts=4, dataset=[str(text)], tokenizer=tokenizer, calibration_tokens=256)
    model = AutoModelForCausalLM.from_pretrained(float_checkpoint("llama"), quantization_config=config)
    assert router_gradient_ratio(model, tokens) > 1e-2
    saved = model.config.quantization_config
    saved = saved if isinstance(saved, dict) else saved.to_dict()
    assert "dataset" not in saved and "tokenizer" not in saved  # calibration inputs never reach config.json
    assert saved["calibration_tokens"] == 256


def test_too_little_calibration_data_fails_with_a_clear_message():
    model = convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=4))
    with pytest.raises(ValueError, match=r"gives 128 tokens; 256 are needed. Give more text"):
        calibrate_model(model, calibration_ids(rows=2), num_tokens=256, sequence_length=64, progress=False)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        calibration_token_ids(["some text"], None, num_tokens=256)
    with pytest.raises(ValueError, match="calibration_tokens must be an integer >= 256"):
        BinaryMoSConfig(calibration_tokens=10)


def test_ternary_rows_get_the_float_outputs_root_mean_square_and_keep_their_trits():
    # Written out: row i of weight, scale and shift times rms over tokens of (x W^T)_i / rms of (x W_q^T)_i.
    torch.manual_seed(0)
    weight = torch.randn(6, 32) + 0.1
    layer = TernaryLinear.from_float(weight, group_size=16)
    trits = layer.trits().clone()
    quantized = layer.quantized_weight().detach().clone()
    scale, shift = layer.weight_scale.detach().clone(), layer.weight_shift.detach().clone()
    x = torch.randn(300, 32)
    fit_ternary_layer(layer, x)
    factor = (x @ weight.T).square().mean(0).sqrt() / (x @ quantized.T).square().mean(0).sqrt()
    torch.testing.assert_close(layer.weight_scale.detach(), scale * factor[:, None])
    torch.testing.assert_close(layer.weight_shift.detach(), shift * factor[:, None])
    torch.testing.assert_close(layer.weight.detach(), weight * factor[:, None])
    assert torch.equal(layer.trits(), trits)
    calibrated_rms = (x @ layer.quantized_weight().detach().T).square().mean(0).sqrt()
    torch.testing.assert_close(calibrated_rms, (x @ weight.T).square().mean(0).sqrt())


def test_from_pretrained_calibrates_a_ternary_model_and_it_reloads_to_equal_logits(float_checkpoint, tmp_path, tokens):
    ids = calibration_ids()
    plain = AutoModelForCausalLM.from_pretrained(float_checkpoint("llama"), quantization_config=TernaryConfig(group_size=16))
    config = TernaryConfig(group_size=16, dataset=ids, calibration_tokens=256)
    model = AutoModelForCausalLM.from_pretrained(float_checkpoint("llama"), quantization_config=config)
    before, after = plain.model.layers[0].mlp.down_proj, model.model.layers[0].mlp.down_proj
    assert torch.equal(before.trits(), after.trits())
    assert not torch.allclose(before.weight_scale, after.weight_scale)
    assert "dataset" not in model.config.quantization_config.to_dict()
    expected = model(input_ids=tokens).logits
    model.save_pretrained(tmp_path / "packed")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    torch.testing.assert_close(reloaded(input_ids=tokens).logits, expected, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="calibration_tokens must be an integer >= 256"):
        TernaryConfig(calibration_tokens=10)
