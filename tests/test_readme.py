"""Every Python example of the README runs, in order, against a tiny local model with a tiny tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import VOCAB, make_float_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

README = Path(__file__).resolve().parents[1] / "README.md"
README_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def save_tiny_model_with_tokenizer(folder: Path) -> None:
    words = "the capital of france is paris a an and to in".split()
    vocab = {"<unk>": 0, **{word: i + 1 for i, word in enumerate(words)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), VOCAB)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<unk>")
    make_float_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_readme_examples_run(tmp_path, monkeypatch):
    blocks = readme_python_blocks()
    assert len(blocks) >= 3
    save_tiny_model_with_tokenizer(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.replace(README_MODEL_ID, str(tmp_path / "tiny")), str(README), "exec"), namespace)
    assert (tmp_path / "smollm2-binarymos" / "model.safetensors").is_file()
    assert (tmp_path / "smollm2-onebit" / "model.safetensors").is_file()
    assert (tmp_path / "smollm2-ternary" / "model.safetensors").is_file()
    assert (tmp_path / "smollm2-binarymos-lora" / "adapter_config.json").is_file()
