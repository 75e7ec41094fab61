"""Sharing ternary models: model cards on save and push, pushing to and loading from a Hub served on 127.0.0.1,
size predictions against the saved files, and the ``footprint`` / ``card`` commands.

As in ``tests/test_hub.py``, every step that talks to the test Hub runs in a fresh Python process whose environment
points huggingface_hub at it before anything is imported.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
import transformers
from conftest import make_float_model
from hub_server import FakeHub
from test_hub import (
    finish,
    front_matter,
    hub_env,
    last_json,
    python_blocks,
    save_tiny_llama_with_tokenizer,
    start_python,
)
from transformers import AutoModelForCausalLM

from optimum_binarymos import TernaryConfig, convert_model, latent_saving, save_pretrained
from optimum_binarymos.cli import main
from optimum_binarymos.footprint import estimate_footprint, model_footprint
from optimum_binarymos.hub import (
    CARD_MARKER,
    TERNARY_CARD_TAGS,
    card_record,
    record_base_model,
    record_evaluation,
    render_model_card,
)
from optimum_binarymos.nn.ternary import PackedTernaryLinear

FLOAT_REPO = "org/tiny-float"
REPO = "user/tiny-ternary"


def tensor_bytes(path: Path) -> int:
    """Bytes of tensor data in a safetensors file (the file without its JSON header)."""
    with open(path, "rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_size))
    header.pop("__metadata__", None)
    return sum(end - start for start, end in (entry["data_offsets"] for entry in header.values()))


# ---------------------------------------------------------------------------------------------------------------
# The card, in this process.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def ternary_model(float_checkpoint):
    return AutoModelForCausalLM.from_pretrained(
        float_checkpoint("llama"), quantization_config=TernaryConfig(group_size=32, code_packing="base3")
    )


def test_save_pretrained_writes_a_ternary_card_that_survives_reloading(ternary_model, tmp_path):
    record_base_model(ternary_model, FLOAT_REPO, license="apache-2.0")
    record_evaluation(ternary_model, {"wikitext2_ppl": 30.125})
    save_pretrained(ternary_model, tmp_path)
    card = (tmp_path / "README.md").read_text()

    metadata = front_matter(card)
    assert set(TERNARY_CARD_TAGS) <= set(metadata["tags"]) and "1-bit" not in metadata["tags"]
    assert {"ternary", "1.58-bit", "quantized"} <= set(metadata["tags"])
    assert metadata["base_model"] == FLOAT_REPO and metadata["license"] == "apache-2.0"
    assert CARD_MARKER in card and card.startswith("---\n")
    assert "ternarized to 1.58 bits per weight" in card and "TernaryLLM" in card
    assert "`binarymos_ternary` quantization method" in card and "its ternary layers" in card
    assert "| group size (`group_size`) | 32 input columns per scale and shift |" in card
    assert "| code packing (`code_packing`) | `base3`: base-3 codes (5 trits per byte" in card
    assert "14 linear layers in 2 decoder blocks" in card
    assert "| bits per ternarized weight |" in card and "BinaryMoS" not in card.split("## Size")[1]
    assert "| wikitext2_ppl | 30.12 |" in card
    (snippet,) = python_blocks(card)
    assert '"binarymos_ternary" quantization method' in snippet and f'model_id = "{tmp_path}"' in snippet
    compile(snippet, "snippet", "exec")
    footprint = model_footprint(ternary_model)
    assert "| whole model | " in card and f"{footprint.ratio:.2f}x" in card
    assert "Its float tensors are saved in `float32`" in card  # the tiny model is float32

    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(again.model.layers[0].mlp.down_proj, PackedTernaryLinear)
    assert card_record(again)["evaluation"] == {"wikitext2_ppl": 30.125}
    folder = tmp_path / "again"
    save_pretrained(again, folder)  # a reloaded packed model writes the same card
    assert (folder / "README.md").read_text() == card.replace(str(tmp_path), str(folder)).replace(
        f"# {tmp_path.name}\n", "# again\n"
    )
    (folder / "README.md").write_text("# Mine\n")
    save_pretrained(again, folder)
    assert (folder / "README.md").read_text() == "# Mine\n"  # a hand-written card is kept


def test_convert_model_and_latent_checkpoints_get_ternary_cards(tmp_path):
    model = convert_model(make_float_model("llama"), TernaryConfig(group_size=64))
    with latent_saving(model):
        save_pretrained(model, tmp_path / "latent")
    latent_card = (tmp_path / "latent" / "README.md").read_text()
    assert "This is a training checkpoint" in latent_card and "packed ternary checkpoint" in latent_card
    save_pretrained(model, tmp_path / "packed")
    card = (tmp_path / "packed" / "README.md").read_text()
    assert "training checkpoint" not in card and "`2bit`: 2-bit codes (4 trits per byte" in card
    assert "\n# packed\n" in card  # titled by its folder, or generically without one
    assert "\n# Ternary model\n" in render_model_card(model)


# ---------------------------------------------------------------------------------------------------------------
# Sizes: predictions against the saved files.
# ---------------------------------------------------------------------------------------------------------------


def llama(**overrides) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(**{"tie_word_embeddings": False, **overrides})


@pytest.mark.parametrize("code_packing", ["2bit", "base3"])
def test_estimate_matches_the_saved_ternary_files(tmp_path, code_packing):
    # hidden 256 and intermediate 688 are not multiples of 5 and 688 is not of the group size: padded rows and a
    # partial last group are counted as stored.
    config = llama(
        hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4, vocab_size=512
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.float16).save_pretrained(tmp_path / "fp16")
    quantization = TernaryConfig(group_size=128, code_packing=code_packing)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "fp16", quantization_config=quantization, dtype=torch.float16
    )
    model.save_pretrained(tmp_path / "packed")
    estimate = estimate_footprint(config, TernaryConfig(group_size=128, code_packing=code_packing))
    packed_file = tmp_path / "packed" / "model.safetensors"
    fp16_file = tmp_path / "fp16" / "model.safetensors"
    assert estimate.packed_bytes == tensor_bytes(packed_file)  # exactly the tensors written
    assert estimate.float16_bytes == tensor_bytes(fp16_file)
    assert estimate.packed_bytes == pytest.approx(packed_file.stat().st_size, rel=0.03)
    assert estimate.float16_bytes == pytest.approx(fp16_file.stat().st_size, rel=0.03)
    assert model_footprint(model) == estimate  # measured on the model itself: the same accounting

    packed_config = transformers.AutoConfig.from_pretrained(tmp_path / "packed")
    assert estimate_footprint(packed_config) == estimate  # the checkpoint's config brings its own method
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    assert model_footprint(reloaded) == estimate


def test_tiny_float32_checkpoint_is_predicted_to_the_byte(tmp_path):
    model = convert_model(make_float_model("llama"), TernaryConfig(group_size=32, code_packing="base3"))
    model.save_pretrained(tmp_path)
    assert model_footprint(model, float_bytes=4).packed_bytes == tensor_bytes(tmp_path / "model.safetensors")
    # The code packing saved is the config's, even when the layers in memory hold the other one.
    model.hf_quantizer.quantization_config.code_packing = "2bit"
    model.save_pretrained(tmp_path / "2bit")
    assert model_footprint(model, float_bytes=4).packed_bytes == tensor_bytes(
        tmp_path / "2bit" / "model.safetensors"
    )


def test_linear_heavy_llama_is_predicted_about_six_and_seven_times_smaller():
    config = llama(
        vocab_size=320, hidden_size=1024, intermediate_size=2816, num_hidden_layers=2, num_attention_heads=16
    )
    two_bit = estimate_footprint(config, TernaryConfig(group_size=128, code_packing="2bit"))
    base3 = estimate_footprint(config, TernaryConfig(group_size=128, code_packing="base3"))
    assert two_bit.ratio == pytest.approx(6.16, abs=0.05)  # docs/FORMAT_TERNARY.md: 6.16x measured on files
    assert base3.ratio == pytest.approx(7.25, abs=0.05)  # and 7.25x
    assert two_bit.num_experts is None and (two_bit.group_size, two_bit.code_packing) == (128, "2bit")
    # Per weight of the converted layers: the codes, plus a float16 scale and shift per 128 weights.
    assert two_bit.bits_per_binarized_weight == pytest.approx(2 + 2 * 16 / 128)
    # Base-3 rows round up to whole bytes: 1024 and 2816 columns are not multiples of 5.
    assert 8 / 5 + 2 * 16 / 128 < base3.bits_per_binarized_weight < 8 / 5 + 2 * 16 / 128 + 0.005
    assert "ternary (base3 codes, group 128)" in str(base3) and "7.25x smaller" in str(base3)
    assert "| | float16 | ternary (packed) | ratio |" in base3.to_markdown()
    assert "| ternarized linear layers |" in base3.to_markdown()


def test_a_quantization_config_of_the_other_method_is_refused(ternary_model):
    from optimum_binarymos import BinaryMoSConfig

    with pytest.raises(ValueError, match="holds ternary layers"):
        model_footprint(ternary_model, BinaryMoSConfig())


# ---------------------------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------------------------


def test_cli_footprint_and_card_for_ternary(float_checkpoint, ternary_model, tmp_path, capsys):
    ternary_model.save_pretrained(tmp_path / "packed")
    float_folder = float_checkpoint("llama")

    assert main(["footprint", float_folder, "--method", "ternary", "--code-packing", "base3"]) == 0
    assert "ternary (base3 codes, group 128)" in capsys.readouterr().out
    assert main(["footprint", float_folder, "--group-size", "32"]) == 0  # a ternary flag picks the method
    assert "ternary (2bit codes, group 32)" in capsys.readouterr().out
    assert main(["footprint", str(tmp_path / "packed")]) == 0  # reads quant_method from config.json
    assert "ternary (base3 codes, group 32)" in capsys.readouterr().out
    assert main(["footprint", str(tmp_path / "packed"), "--code-packing", "2bit"]) == 0
    assert "ternary (2bit codes, group 32)" in capsys.readouterr().out  # the checkpoint's group size is kept
    assert main(["footprint", str(tmp_path / "packed"), "--method", "binarymos"]) == 0
    assert "BinaryMoS (E=4)" in capsys.readouterr().out

    assert main(["footprint", float_folder, "--method", "binarymos", "--group-size", "64"]) == 2
    assert "--method binarymos takes no --group-size" in capsys.readouterr().err
    assert main(["footprint", float_folder, "--method", "ternary", "--num-experts", "2"]) == 2
    assert "--method ternary takes no --num-experts" in capsys.readouterr().err
    assert main(["footprint", float_folder, "--code-packing", "3bit"]) == 2
    assert "code_packing must be one of" in capsys.readouterr().err

    card_path = tmp_path / "card.md"
    assert (
        main(["card", str(tmp_path / "packed"), "--model-id", "me/tiny-ternary", "--output", str(card_path)])
        == 0
    )
    card = card_path.read_text()
    assert 'model_id = "me/tiny-ternary"' in card and "1.58-bit" in front_matter(card)["tags"]


# ---------------------------------------------------------------------------------------------------------------
# Against the test Hub, in a fresh Python process.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub():
    server = FakeHub()
    server.start()
    yield server
    server.stop()


PUSH_AND_RELOAD = """
    import json, sys
    import torch
    import optimum_binarymos
    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from optimum_binarymos import TernaryConfig, push_to_hub, save_pretrained
    from optimum_binarymos.cli import main
    from optimum_binarymos.hub import record_evaluation

    float_dir, out_dir, float_repo, repo = sys.argv[1:5]
    tokens = torch.randint(1, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    def logits(model):
        with torch.no_grad():
            return model(tokens).logits

    AutoModelForCausalLM.from_pretrained(float_dir).push_to_hub(float_repo)
    tokenizer = AutoTokenizer.from_pretrained(float_dir)
    HfApi().upload_file(path_or_fileobj=f"{float_dir}/README.md", path_in_repo="README.md", repo_id=float_repo)

    # Converted from its Hub id, evaluated, pushed with its tokenizer; then reloaded by id.
    config = TernaryConfig(group_size=32, code_packing="base3")
    model = AutoModelForCausalLM.from_pretrained(float_repo, quantization_config=config)
    record_evaluation(model, {"wikitext2_ppl": 55.5})
    pushed = push_to_hub(model, repo)
    tokenizer.push_to_hub(repo)
    reloaded = AutoModelForCausalLM.from_pretrained(repo)

    # save_pretrained(push_to_hub=True), and the push command from a saved folder.
    save_pretrained(model, f"{out_dir}/via-save", push_to_hub=True, repo_id="user/ternary-via-save")
    tokenizer.save_pretrained(f"{out_dir}/via-save")
    status = main(["push", f"{out_dir}/via-save", "user/ternary-cli"])
    from_cli = AutoModelForCausalLM.from_pretrained("user/ternary-cli")

    close = lambda a, b: bool(torch.allclose(a, b, atol=1e-5, rtol=1e-5))
    print(json.dumps({
        "commit": pushed.oid,
        "layer": type(reloaded.model.layers[0].mlp.down_proj).__name__,
        "code_packing": reloaded.model.layers[0].mlp.down_proj.code_packing,
        "reloaded_equal": close(logits(reloaded), logits(model)),
        "cli_status": status,
        "cli_equal": close(logits(from_cli), logits(model)),
    }))
"""


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    work = tmp_path_factory.mktemp("ternary-push")
    save_tiny_llama_with_tokenizer(work / "float")
    args = (str(work / "float"), str(work), FLOAT_REPO, REPO)
    return last_json(finish(start_python(PUSH_AND_RELOAD, hub_env(hub, work / "hf-home"), *args)))


def test_push_uploads_the_packed_ternary_model_and_its_card(hub, pushed):
    files = hub.repos[REPO].commits[pushed["commit"]]
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    config = json.loads(files["config.json"])
    assert config["quantization_config"]["quant_method"] == "binarymos_ternary"
    assert config["quantization_config"]["code_packing"] == "base3"
    assert hub.repos[REPO].messages[pushed["commit"]] == "Upload ternary model"
    card = files["README.md"].decode()
    metadata = front_matter(card)
    assert {"ternary", "1.58-bit", "quantized"} <= set(metadata["tags"]) and "1-bit" not in metadata["tags"]
    assert metadata["base_model"] == FLOAT_REPO and metadata["license"] == "apache-2.0"
    assert f'model_id = "{REPO}"' in card and "| wikitext2_ppl | 55.5 |" in card
    assert not hub.unknown_requests


def test_loading_the_pushed_ternary_model_by_id_gives_the_same_logits(pushed):
    assert pushed["layer"] == "PackedTernaryLinear" and pushed["code_packing"] == "base3"
    assert pushed["reloaded_equal"]


def test_save_with_push_and_the_push_command_upload_ternary_cards(hub, pushed):
    via_save = hub.files("user/ternary-via-save")["README.md"].decode()
    assert 'model_id = "user/ternary-via-save"' in via_save and "TernaryLLM" in via_save
    from_cli = hub.files("user/ternary-cli")
    assert "tokenizer.json" in from_cli and "1.58-bit" in front_matter(from_cli["README.md"].decode())["tags"]
    assert pushed["cli_status"] == 0 and pushed["cli_equal"]
