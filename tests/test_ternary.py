"""Ternary (DLT) quantization: rounding, gradients, packing, kernels, conversion on every architecture, sizes."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch
import transformers
from conftest import ARCHITECTURES, make_float_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_architectures import expected_converted
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

import optimum_binarymos.ternary_quantizer  # noqa: F401  registers "binarymos_ternary" with transformers
from optimum_binarymos import TernaryConfig, convert_model, latent_saving, modules_to_convert, pack_model
from optimum_binarymos.kernels.ternary import ternary_matmul, ternary_matmul_torch
from optimum_binarymos.nn.ternary import PackedTernaryLinear, TernaryLinear, ternarize_ste, twn_init
from optimum_binarymos.packing import (
    TERNARY_FORMAT_VERSION,
    pack_ternary,
    round_ternary,
    ternarize,
    ternary_packed_columns,
    unpack_ternary,
)

FORMAT_DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT_TERNARY.md"


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------- rounding


def test_rounding_hand_cases_ties_go_to_even_and_clamp():
    ratio = torch.tensor([-3.0, -1.5, -1.0, -0.51, -0.5, -0.49, 0.0, 0.49, 0.5, 0.51, 1.0, 1.49, 1.5, 7.0])
    assert round_ternary(ratio).tolist() == [-1, -1, -1, -1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_ternarize_uses_each_groups_scale_and_shift_and_pads_the_last_group():
    # in_features 5, group size 4: columns 0-3 are group 0 (alpha 2, gamma 1), column 4 is group 1 (alpha 1, gamma 0).
    weight = torch.tensor([[1.0, 2.9, -0.2, 4.0, -0.7]])
    scale = torch.tensor([[2.0, 1.0]])
    shift = torch.tensor([[1.0, 0.0]])
    # (W - gamma) / alpha = [0, 0.95, -0.6, 1.5 | -0.7]
    assert ternarize(weight, scale, shift, group_size=4).tolist() == [[0, 1, -1, 1, -1]]
    w_q = ternarize_ste(weight, scale, shift, 4)
    assert w_q.tolist() == [[1.0, 3.0, -1.0, 3.0, -1.0]]


def test_twn_init_hand_case_and_padding_and_constant_groups():
    # Group [1, 2, 3, 10]: gamma = 4, |W - gamma| = [3, 2, 1, 6], mean 3, delta = 2.1, alpha = mean(3, 6) = 4.5.
    # Second group holds one real column (5.0) and three padding columns that must not count.
    weight = torch.tensor([[1.0, 2.0, 3.0, 10.0, 5.0], [7.0, 7.0, 7.0, 7.0, 0.0]])
    scale, shift = twn_init(weight, group_size=4)
    assert shift[0].tolist() == [4.0, 5.0]
    assert scale[0, 0].item() == pytest.approx(4.5)
    assert shift[1, 0].item() == 7.0 and 0 < scale[1, 0].item() < 1e-30  # constant group: tiny positive alpha
    w_q = ternarize_ste(weight, scale, shift, 4)
    assert w_q[1].tolist() == weight[1].tolist()  # constant groups and single columns are exact
    assert w_q[0, 4].item() == 5.0
    # TWN without shift: gamma = 0, |W| = [1, 2, 3, 10], delta = 0.7 * 4 = 2.8, alpha = mean(3, 10) = 6.5.
    scale, shift = twn_init(weight, group_size=4, shift_init="zero")
    assert shift.abs().sum() == 0 and scale[0, 0].item() == pytest.approx(6.5)


# ---------------------------------------------------------------------------------------------------- gradients


def relaxed_quantized_weight(weight, scale, shift, group_size, frozen_residual):
    """``alpha * (clamp(v, -1, 1) + R) + gamma`` in float64 with ``R = T - clamp(v)`` frozen: a smooth function
    whose true derivatives are the DLT/LSQ gradients, for finite differences."""
    columns = torch.arange(weight.shape[1]) // group_size
    alpha, gamma = scale[:, columns], shift[:, columns]
    ratio = (weight - gamma) / alpha
    return alpha * (ratio.clamp(-1, 1) + frozen_residual) + gamma


def test_dlt_gradients_match_the_written_out_formulas_and_finite_differences():
    torch.manual_seed(0)
    out_features, in_features, group_size = 3, 37, 16  # last group has 5 real columns
    weight = torch.randn(out_features, in_features)
    scale, shift = twn_init(weight, group_size)
    columns = torch.arange(in_features) // group_size
    ratio = (weight - shift[:, columns]) / scale[:, columns]
    # Keep clear of the clamp's kinks at |v| = 1 so that finite differences see a smooth function.
    near_kink = (ratio.abs() - 1).abs() < 0.02
    weight = torch.where(near_kink, weight + 0.05 * scale[:, columns], weight)
    upstream = torch.randn(out_features, in_features)

    leaves = [t.clone().requires_grad_(True) for t in (weight, scale, shift)]
    (ternarize_ste(*leaves, group_size) * upstream).sum().backward()
    grad_weight, grad_scale, grad_shift = (t.grad for t in leaves)

    # The formulas of the docstring, written out element by element.
    v = (weight - shift[:, columns]) / scale[:, columns]
    trits = v.round().clamp(-1, 1)
    inside = v.abs() < 1
    expected_weight = upstream * inside
    expected_scale = torch.zeros_like(scale).index_add_(
        1, columns, upstream * torch.where(inside, trits - v, trits)
    )
    expected_shift = torch.zeros_like(shift).index_add_(1, columns, upstream * ~inside)
    torch.testing.assert_close(grad_weight, expected_weight, rtol=0, atol=0)
    torch.testing.assert_close(grad_scale, expected_scale, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_shift, expected_shift, rtol=1e-5, atol=1e-5)
    assert inside.any() and (~inside).any()

    # Central finite differences of the smooth relaxation, in float64.
    w64, s64, h64, g64 = (t.double() for t in (weight, scale, shift, upstream))
    residual = trits.double() - v.double().clamp(-1, 1)

    def objective(w, s, h):
        return (relaxed_quantized_weight(w, s, h, group_size, residual) * g64).sum().item()

    eps = 1e-6
    for name, tensor, analytic in [("scale", s64, grad_scale), ("shift", h64, grad_shift)]:
        numeric = torch.zeros_like(tensor)
        for index in range(tensor.numel()):
            plus, minus = tensor.clone(), tensor.clone()
            plus.view(-1)[index] += eps
            minus.view(-1)[index] -= eps
            args = {"scale": (w64, plus, h64), "shift": (w64, s64, plus)}[name]
            args_minus = {"scale": (w64, minus, h64), "shift": (w64, s64, minus)}[name]
            numeric.view(-1)[index] = (objective(*args) - objective(*args_minus)) / (2 * eps)
        torch.testing.assert_close(analytic.double(), numeric, rtol=1e-4, atol=1e-4, msg=name)
    for index in [0, 5, 17, 36, 40, 110]:  # a few weights, inside and outside the clip range
        plus, minus = w64.clone(), w64.clone()
        plus.view(-1)[index] += eps
        minus.view(-1)[index] -= eps
        numeric = (objective(plus, s64, h64) - objective(minus, s64, h64)) / (2 * eps)
        assert grad_weight.view(-1)[index].item() == pytest.approx(numeric, abs=1e-5)


def test_latent_layer_trains_weight_scale_and_shift():
    torch.manual_seed(0)
    layer = TernaryLinear.from_float(torch.randn(8, 40), torch.randn(8), group_size=16)
    layer(torch.randn(5, 40)).square().sum().backward()
    for name in ("weight", "weight_scale", "weight_shift", "bias"):
        assert getattr(layer, name).grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------------ packing


def test_byte_layout_hand_case():
    trits = torch.tensor([[1, -1, 0, 1, -1, 0]])  # codes 2 0 1 2 | 0 1 (+ padding code 1)
    assert pack_ternary(trits, "2bit").tolist() == [
        [2 + (1 << 4) + (2 << 6), 0 + (1 << 2) + (1 << 4) + (1 << 6)]
    ]
    assert pack_ternary(trits, "base3").tolist() == [[2 + 9 + 2 * 27, 1 + 3 + 9 + 27 + 81]]


def test_worked_example_of_the_format_document_prints_what_it_says():
    text = FORMAT_DOC.read_text()
    code, expected = re.search(r"```python\n(.*?)```\n\nOutput:\n\n```\n(.*?)```", text, re.DOTALL).groups()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(FORMAT_DOC), "exec"), {})
    assert printed.getvalue() == expected


@pytest.mark.parametrize("code_packing", ["2bit", "base3"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (2, 5), (5, 7), (4, 9), (17, 63), (13, 1001)])
def test_round_trip_odd_shapes(shape, code_packing):
    torch.manual_seed(sum(shape))
    trits = torch.randint(-1, 2, shape, dtype=torch.int8)
    packed = pack_ternary(trits, code_packing)
    assert packed.dtype == torch.uint8
    assert packed.shape == (shape[0], ternary_packed_columns(shape[1], code_packing))
    assert torch.equal(unpack_ternary(packed, shape[1], code_packing), trits)
    assert unpack_ternary(packed, shape[1], code_packing, torch.bfloat16).dtype == torch.bfloat16
    if code_packing == "base3":
        assert packed.max() <= 242


def test_packing_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"values in \{-1, 0, \+1\}"):
        pack_ternary(torch.tensor([[2, 0]]))
    with pytest.raises(ValueError, match="code_packing must be one of"):
        pack_ternary(torch.zeros(2, 3), "3bit")
    packed = pack_ternary(torch.zeros(3, 9, dtype=torch.int8), "base3")
    with pytest.raises(ValueError, match="in_features=17 needs 4"):
        unpack_ternary(packed, 17, "base3")
    with pytest.raises(ValueError, match="uint8"):
        unpack_ternary(packed.to(torch.int32), 9, "base3")


# ---------------------------------------------------------------------------------------------- layers, kernels


def trained_like_pair(code_packing, bias=True, in_features=300, out_features=70, group_size=64):
    """A latent layer with perturbed scales and shifts (as after training) and its packed twin."""
    torch.manual_seed(3)
    latent = TernaryLinear.from_float(
        0.05 * torch.randn(out_features, in_features), torch.randn(out_features) if bias else None, group_size
    )
    with torch.no_grad():
        latent.weight_scale.mul_(1 + 0.3 * torch.rand_like(latent.weight_scale))
        latent.weight_shift.add_(0.01 * torch.randn_like(latent.weight_shift))
    return latent, PackedTernaryLinear.from_latent(latent, code_packing)


@pytest.mark.parametrize("code_packing", ["2bit", "base3"])
def test_packed_layer_equals_latent_for_any_batch_shape(code_packing, monkeypatch):
    monkeypatch.setenv("BINARYMOS_BACKEND", "torch")
    latent, packed = trained_like_pair(code_packing)
    assert packed.weight.shape == (70, ternary_packed_columns(300, code_packing))
    assert torch.equal(packed.trits(), latent.trits())
    torch.testing.assert_close(packed.dequantize(), latent.quantized_weight().detach())
    for shape in [(300,), (1, 300), (3, 300), (2, 5, 300)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(packed(x), latent(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected 300"):
        packed(torch.randn(2, 299))


def nan_padded(tensor, extra_rows=3, extra_cols=7):
    """``tensor`` as a strided view into a larger NaN buffer: an unmasked out-of-bounds read shows up as NaN."""
    buffer = torch.full(
        (tensor.shape[0] + extra_rows, tensor.shape[1] + extra_cols), float("nan"), dtype=tensor.dtype
    )
    buffer[: tensor.shape[0], : tensor.shape[1]] = tensor
    return buffer[: tensor.shape[0], : tensor.shape[1]]


@pytest.mark.parametrize(
    ("code_packing", "dtype", "rows"),
    [
        ("2bit", torch.float32, 5),
        ("base3", torch.float32, 1),
        ("2bit", torch.bfloat16, 19),
        ("base3", torch.float16, 3),
    ],
)
def test_triton_kernel_matches_torch_path_on_nan_padded_inputs(code_packing, dtype, rows, monkeypatch):
    from optimum_binarymos.kernels.triton.ternary import ternary_matmul_triton

    latent, packed = trained_like_pair(code_packing)
    x = nan_padded(torch.randn(rows, 300).to(dtype))
    scale = nan_padded(packed.weight_scale.detach().to(dtype), 2, 3)
    shift = nan_padded(packed.weight_shift.detach().to(dtype), 2, 3)
    assert x.stride(0) > x.shape[1]  # a view with padding after each row
    got = ternary_matmul_triton(x, packed.weight, scale, shift, 64, code_packing)
    expected = ternary_matmul_torch(
        x.float(), packed.weight, scale.float(), shift.float(), 300, 64, code_packing
    )
    assert got.dtype == dtype and torch.isfinite(got).all()
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=tolerance)

    # The layer takes the same kernel when asked to, for any batch shape.
    monkeypatch.setenv("BINARYMOS_BACKEND", "triton")
    x3 = torch.randn(2, 3, 300)
    with torch.no_grad():
        torch.testing.assert_close(packed(x3), latent(x3), rtol=1e-4, atol=1e-4)


def test_backend_variable_is_validated_at_call_time(monkeypatch):
    _, packed = trained_like_pair("2bit", group_size=16, in_features=40, out_features=4)
    x = torch.randn(2, 40)
    monkeypatch.setenv("BINARYMOS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="BINARYMOS_BACKEND must be one of"):
        packed(x)
    monkeypatch.setenv("BINARYMOS_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="multiple of 16"):
        ternary_matmul(x, packed.weight, packed.weight_scale, packed.weight_shift, 40, 8, "2bit")


# --------------------------------------------------------------------------------------- models, checkpoints


def dlt_reference(model: torch.nn.Module, names: list[str], group_size: int) -> torch.nn.Module:
    """``model`` with each named weight replaced by ``alpha * T + gamma`` of the TWN-initialized DLT, written out
    group by group from the formulas (gamma = group mean, delta = 0.7 mean|W - gamma|, alpha = mean above delta)."""
    with torch.no_grad():
        for name in names:
            module = model.get_submodule(name)
            weight = module.weight.t() if isinstance(module, Conv1D) else module.weight
            replaced = torch.empty_like(weight)
            for start in range(0, weight.shape[1], group_size):
                group = weight[:, start : start + group_size]
                gamma = group.mean(dim=1, keepdim=True)
                distance = (group - gamma).abs()
                above = distance > 0.7 * distance.mean(dim=1, keepdim=True)
                alpha = (distance * above).sum(dim=1, keepdim=True) / above.sum(dim=1, keepdim=True)
                trits = ((group - gamma) / alpha).round().clamp(-1, 1)
                replaced[:, start : start + group_size] = alpha * trits + gamma
            module.weight.copy_(replaced.t() if isinstance(module, Conv1D) else replaced)
    return model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_conversion_follows_the_formulas_and_packed_reload_matches(arch, float_checkpoint, tokens, tmp_path):
    folder = float_checkpoint(arch)
    # Both code packings across the architectures; group size 32 makes several groups and partial last groups.
    code_packing = "base3" if sorted(ARCHITECTURES).index(arch) % 2 else "2bit"
    config = TernaryConfig(group_size=32, code_packing=code_packing)
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    names = expected_converted(reference, arch)
    dlt_reference(reference, names, 32)

    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config).eval()
    assert sorted(n for n, m in model.named_modules() if isinstance(m, TernaryLinear)) == sorted(names)
    assert model.hf_quantizer.is_trainable and model.hf_quantizer.is_qat_trainable
    with torch.no_grad():
        logits = model(tokens).logits
        torch.testing.assert_close(logits, reference(tokens).logits, rtol=1e-4, atol=1e-4)

    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as checkpoint:
        assert checkpoint.metadata()["ternary_format_version"] == "1"
        for name in names:
            layer = model.get_submodule(name)
            packed = checkpoint.get_tensor(f"{name}.weight")
            assert packed.dtype == torch.uint8
            assert packed.shape == (
                layer.out_features,
                ternary_packed_columns(layer.in_features, code_packing),
            )
            assert checkpoint.get_tensor(f"{name}.weight_scale").shape == (
                layer.out_features,
                layer.num_groups,
            )

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    packed_names = [n for n, m in reloaded.named_modules() if isinstance(m, PackedTernaryLinear)]
    assert sorted(packed_names) == sorted(names)
    assert reloaded.config.quantization_config.code_packing == code_packing
    assert not reloaded.hf_quantizer.is_qat_trainable
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, logits, rtol=1e-5, atol=1e-5)
    assert reloaded.generate(tokens[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group_size": 0}, "group_size must be a positive multiple of 16"),
        ({"group_size": 100}, "group_size must be a positive multiple of 16"),
        ({"group_size": True}, "group_size must be a positive multiple of 16"),
        ({"code_packing": "1.58bit"}, r"code_packing must be one of \['2bit', 'base3'\]"),
        ({"init_threshold": -0.1}, "init_threshold must be a finite number >= 0"),
        ({"init_threshold": float("nan")}, "init_threshold must be a finite number >= 0"),
        ({"shift_init": "median"}, "shift_init must be one of"),
        ({"modules_to_not_convert": [""]}, "modules_to_not_convert must be a list"),
        ({"format_version": TERNARY_FORMAT_VERSION + 1}, f"reads up to version {TERNARY_FORMAT_VERSION}. Upgrade it"),
        ({"checkpoint_form": "fp16"}, "checkpoint_form must be one of"),
        ({"groupsize": 64}, "unknown arguments: groupsize"),
    ],
)
def test_invalid_config_values_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TernaryConfig(**kwargs)


def test_config_round_trips_through_json_and_has_its_own_method_name():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING

    assert AUTO_QUANTIZATION_CONFIG_MAPPING["binarymos_ternary"] is TernaryConfig
    config = TernaryConfig(group_size=64, code_packing="base3", modules_to_not_convert=["mlp.down_proj"])
    again = TernaryConfig.from_dict(json.loads(config.to_json_string()))
    assert again.to_dict() == config.to_dict() and again.quant_method == "binarymos_ternary"


@pytest.fixture
def ternary_checkpoint(float_checkpoint, tmp_path):
    config = TernaryConfig(group_size=32)
    AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=config
    ).save_pretrained(tmp_path)
    return tmp_path


def rewrite_checkpoint(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_bad_checkpoints_are_refused_naming_the_tensor(ternary_checkpoint):
    config_path = ternary_checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"]["code_packing"] = "base3"  # the file holds 2-bit codes
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"q_proj\.weight has shape \[64, 16\], expected \[64, 13\]"):
        AutoModelForCausalLM.from_pretrained(ternary_checkpoint)
    config["quantization_config"]["code_packing"] = "2bit"
    config_path.write_text(json.dumps(config))

    rewrite_checkpoint(ternary_checkpoint, lambda t: t.pop("model.layers.1.mlp.down_proj.weight_shift"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj\.weight_shift is missing"):
        AutoModelForCausalLM.from_pretrained(ternary_checkpoint)


def test_float_weights_under_a_ternary_config_and_newer_versions_are_refused(float_checkpoint, tmp_path):
    import shutil

    shutil.copytree(float_checkpoint("llama"), tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = TernaryConfig().to_dict()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight is a float weight"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    config["quantization_config"]["format_version"] = TERNARY_FORMAT_VERSION + 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"ternary packed format version {TERNARY_FORMAT_VERSION + 1}.*pip install -U optimum-binarymos"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_in_memory_convert_pack_save_and_latent_checkpoints(float_checkpoint, tokens, tmp_path):
    config = TernaryConfig(group_size=32, code_packing="base3")
    model = convert_model(make_float_model("opt"), config)
    assert len(modules_to_convert(model)) == 12
    on_load = AutoModelForCausalLM.from_pretrained(float_checkpoint("opt"), quantization_config=config)
    with torch.no_grad():
        latent_logits = model(tokens).logits
        torch.testing.assert_close(latent_logits, on_load(tokens).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="already a ternary model"):
        convert_model(model, config)

    with latent_saving(model):  # a training checkpoint reloads latent and trainable
        model.save_pretrained(tmp_path / "latent")
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "latent")
    assert isinstance(resumed.model.decoder.layers[0].fc1, TernaryLinear)
    assert resumed.hf_quantizer.is_qat_trainable

    pack_model(model)
    assert sum(isinstance(m, PackedTernaryLinear) for m in model.modules()) == 12
    assert model.model.decoder.layers[0].fc1.code_packing == "base3"
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, latent_logits, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "packed")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, latent_logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no latent weights"):
        with latent_saving(model):
            pass


def test_bfloat16_conversion_keeps_scales_in_model_dtype(float_checkpoint, tokens, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("qwen3"), quantization_config=TernaryConfig(group_size=32), dtype=torch.bfloat16
    )
    layer = model.model.layers[0].mlp.down_proj
    assert layer.weight.dtype == layer.weight_scale.dtype == layer.weight_shift.dtype == torch.bfloat16
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["model.layers.0.mlp.down_proj.weight_scale"].dtype == torch.bfloat16
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        expected, got = model(tokens).logits.float(), reloaded(tokens).logits.float()
    assert reloaded.model.layers[0].mlp.down_proj.weight_scale.dtype == torch.bfloat16
    # The latent and packed paths sum in different orders in bfloat16 and the logits are rounded to it: observed
    # up to 1 unit in the last place of the largest logit (0.0039 of 0.57), allowed 4.
    ulp = 2.0**-8 * expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=4 * ulp)


def test_plain_trainer_trains_the_latent_model(float_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=TernaryConfig(group_size=32)
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "layers.0.mlp.up_proj" in n}
    torch.manual_seed(0)
    dataset = [{"input_ids": ids, "labels": ids} for ids in torch.randint(1, 96, (8, 12))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
    )  # fmt: skip
    transformers.Trainer(model=model, args=args, train_dataset=dataset).train()
    for name, value in before.items():
        assert not torch.equal(value, model.get_parameter(name)), name  # weight, scale and shift all moved


@pytest.mark.parametrize("in_features", [301, 256, 40])
@pytest.mark.parametrize("tokens", [1, 3, 33])
def test_native_ternary_kernel_matches_the_formula(in_features, tokens, monkeypatch):
    """Few float32 tokens with 2-bit codes take the native kernel; the reference is written here in float64 from
    the unpacked trits, ``W = alpha * T + gamma`` per group. 301 columns: a partial last group (45 of 64 columns,
    its last byte holding one code), read without going past the row's 76 bytes."""
    from optimum_binarymos.kernels import ternary as ternary_kernels
    from optimum_binarymos.kernels.native import NativeKernels, native_kernels
    from optimum_binarymos.packing import pack_ternary, unpack_ternary

    if native_kernels() is None:
        pytest.skip("the native CPU kernels did not build on this machine")
    generator = torch.Generator().manual_seed(in_features + tokens)
    out_features, group_size = 37, 64 if in_features > 64 else 16
    groups = -(-in_features // group_size)
    trits = torch.randint(-1, 2, (out_features, in_features), generator=generator)
    codes = pack_ternary(trits, "2bit")
    scale = 0.01 + 0.05 * torch.rand(out_features, groups, generator=generator)
    shift = 0.01 * torch.randn(out_features, groups, generator=generator)
    x = nan_padded(torch.randn(tokens, in_features, generator=generator))
    dense = unpack_ternary(codes, in_features, "2bit", dtype=torch.float64)
    column_groups = torch.arange(in_features) // group_size
    weight = dense * scale.double()[:, column_groups] + shift.double()[:, column_groups]
    expected = x.double() @ weight.T
    calls = []
    original = NativeKernels.ternary
    monkeypatch.setattr(NativeKernels, "ternary", lambda self, *a: calls.append(1) or original(self, *a))
    got = ternary_matmul(x, codes, scale, shift, in_features, group_size, "2bit", backend="torch")
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert calls == ([1] if tokens <= ternary_kernels.NATIVE_MAX_TOKENS else [])
