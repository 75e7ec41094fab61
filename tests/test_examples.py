"""The example scripts run end to end on a tiny model: the demo (its model and text replaced by tiny local ones)
and the LoRA fine-tuning script."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from demo_assets import sotu
from safetensors.torch import load_file
from test_readme import save_tiny_model_with_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_binarymos import BinaryMoSConfig
from optimum_binarymos.cache import CACHE_ENV_VAR

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TEXT = "the capital of france is paris and the capital of italy is rome . " * 400


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_folder(tmp_path):
    save_tiny_model_with_tokenizer(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_demo_runs_end_to_end_and_writes_its_results(tiny_folder, tmp_path, monkeypatch, capsys):
    demo = load_example("demo")
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))

    def build_addresses(destination: Path, cache: Path) -> None:  # two older addresses and one held out
        destination.mkdir(parents=True, exist_ok=True)
        for year in (1980, 1990, 2005):
            (destination / f"{year}_x_d.txt").write_text(TEXT, encoding="utf-8")

    monkeypatch.setattr(sotu, "_build", build_addresses)
    monkeypatch.setattr(demo, "smollm2_path", lambda cache_dir=None: tiny_folder)
    out = tmp_path / "demo_out"
    assert demo.main(["--output-dir", str(out), "--steps", "2", "--eval-windows", "1", "--max-new-tokens", "3"]) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["logits_match"] is True
    assert results["budget"]["steps"] == 2 and results["num_experts"] == 4
    for key in ("float_ppl", "converted_ppl", "distilled_ppl"):
        assert results[key] > 1
    assert results["packed_bytes"] < results["float16_bytes"]
    assert (out / "binarymos" / "README.md").is_file()
    printed = capsys.readouterr().out
    assert "after 2 steps" in printed and "figures written to" in printed


def test_lora_finetune_trains_and_saves_an_adapter_over_a_packed_model(tiny_folder, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_folder, quantization_config=BinaryMoSConfig(num_experts=2))
    model.save_pretrained(tmp_path / "packed")
    AutoTokenizer.from_pretrained(tiny_folder).save_pretrained(tmp_path / "packed")
    (tmp_path / "train.txt").write_text(TEXT, encoding="utf-8")

    lora = load_example("lora_finetune")
    losses = lora.main(
        [
            "--model", str(tmp_path / "packed"), "--train_files", str(tmp_path / "train.txt"),
            "--validation_files", str(tmp_path / "train.txt"), "--output_dir", str(tmp_path / "adapter"),
            "--max_steps", "3", "--per_device_train_batch_size", "2", "--block_size", "16",
            "--max_eval_blocks", "2", "--learning_rate", "1e-2", "--lora_r", "4", "--dtype", "float32",
            "--use_cpu", "--logging_steps", "1",
        ]
    )  # fmt: skip
    assert set(losses) == {"eval_loss_before", "eval_loss_after"}
    assert losses["eval_loss_after"] < losses["eval_loss_before"]  # the same text: the adapter learned it
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".lora_" in name for name in adapter)
    assert any(torch.count_nonzero(tensor) for name, tensor in adapter.items() if "lora_B" in name)
