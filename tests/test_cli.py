"""The command line, in-process (``main([...])``) and as ``python -m`` / ``optimum-cli`` processes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from test_readme import save_tiny_model_with_tokenizer
from transformers import AutoModelForCausalLM

from optimum_binarymos import BinaryMoSLinear, PackedBinaryMoSLinear, PackedTernaryLinear
from optimum_binarymos.cli import main


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_model_with_tokenizer(folder)
    return folder


def test_quantize_writes_packed_or_latent_models(tiny_folder, tmp_path, capsys):
    assert main(["quantize", str(tiny_folder), str(tmp_path / "packed"), "--num-experts", "2"]) == 0
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    assert any(isinstance(m, PackedBinaryMoSLinear) for m in packed.modules())
    assert (tmp_path / "packed" / "tokenizer.json").is_file()
    assert (tmp_path / "packed" / "README.md").is_file()

    assert main(["quantize", str(tiny_folder), str(tmp_path / "latent"), "--form", "latent"]) == 0
    latent = AutoModelForCausalLM.from_pretrained(tmp_path / "latent")
    assert any(isinstance(m, BinaryMoSLinear) for m in latent.modules())
    assert "saved latent BinaryMoS model" in capsys.readouterr().out

    # A quantized input is refused instead of being saved with its own expert count under a message
    # that repeats the flag.
    assert main(["quantize", str(tmp_path / "packed"), str(tmp_path / "again"), "--num-experts", "1"]) == 2
    assert "already quantized (quant_method 'binarymos')" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(
    ("bits", "card_line"), [(8, "8-bit (int8 codes, one scale per row)"), (4, "4-bit (codes with one scale per 32")]
)
def test_quantize_with_quantized_embeddings(tiny_folder, tmp_path, capsys, bits, card_line):
    from optimum_binarymos.methods.embeddings import ROW_LAYERS

    arguments = ["--embedding-bits", str(bits), "--dtype", "float32"]
    assert main(["quantize", str(tiny_folder), str(tmp_path / "packed"), *arguments]) == 0
    assert f"saved packed BinaryMoS model (4 experts), {bits}-bit embeddings" in capsys.readouterr().out
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    assert isinstance(packed.get_input_embeddings(), ROW_LAYERS[bits][0])
    assert card_line in (tmp_path / "packed" / "README.md").read_text()


def test_footprint_with_8_bit_embeddings(tiny_folder, capsys):
    assert main(["footprint", str(tiny_folder)]) == 0
    float_line = capsys.readouterr().out
    assert main(["footprint", str(tiny_folder), "--embedding-bits", "8"]) == 0
    int8_line = capsys.readouterr().out
    assert "BinaryMoS (E=4), 8-bit embeddings" in int8_line and "8-bit" not in float_line
    assert main(["footprint", str(tiny_folder), "--embedding-bits", "4"]) == 0
    assert "BinaryMoS (E=4), 4-bit embeddings" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse refuses the value, naming the choices
        main(["footprint", str(tiny_folder), "--embedding-bits", "2"])


def test_quantize_ternary(tiny_folder, tmp_path, capsys):
    from optimum_binarymos.nn import PackedTernaryLinear

    arguments = ["--method", "ternary", "--group-size", "32", "--code-packing", "base3"]
    assert main(["quantize", str(tiny_folder), str(tmp_path / "ternary"), *arguments]) == 0
    assert "saved packed ternary model (groups of 32, base3 codes)" in capsys.readouterr().out
    ternary = AutoModelForCausalLM.from_pretrained(tmp_path / "ternary")
    layers = [m for m in ternary.modules() if isinstance(m, PackedTernaryLinear)]
    assert layers and ternary.config.quantization_config.code_packing == "base3"
    assert "ternary" in (tmp_path / "ternary" / "README.md").read_text()


def test_footprint_card_and_evaluate(tiny_folder, tmp_path, capsys):
    assert main(["quantize", str(tiny_folder), str(tmp_path / "packed")]) == 0
    assert main(["footprint", str(tiny_folder), "--num-experts", "1"]) == 0
    assert "x smaller" in capsys.readouterr().out

    assert (
        main(["card", str(tmp_path / "packed"), "--model-id", "me/tiny", "--output", str(tmp_path / "c.md")])
        == 0
    )
    card = (tmp_path / "c.md").read_text()
    assert "binarymos" in card and "me/tiny" in card

    text = tmp_path / "eval.txt"
    text.write_text(" ".join(["the capital of france is paris"] * 60))
    results = tmp_path / "results.json"
    args = [
        "evaluate",
        str(tmp_path / "packed"),
        "--text",
        str(text),
        "--seq-len",
        "16",
        "--output",
        str(results),
    ]
    assert main(args) == 0
    assert json.loads(results.read_text())["perplexity"] > 1
    assert "perplexity" in capsys.readouterr().out


def test_bad_input_exits_non_zero_with_a_clear_message(tiny_folder, tmp_path, capsys):
    assert main(["quantize", str(tiny_folder), str(tmp_path / "x"), "--num-experts", "0"]) == 2
    assert "num_experts must be an integer >= 1" in capsys.readouterr().err
    assert main(["footprint", str(tmp_path / "does-not-exist")]) == 2
    assert "cannot read a model config" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_folder)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


def test_python_dash_m_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "optimum_binarymos", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("quantize", "distill", "evaluate", "footprint", "card", "push"):
        assert command in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("optimum") is None, reason="optimum is not installed")
def test_optimum_cli_has_the_binarymos_namespace():
    code = "from optimum.commands.optimum_cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "binarymos", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for command in ("quantize", "distill", "evaluate", "footprint", "card", "push"):
        assert command in result.stdout


def test_distill_command_runs_the_distillation_and_saves_packed(tiny_folder, tmp_path, capsys):
    train = tmp_path / "train.txt"
    train.write_text(" ".join(["the capital of france is paris and"] * 40))
    arguments = [
        "distill", str(tiny_folder), "--train-files", str(train), "--block-size", "16",
        "--dtype", "float32", "--output_dir", str(tmp_path / "run"), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--save_strategy", "no", "--disable_tqdm", "true",
        "--report_to", "none", "--dataloader_pin_memory", "false",
    ]  # fmt: skip
    assert main(arguments) == 0
    assert "saved packed to" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert any(isinstance(m, PackedBinaryMoSLinear) for m in model.modules())


def distill_arguments(folder, train, output, *extra: str) -> list[str]:
    return [
        "distill", str(folder), "--train-files", str(train), "--block-size", "16",
        "--dtype", "float32", "--output_dir", str(output), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--save_strategy", "no", "--disable_tqdm", "true",
        "--report_to", "none", "--dataloader_pin_memory", "false", *extra,
    ]  # fmt: skip


def test_distill_command_calibrates_binarymos_students_and_repeats_with_a_seed(tiny_folder, tmp_path):
    train = tmp_path / "train.txt"
    train.write_text(" ".join(["the capital of france is paris and"] * 60))
    runs = []
    for run in ("a", "b"):
        assert main(distill_arguments(tiny_folder, train, tmp_path / run, "--seed", "3")) == 0
        runs.append(AutoModelForCausalLM.from_pretrained(tmp_path / run / "final").state_dict())
    for name, tensor in runs[0].items():
        torch.testing.assert_close(runs[1][name], tensor, rtol=0, atol=0, msg=name)
    scale_out = runs[0]["model.layers.0.mlp.up_proj.scale_out"]
    # Calibrated experts start apart (SVID's are equal, and two steps barely move them).
    assert (scale_out.std(dim=0) / scale_out.mean(dim=0)).median() > 1e-3


def test_distill_command_distills_ternary_students(tiny_folder, tmp_path, capsys):
    train = tmp_path / "train.txt"
    train.write_text(" ".join(["the capital of france is paris and"] * 40))
    assert main(distill_arguments(tiny_folder, train, tmp_path / "run", "--method", "ternary", "--group_size", "16")) == 0
    assert "saved packed to" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert any(isinstance(m, PackedTernaryLinear) for m in model.modules())
