"""Zero-shot evaluation through lm-eval-harness, offline: a local multiple-choice task on a tiny packed model."""

from __future__ import annotations

import json

import lm_eval  # noqa: F401  in the test extra and the lock: missing means a broken environment
import pytest
import torch
from conftest import VOCAB, make_float_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from optimum_binarymos import BinaryMoSConfig, convert_model, pack_model, record_evaluation
from optimum_binarymos.integrations.lm_eval import ZeroShotResults, evaluate_zero_shot

WORDS = "the capital of france italy spain is paris rome madrid berlin yes no".split()

QUESTIONS = [
    ("the capital of france is", ["paris", "rome", "madrid"], 0),
    ("the capital of italy is", ["paris", "rome", "madrid"], 1),
    ("the capital of spain is", ["berlin", "rome", "madrid"], 2),
    ("is paris the capital of france", ["yes", "no"], 0),
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, **{word: i + 1 for i, word in enumerate(WORDS)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), VOCAB)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<unk>")


def accuracy_written_out(model, tokenizer) -> float:
    """``acc`` of ``tiny_capitals`` computed here: the choice with the highest log-likelihood after the query."""
    correct = 0
    for query, choices, gold in QUESTIONS:
        context = tokenizer(query, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in choices:
            (token,) = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([context + [token]])).logits[0, len(context) - 1]
            scores.append(logits.log_softmax(-1)[token].item())
        correct += int(max(range(len(choices)), key=scores.__getitem__) == gold)
    return correct / len(QUESTIONS)


@pytest.fixture
def local_task(tmp_path, monkeypatch):
    """A multiple-choice task named ``tiny_capitals`` on a local jsonl file; no network may be used."""
    # conftest already set HF_HUB_OFFLINE before `datasets` was imported; these cover any later reads.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "capitals.jsonl"
    data.write_text(
        "".join(json.dumps({"query": q, "choices": c, "gold": g}) + "\n" for q, c, g in QUESTIONS)
    )
    (tmp_path / "tiny_capitals.yaml").write_text(
        f"""\
task: tiny_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {tmp_path / "datasets-cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
    )
    return tmp_path


def test_zero_shot_on_local_task_with_packed_model(local_task, tmp_path):
    model = pack_model(convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=2)))
    folder = tmp_path / "packed"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)

    evaluation = evaluate_zero_shot(
        str(folder),
        tasks="tiny_capitals",
        device="cpu",
        batch_size=4,
        include_path=str(local_task),
        include_defaults=False,  # skip indexing lm-eval's thousands of built-in task files
        output_path=tmp_path / "results.json",
    )

    assert isinstance(evaluation, ZeroShotResults)
    assert json.loads(json.dumps(evaluation)) == evaluation.accuracies  # the flat {task: acc} dict itself
    scores = evaluation.results["results"]["tiny_capitals"]
    assert scores["sample_len"] == len(QUESTIONS)
    # Task not in the papers' table: `acc` is reported; the flat view and the average agree with lm-eval's dict.
    assert evaluation.metrics == {"tiny_capitals": "acc"}
    assert evaluation.accuracies == {"tiny_capitals": scores["acc,none"]}
    assert evaluation.average == scores["acc,none"]
    assert 0.0 <= evaluation.average <= 1.0
    assert "tiny_capitals" in evaluation.table()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"]["tasks"]["tiny_capitals"]["value"] == scores["acc,none"]
    assert saved["summary"]["num_fewshot"] == {"tiny_capitals": 0}


def test_zero_shot_on_model_object_matches_folder_and_a_hand_count_and_takes_adapter(local_task, tmp_path):
    from peft import LoraConfig, get_peft_model

    from optimum_binarymos.integrations.peft import register_lora_layers

    model = pack_model(convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=2)))
    tokenizer = tiny_tokenizer()
    run = {
        "tasks": ["tiny_capitals"],
        "include_path": [local_task],
        "include_defaults": False,
        "batch_size": 4,
    }
    plain = evaluate_zero_shot(model, tokenizer=tokenizer, **run)
    assert plain.accuracies == {"tiny_capitals": accuracy_written_out(model, tokenizer)}
    model.save_pretrained(tmp_path / "folder")
    tokenizer.save_pretrained(tmp_path / "folder")
    assert evaluate_zero_shot(str(tmp_path / "folder"), **run).accuracies == plain.accuracies
    recorded = record_evaluation(model, plain.card_metrics())  # what the model card shows
    assert recorded["tiny_capitals_acc"] == recorded["zero_shot_average"] == plain.accuracies["tiny_capitals"]

    # An adapter folder on top of the same model: the helper applies it with load_lora_adapter.
    targets = ["q_proj", "v_proj", "o_proj", "down_proj"]
    torch.manual_seed(1)
    adapted = get_peft_model(
        model, register_lora_layers(LoraConfig(r=2, target_modules=targets, init_lora_weights=False))
    )
    with torch.no_grad():  # an adapter strong enough to change the answers, so that ignoring it shows
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.mul_(200)
    adapted.save_pretrained(tmp_path / "adapter")
    adapted_accuracy = accuracy_written_out(adapted, tokenizer)
    assert adapted_accuracy != plain.accuracies["tiny_capitals"]
    base = adapted.unload()
    with_adapter = evaluate_zero_shot(base, tokenizer=tokenizer, adapter=tmp_path / "adapter", **run)
    assert with_adapter.accuracies == {"tiny_capitals": adapted_accuracy}


def test_the_lm_eval_entry_point_loads_a_packed_checkpoint(local_task, tmp_path):
    """``lm-eval-binarymos`` is lm-eval's own command line in a process that imports optimum_binarymos first:
    without it, ``--model hf`` cannot load a packed folder; with it, the score equals the in-process one."""
    import subprocess
    import sys

    model = pack_model(convert_model(make_float_model("llama"), BinaryMoSConfig(num_experts=2)))
    folder = tmp_path / "packed"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    output = tmp_path / "cli-results"
    command = [
        sys.executable, "-m", "optimum_binarymos.integrations.lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={folder}", "--tasks", "tiny_capitals", "--include_path", str(local_task),
        "--device", "cpu", "--batch_size", "4", "--output_path", str(output),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    (written,) = output.rglob("results*.json")
    score = json.loads(written.read_text())["results"]["tiny_capitals"]["acc,none"]
    assert score == accuracy_written_out(model, tiny_tokenizer())
