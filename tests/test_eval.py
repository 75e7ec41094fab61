"""Perplexity by the GPTQ protocol, window sampling and evaluation-text loading: hand-checkable, offline, fast."""

from __future__ import annotations

import math
import random
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, make_float_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from optimum_binarymos.eval import (
    EVAL_DATASETS,
    PerplexityResult,
    c4_windows,
    load_eval_documents,
    load_eval_text,
    perplexity,
    split_into_windows,
)


class TableLM(torch.nn.Module):
    """A bigram model: the logits after token ``i`` are ``table[i]``, so every probability is known exactly."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> types.SimpleNamespace:
        self.seen.append(input_ids.clone())
        return types.SimpleNamespace(logits=self.table[input_ids])


def successor_table(vocab: int, p: float) -> torch.Tensor:
    """Logits giving probability ``p`` to ``(i + 1) % vocab`` after ``i`` and the rest evenly to the others."""
    rest = math.log((1 - p) / (vocab - 1))
    table = torch.full((vocab, vocab), rest, dtype=torch.float64)
    table[torch.arange(vocab), (torch.arange(vocab) + 1) % vocab] = math.log(p)
    return table.float()


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, **{word: i + 1 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


# --- perplexity -------------------------------------------------------------------------------------------


def test_uniform_logits_give_the_vocabulary_size() -> None:
    model = TableLM(torch.zeros(50, 50))

    result = perplexity(model, token_ids=torch.randint(0, 50, (100,)), seq_len=10, progress=False)

    assert result.ppl == pytest.approx(50, rel=1e-6)
    assert result.nll == pytest.approx(math.log(50), rel=1e-6)


def test_known_next_token_probability() -> None:
    model = TableLM(successor_table(vocab=7, p=0.8))

    result = perplexity(model, token_ids=torch.arange(40) % 7, seq_len=8, progress=False)

    assert result.ppl == pytest.approx(1 / 0.8, rel=1e-6)


def test_windows_drop_the_tail_and_never_predict_their_first_token() -> None:
    # After 0 the model expects 1 (prob p); after 1 it expects 2, but the text says 0 (prob q).
    p = 0.9
    q = (1 - p) / 3
    model = TableLM(successor_table(vocab=4, p=p))
    stream = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])  # 2 windows of 4, tail [0, 1] dropped

    result = perplexity(model, token_ids=stream, seq_len=4, progress=False)

    assert (result.windows, result.tokens, result.seq_len) == (2, 6, 4)
    # Each window predicts 0->1, 1->0, 0->1; its first token (a 0 after a 1 in the stream) is not predicted.
    expected_nll = -(2 * math.log(p) + math.log(q)) / 3
    assert result.nll == pytest.approx(expected_nll, rel=1e-6)
    assert result.ppl == pytest.approx(math.exp(expected_nll), rel=1e-6)
    assert [batch.tolist() for batch in model.seen] == [[[0, 1, 0, 1]], [[0, 1, 0, 1]]]


def test_a_hopeless_model_reports_infinite_perplexity() -> None:
    table = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])  # sure the token repeats; the text alternates

    result = perplexity(TableLM(table), token_ids=torch.tensor([0, 1, 0, 1]), seq_len=4, progress=False)

    assert result.nll == pytest.approx(1000.0) and result.ppl == math.inf


def test_split_into_windows_counts() -> None:
    windows = split_into_windows(torch.arange(2 * 5 + 3), seq_len=5)

    assert windows.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert split_into_windows(torch.arange(10)[None], seq_len=5).shape == (2, 5)  # a (1, n) stream
    with pytest.raises(ValueError, match="fewer than one window"):
        split_into_windows(torch.arange(4), seq_len=5)


def test_max_windows_takes_the_first_ones() -> None:
    model = TableLM(torch.zeros(20, 20))

    result = perplexity(model, token_ids=torch.arange(100) % 20, seq_len=10, max_windows=3, progress=False)

    assert (result.windows, result.tokens) == (3, 27)
    assert torch.cat(model.seen).tolist() == split_into_windows(torch.arange(100) % 20, 10)[:3].tolist()


def test_ready_made_windows_are_scored_as_given() -> None:
    model = TableLM(successor_table(vocab=5, p=0.5))
    windows = torch.tensor([[0, 1, 2], [3, 4, 0], [2, 3, 4]])

    result = perplexity(model, token_ids=windows, seq_len=3, progress=False)

    assert (result.windows, result.tokens) == (3, 6)
    assert result.ppl == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="seq_len=3"):
        perplexity(model, token_ids=windows, seq_len=8, progress=False)


def test_batching_does_not_change_the_result() -> None:
    model = make_float_model("llama")
    stream = torch.randint(0, VOCAB, (7 * 16 + 5,), generator=torch.Generator().manual_seed(0))

    one = perplexity(model, token_ids=stream, seq_len=16, batch_size=1, progress=False)
    three = perplexity(model, token_ids=stream, seq_len=16, batch_size=3, progress=False)  # 3 + 3 + 1
    everything = perplexity(model, token_ids=stream, seq_len=16, batch_size=64, progress=False)

    assert one.windows == three.windows == everything.windows == 7
    assert three.ppl == pytest.approx(one.ppl, rel=1e-5)
    assert everything.ppl == pytest.approx(one.ppl, rel=1e-5)
    # A random model is close to uniform over the vocabulary, not far from it.
    assert VOCAB / 2 < one.ppl < VOCAB * 2


def test_bf16_model_is_scored_in_float32() -> None:
    vocab = 50_000  # a real vocabulary size, where a bf16 log-softmax loses digits
    table = (3 * torch.randn(16, vocab, generator=torch.Generator().manual_seed(0))).to(torch.bfloat16)
    model = TableLM(table)
    stream = torch.randint(0, 16, (4 * 32,), generator=torch.Generator().manual_seed(1))

    result = perplexity(model, token_ids=stream, seq_len=32, progress=False)

    windows = split_into_windows(stream, 32)
    logits = table[windows[:, :-1]].double()  # the very bf16 logits the model returns, exactly widened
    reference = -logits.log_softmax(-1).gather(-1, windows[:, 1:, None]).mean().item()
    assert result.nll == pytest.approx(reference, rel=1e-6)
    in_bf16 = torch.nn.functional.cross_entropy(
        table[windows[:, :-1]].reshape(-1, vocab), windows[:, 1:].reshape(-1)
    )
    assert abs(in_bf16.double().item() - reference) > 1e-4  # what a bf16 computation would have reported


def test_text_is_tokenized_once_and_matches_token_ids() -> None:
    tokenizer = word_tokenizer(["a", "b", "c"])
    text = " ".join(["a b c"] * 11)  # 33 tokens -> 4 windows of 8, tail of 1
    model = TableLM(successor_table(vocab=4, p=0.7))

    from_text = perplexity(model, tokenizer, text=text, seq_len=8, progress=False)
    from_ids = perplexity(model, token_ids=tokenizer(text)["input_ids"], seq_len=8, progress=False)

    assert from_text == from_ids
    assert (from_text.windows, from_text.tokens) == (4, 28)


def test_training_mode_is_restored_and_progress_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    model = TableLM(torch.zeros(6, 6)).train()

    result = perplexity(model, token_ids=torch.arange(12) % 6, seq_len=6)

    assert model.training
    assert isinstance(result, PerplexityResult)
    assert "perplexity" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of"),
        ({"text": "a b", "token_ids": [1, 2]}, "exactly one of"),
        ({"text": "a b c d"}, "needs a tokenizer"),
        ({"token_ids": [1, 2, 3], "seq_len": 1}, "at least 2"),
        ({"token_ids": [1, 2, 3], "seq_len": 4}, "fewer than one window"),
        ({"token_ids": [1, 2, 3, 4], "seq_len": 2, "max_windows": 0}, "max_windows"),
        ({"token_ids": [1, 2, 3, 4], "seq_len": 2, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        perplexity(TableLM(torch.zeros(6, 6)), progress=False, **kwargs)


def test_logits_of_the_wrong_shape_are_refused() -> None:
    class Pooled(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
            return torch.zeros(input_ids.shape[0], 6)

    with pytest.raises(ValueError, match="the model returned"):
        perplexity(Pooled(), token_ids=torch.arange(8), seq_len=4, progress=False)


# --- C4-style random windows --------------------------------------------------------------------------


def gptq_style_reference(tokenizer, documents: list[str], seq_len: int, n: int) -> list[list[int]]:
    """The sampling loop as the papers describe it, on the global random state."""
    random.seed(0)
    windows = []
    for _ in range(n):
        while True:
            ids = tokenizer(documents[random.randint(0, len(documents) - 1)])["input_ids"]
            if len(ids) > seq_len:
                break
        start = random.randint(0, len(ids) - seq_len - 1)
        windows.append(ids[start : start + seq_len])
    return windows


def test_c4_windows_follow_the_seeded_protocol() -> None:
    words = [f"w{i}" for i in range(30)]
    tokenizer = word_tokenizer(words)
    rng = random.Random(5)
    documents = [" ".join(rng.choices(words, k=rng.randint(3, 40))) for _ in range(25)]

    random.seed(1234)
    state = random.getstate()
    windows = c4_windows(tokenizer, documents, seq_len=12, n=20, seed=0)

    assert random.getstate() == state  # the global random state is left alone
    assert windows.shape == (20, 12) and windows.dtype == torch.long
    assert windows.tolist() == gptq_style_reference(tokenizer, documents, seq_len=12, n=20)
    assert torch.equal(windows, c4_windows(tokenizer, documents, seq_len=12, n=20, seed=0))
    assert not torch.equal(windows, c4_windows(tokenizer, documents, seq_len=12, n=20, seed=1))


def test_c4_windows_skip_short_documents_and_fail_when_all_are_short() -> None:
    tokenizer = word_tokenizer(["a", "b", "long"])
    documents = ["a b", "long " * 30, "a", "b a b"]

    windows = c4_windows(tokenizer, documents, seq_len=4, n=10)

    assert (windows == tokenizer("long")["input_ids"][0]).all()  # only the long document qualifies
    with pytest.raises(ValueError, match="no document is longer than seq_len=4"):
        c4_windows(tokenizer, ["a b", "a b a b"], seq_len=4, n=3)  # exactly seq_len is not enough


# --- evaluation texts -------------------------------------------------------------------------------------


@pytest.fixture
def fake_datasets(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """A stand-in ``datasets`` module recording ``load_dataset`` calls; the real one would need the network."""
    calls: list[tuple] = []

    def load_dataset(path: str, name: str | None = None, *, split: str, **kwargs: object) -> dict:
        calls.append((path, name, split, kwargs))
        return {"text": [f"{path} {split} line 1", "", f"{path} {split} line 2"]}

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_wikitext2_is_the_raw_test_split_joined(fake_datasets: list[tuple]) -> None:
    text = load_eval_text("wikitext2")

    assert fake_datasets == [("wikitext", "wikitext-2-raw-v1", "test", {})]
    assert text == "wikitext test line 1\n\n\n\nwikitext test line 2"


def test_c4_is_the_first_validation_shard(fake_datasets: list[tuple]) -> None:
    documents = load_eval_documents("C4")
    load_eval_documents("c4", split="train")

    validation = {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}}
    train = {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}}
    assert fake_datasets == [
        ("allenai/c4", None, "validation", validation),
        ("allenai/c4", None, "train", train),
    ]
    assert documents == ["allenai/c4 validation line 1", "", "allenai/c4 validation line 2"]
    assert EVAL_DATASETS == {"wikitext2": "test", "c4": "validation"}
    with pytest.raises(ValueError, match="splits"):
        load_eval_documents("c4", split="test")


def test_missing_datasets_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail

    with pytest.raises(ImportError, match="pip install datasets"):
        load_eval_text("wikitext2")


def test_unreachable_hub_says_to_use_local_files(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))

    with pytest.raises(RuntimeError, match="local text files") as raised:
        load_eval_text("wikitext2")
    assert "Couldn't reach" in str(raised.value)


def test_local_files_folders_and_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first é", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")

    assert load_eval_text(tmp_path / "a.txt") == "first é"
    assert load_eval_text(tmp_path) == "first é\n\nsecond"
    assert load_eval_documents([tmp_path / "b.txt", str(tmp_path / "a.txt")]) == ["second", "first é"]

    monkeypatch.chdir(tmp_path)
    Path("c4").write_text("a local file named like a dataset wins", encoding="utf-8")
    assert load_eval_text("c4") == "a local file named like a dataset wins"


def test_unknown_names_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known evaluation set"):
        load_eval_text("ptb")
    with pytest.raises(ValueError, match="no such file"):
        load_eval_text([tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="no \\*.txt file"):
        load_eval_text(tmp_path)
