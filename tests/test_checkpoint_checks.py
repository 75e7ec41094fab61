"""What loading checks before any tensor data is read: checkpoint form, file format versions, stored dtypes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import optimum_binarymos.ternary_quantizer  # noqa: F401  registers "binarymos_ternary" with transformers
from optimum_binarymos import BinaryMoSConfig, TernaryConfig, latent_saving, save_pretrained
from optimum_binarymos.methods.binarymos import SvidInitialize
from optimum_binarymos.methods.ternary import TernaryInitialize
from optimum_binarymos.packing import FORMAT_VERSION, TERNARY_FORMAT_VERSION

pytestmark = pytest.mark.reliability

BINARY_KEY = "binarymos_format_version"
TERNARY_KEY = "ternary_format_version"
#: One past what this installation reads.
NEWER = FORMAT_VERSION + 1


@pytest.fixture
def binary_checkpoint(float_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig()
    )
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture
def ternary_checkpoint(float_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=TernaryConfig(group_size=32)
    )
    model.save_pretrained(tmp_path)
    return tmp_path


def rewrite(path, edit_tensors=None, edit_metadata=None):
    """Rewrite one safetensors file in place, as a hand edit or another tool would."""
    with safe_open(path, framework="pt") as checkpoint:
        metadata = dict(checkpoint.metadata() or {})
    tensors = load_file(path)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_metadata:
        edit_metadata(metadata)
    save_file(tensors, path, metadata=metadata)


def set_metadata(key, value):
    def edit(metadata):
        metadata[key] = value

    return edit


def edit_config(folder, **fields):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"].update(fields)
    path.write_text(json.dumps(config))


# --- checkpoint_form ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_class", [BinaryMoSConfig, TernaryConfig])
@pytest.mark.parametrize("form", ["bogus", "Packed", None, 1])
def test_unknown_checkpoint_form_is_refused_naming_the_allowed_ones(config_class, form):
    with pytest.raises(ValueError, match=r"checkpoint_form must be one of \['packed', 'latent'\]; got"):
        config_class(checkpoint_form=form)


@pytest.mark.parametrize("form", ["packed", "latent"])
def test_known_checkpoint_forms_are_accepted(form):
    assert BinaryMoSConfig(checkpoint_form=form).checkpoint_form == form
    assert TernaryConfig(checkpoint_form=form).checkpoint_form == form


def test_hand_edited_checkpoint_form_fails_on_the_config_not_on_tensor_sizes(binary_checkpoint):
    edit_config(binary_checkpoint, checkpoint_form="bogus")
    with pytest.raises(
        ValueError, match=r"checkpoint_form must be one of \['packed', 'latent'\]; got 'bogus'"
    ):
        AutoModelForCausalLM.from_pretrained(binary_checkpoint)


# --- format version in the safetensors metadata ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "key", "layout", "readable"),
    [
        ("binary_checkpoint", BINARY_KEY, "BinaryMoS", FORMAT_VERSION),
        ("ternary_checkpoint", TERNARY_KEY, "ternary", TERNARY_FORMAT_VERSION),
    ],
)
def test_newer_file_format_version_is_refused_even_under_an_older_config(checkpoint, key, layout, readable, request):
    folder = request.getfixturevalue(checkpoint)
    with safe_open(folder / "model.safetensors", framework="pt") as opened:
        assert opened.metadata()[key] == "1"
    newer = readable + 1
    rewrite(folder / "model.safetensors", edit_metadata=set_metadata(key, str(newer)))
    # config.json still says format_version 1: the file's own version is what is refused.
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["format_version"] == 1
    with pytest.raises(
        ValueError,
        match=rf"model\.safetensors \(safetensors metadata {key}\) uses {layout} packed format version {newer}, but "
        rf"the installed optimum-binarymos reads up to version {readable}\. Upgrade it: pip install -U optimum-binarymos",
    ):
        AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize(
    ("checkpoint", "key"), [("binary_checkpoint", BINARY_KEY), ("ternary_checkpoint", TERNARY_KEY)]
)
def test_file_without_format_key_loads_like_the_original(checkpoint, key, request, tokens):
    folder = request.getfixturevalue(checkpoint)
    original = AutoModelForCausalLM.from_pretrained(folder).eval()
    rewrite(folder / "model.safetensors", edit_metadata=lambda metadata: metadata.pop(key))
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, original(tokens).logits, rtol=0, atol=0)


@pytest.mark.parametrize("value", ["abc", "0", "-1", ""])
def test_unreadable_file_format_version_is_refused(binary_checkpoint, value):
    rewrite(binary_checkpoint / "model.safetensors", edit_metadata=set_metadata(BINARY_KEY, value))
    with pytest.raises(
        ValueError, match=rf"invalid {BINARY_KEY} metadata value '{value}'; expected a positive"
    ):
        AutoModelForCausalLM.from_pretrained(binary_checkpoint)


def test_every_shard_is_checked(float_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig()
    )
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    rewrite(shards[-1], edit_metadata=set_metadata(BINARY_KEY, str(NEWER)))
    with pytest.raises(
        ValueError, match=rf"{shards[-1].name} \(safetensors metadata {BINARY_KEY}\).*version {NEWER}"
    ):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_latent_checkpoint_with_newer_file_format_version_is_refused(float_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig()
    )
    with latent_saving(model):
        model.save_pretrained(tmp_path)
    AutoModelForCausalLM.from_pretrained(tmp_path)  # as written: loads
    rewrite(tmp_path / "model.safetensors", edit_metadata=set_metadata(BINARY_KEY, str(NEWER)))
    with pytest.raises(ValueError, match=f"format version {NEWER}.*pip install -U optimum-binarymos"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_config_and_file_versions_are_refused_with_the_same_words(binary_checkpoint):
    edit_config(binary_checkpoint, format_version=NEWER)
    with pytest.raises(ValueError) as from_config:
        AutoModelForCausalLM.from_pretrained(binary_checkpoint)
    edit_config(binary_checkpoint, format_version=1)
    rewrite(binary_checkpoint / "model.safetensors", edit_metadata=set_metadata(BINARY_KEY, str(NEWER)))
    with pytest.raises(ValueError) as from_file:
        AutoModelForCausalLM.from_pretrained(binary_checkpoint)
    tail = (
        f" uses BinaryMoS packed format version {NEWER}, but the installed optimum-binarymos reads up to"
        f" version {FORMAT_VERSION}."
    )
    assert tail in str(from_config.value) and tail in str(from_file.value)


# --- stored dtypes -----------------------------------------------------------------------------------------------


def cast(name, dtype):
    def edit(tensors):
        tensors[name] = tensors[name].to(dtype)

    return edit


@pytest.mark.parametrize(
    ("checkpoint", "name"),
    [
        ("binary_checkpoint", "model.layers.1.mlp.up_proj.weight"),
        ("ternary_checkpoint", "model.layers.0.self_attn.v_proj.weight"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16])
def test_packed_codes_of_another_dtype_are_refused_naming_the_tensor(checkpoint, name, dtype, request):
    folder = request.getfixturevalue(checkpoint)
    rewrite(folder / "model.safetensors", edit_tensors=cast(name, dtype))
    found = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"{re.escape(name)} has dtype {found}, expected uint8"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_float_weight_message_names_found_and_expected_dtype(binary_checkpoint):
    name = "model.layers.0.mlp.gate_proj.weight"
    rewrite(binary_checkpoint / "model.safetensors", edit_tensors=cast(name, torch.float16))
    with pytest.raises(
        ValueError,
        match=r"gate_proj\.weight is a float weight \(dtype float16, expected uint8\): the checkpoint is not packed",
    ):
        AutoModelForCausalLM.from_pretrained(binary_checkpoint)


def test_integer_scales_are_refused(ternary_checkpoint):
    name = "model.layers.1.self_attn.o_proj.weight_scale"
    rewrite(ternary_checkpoint / "model.safetensors", edit_tensors=cast(name, torch.int32))
    with pytest.raises(ValueError, match=rf"{re.escape(name)} has dtype int32, expected a float dtype"):
        AutoModelForCausalLM.from_pretrained(ternary_checkpoint)


def test_float_tensors_in_another_float_dtype_load(binary_checkpoint):
    # from_pretrained casts them to the model's dtype: the values are the stored bfloat16 ones, not zeros.
    name = "model.layers.0.self_attn.q_proj.scale_in"
    rewrite(binary_checkpoint / "model.safetensors", edit_tensors=cast(name, torch.bfloat16))
    stored = load_file(binary_checkpoint / "model.safetensors")[name]
    assert stored.dtype == torch.bfloat16 and stored.abs().sum() > 0
    model = AutoModelForCausalLM.from_pretrained(binary_checkpoint)
    loaded = model.get_parameter(name)
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, stored.float(), rtol=0, atol=0)


# --- the shared conversion op ------------------------------------------------------------------------------------


def test_both_conversion_ops_return_the_layer_tensors_in_order(float_checkpoint):
    binary = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("gpt2"), quantization_config=BinaryMoSConfig(num_experts=2)
    )
    ternary = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("gpt2"), quantization_config=TernaryConfig(group_size=32)
    )
    weight = torch.randn(64, 192)  # Conv1D layout (in, out)
    key = "transformer.h.0.attn.c_attn.weight"
    out = SvidInitialize(binary.hf_quantizer).convert({key: [weight]}, model=binary)
    assert [(k, tuple(v.shape)) for k, v in out.items()] == [
        (key, (192, 64)),
        ("transformer.h.0.attn.c_attn.scale_in", (2, 64)),
        ("transformer.h.0.attn.c_attn.scale_out", (2, 192)),
        ("transformer.h.0.attn.c_attn.router_weight", (2, 64)),
    ]
    out = TernaryInitialize(ternary.hf_quantizer).convert({key: weight}, model=ternary)
    assert [(k, tuple(v.shape)) for k, v in out.items()] == [
        (key, (192, 64)),
        ("transformer.h.0.attn.c_attn.weight_scale", (192, 2)),
        ("transformer.h.0.attn.c_attn.weight_shift", (192, 2)),
    ]
    with pytest.raises(
        ValueError, match=r"has shape \(191, 64\) but transformer\.h\.0\.attn\.c_attn expects"
    ):
        TernaryInitialize(ternary.hf_quantizer).convert({key: weight[:, :-1]}, model=ternary)


@pytest.mark.parametrize("first_shard_size, second_shard_size", [(None, "20KB"), ("20KB", None)])
def test_saving_over_an_older_model_leaves_only_the_new_weights(
    float_checkpoint, tmp_path, first_shard_size, second_shard_size
):
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig(num_experts=2)
    )
    save_pretrained(model, tmp_path, **({"max_shard_size": first_shard_size} if first_shard_size else {}))
    layer = model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        layer.scale_out.mul_(3.0)
    save_pretrained(model, tmp_path, **({"max_shard_size": second_shard_size} if second_shard_size else {}))
    weight_files = sorted(path.name for path in tmp_path.glob("model*"))
    if second_shard_size:
        assert "model.safetensors" not in weight_files and "model.safetensors.index.json" in weight_files
    else:
        assert weight_files == ["model.safetensors"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded.model.layers[0].mlp.up_proj.scale_out, layer.scale_out)


def test_a_folder_left_with_two_models_by_plain_saves_is_refused(float_checkpoint, tmp_path):
    """transformers' own save_pretrained keeps an older model.safetensors beside new shards, and loading would
    read the older file: loading refuses and names it."""
    model = AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=BinaryMoSConfig(num_experts=2)
    )
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "model.safetensors.index.json").is_file()
    with pytest.raises(ValueError, match=r"holds two models.*The older is model\.safetensors: delete it"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["model.layers.0.self_attn.q_proj.scale_out", "model.layers.1.mlp.up_proj.scale_in"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_scales_holding_nan_or_inf_are_refused_naming_the_tensor(binary_checkpoint, name, bad):
    def poison(tensors):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[3] = bad

    rewrite(binary_checkpoint / "model.safetensors", edit_tensors=poison)
    with pytest.raises(ValueError, match=rf"{re.escape(name)} hold NaN or Inf"):
        AutoModelForCausalLM.from_pretrained(binary_checkpoint)


@pytest.mark.parametrize("checkpoint", ["binary_checkpoint", "ternary_checkpoint"])
@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "model.norm.weight", "model.layers.1.input_layernorm.weight"])
def test_quantized_checkpoint_missing_a_float_tensor_is_refused_naming_it(checkpoint, name, request):
    folder = request.getfixturevalue(checkpoint)
    rewrite(folder / "model.safetensors", edit_tensors=lambda tensors: tensors.pop(name))
    with pytest.raises(ValueError, match=rf"missing .* tensors: {re.escape(name)}\b"):
        AutoModelForCausalLM.from_pretrained(folder)


KILLED_MID_SAVE = """
import os, signal, sys
import transformers.modeling_utils
from transformers import AutoModelForCausalLM
from optimum_binarymos import BinaryMoSConfig, save_pretrained

def write_some_then_die(tensors, filename, metadata=None):
    with open(filename, "wb") as handle:
        handle.write(b"\\\\0" * 4096)
    os.kill(os.getpid(), signal.SIGKILL)

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], quantization_config=BinaryMoSConfig(num_experts=4))
transformers.modeling_utils.safe_save_file = write_some_then_die
save_pretrained(model, sys.argv[2])
"""


def test_a_save_killed_half_way_leaves_the_older_model_whole(float_checkpoint, tmp_path, tokens):
    folder = tmp_path / "model"
    older = AutoModelForCausalLM.from_pretrained(float_checkpoint("llama"), quantization_config=BinaryMoSConfig())
    save_pretrained(older, folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, float_checkpoint("llama"), str(folder)])
    assert killed.returncode == -signal.SIGKILL
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # config and card too
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(folder)(tokens).logits, older(tokens).logits)
    assert [path.name.startswith(".saving-") for path in tmp_path.iterdir()].count(True) == 1
    save_pretrained(older, tmp_path / "another")  # the next save beside it clears what the killed one left
    assert sorted(path.name for path in tmp_path.iterdir()) == ["another", "model"]
