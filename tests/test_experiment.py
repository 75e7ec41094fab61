"""``optimum_binarymos.experiment``: budgets, the date-split data, students of each method, short runs, scales."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import VOCAB

from optimum_binarymos import BinaryMoSConfig, TernaryConfig
from optimum_binarymos.experiment import (
    DEFAULT_EVAL_FROM_YEAR,
    METHODS,
    Budget,
    build_student,
    distill,
    evaluate_perplexity,
    quantization_config,
    sotu_data,
    spread_experts,
    token_scale_samples,
    token_spread,
)
from optimum_binarymos.nn import BinaryMoSLinear, TernaryLinear


class ByteTokenizer:
    """Stand-in tokenizer: one token per byte, shifted into the tiny models' vocabulary."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens: bool = False):
        if isinstance(text, list):
            return {"input_ids": [self(piece)["input_ids"] for piece in text]}
        return {"input_ids": [1 + byte % (VOCAB - 1) for byte in text.encode()]}


@dataclass(frozen=True)
class Address:
    """Like ``demo_assets.SotuAddress``: what ``sotu_data`` reads is ``year`` and ``text``."""

    year: int
    text: str


@pytest.fixture
def addresses() -> list[Address]:
    """Three old addresses and one new one, out of order (``sotu_data`` sorts them by year)."""
    return [
        Address(1990, "b" * 600),
        Address(2001, "new text " * 20),
        Address(1900, "a" * 600),
        Address(1999, "c" * 600),
    ]


def test_budget_counts_tokens_and_refuses_nonsense() -> None:
    budget = Budget(steps=3, block_size=16, batch_size=2)
    assert budget.tokens == 96
    assert "96 tokens" in budget.describe()
    assert budget.as_dict()["tokens"] == 96
    for bad in ({"steps": 0}, {"block_size": 2.5}, {"batch_size": True}, {"learning_rate": 0}):
        with pytest.raises(ValueError, match="Budget"):
            Budget(**bad)


def test_quantization_config_of_each_method() -> None:
    assert quantization_config("onebit").num_experts == 1
    assert quantization_config("binarymos", num_experts=3).num_experts == 3
    assert isinstance(quantization_config("binarymos"), BinaryMoSConfig)
    assert quantization_config("ternary", group_size=32).group_size == 32
    assert isinstance(quantization_config("ternary"), TernaryConfig)
    with pytest.raises(ValueError, match="onebit"):
        quantization_config("fourbit")


def test_sotu_data_takes_the_latest_training_text_and_holds_out_the_new(addresses: list[Address]) -> None:
    budget = Budget(steps=2, block_size=50, batch_size=3)
    data = sotu_data(ByteTokenizer(), budget, addresses, eval_from_year=2000)
    assert data.train.blocks.shape == (6, 50)
    assert data.eval_from_year == 2000
    # Blocks come from the end of the older text ("...ccc"), never from the held-out address.
    c_id = ByteTokenizer()("c")["input_ids"][0]
    assert data.train.blocks[-1].eq(c_id).all()
    assert (
        data.eval_ids.tolist() == ByteTokenizer()(("new text " * 20).strip())["input_ids"]
    )  # addresses are stripped


def test_sotu_data_refuses_a_budget_larger_than_the_text(addresses: list[Address]) -> None:
    with pytest.raises(ValueError, match="the budget needs 400"):
        sotu_data(ByteTokenizer(), Budget(steps=100, block_size=50, batch_size=4), addresses, 2000)


def test_sotu_data_takes_year_text_pairs_and_refuses_an_empty_split(addresses: list[Address]) -> None:
    budget = Budget(steps=2, block_size=50, batch_size=3)
    pairs = [(address.year, address.text) for address in addresses]
    from_pairs = sotu_data(ByteTokenizer(), budget, pairs)
    from_objects = sotu_data(ByteTokenizer(), budget, addresses)
    assert from_pairs.eval_from_year == DEFAULT_EVAL_FROM_YEAR == 2000
    assert torch.equal(from_pairs.train.blocks, from_objects.train.blocks)
    assert torch.equal(from_pairs.eval_ids, from_objects.eval_ids)
    with pytest.raises(ValueError, match="empty split: the addresses span 1900 to 2001"):
        sotu_data(ByteTokenizer(), budget, pairs, eval_from_year=2002)
    with pytest.raises(ValueError, match="at least one address"):
        sotu_data(ByteTokenizer(), budget, [])


def test_sotu_data_validation_split_holds_out_the_decade_before(addresses: list[Address]) -> None:
    budget = Budget(steps=1, block_size=50, batch_size=2, calibration_tokens=0)
    data = sotu_data(ByteTokenizer(), budget, addresses, eval_from_year=2000, split="validation")
    assert data.eval_from_year == 1990
    assert data.eval_ids.tolist() == ByteTokenizer()("b" * 600 + "\n\n" + "c" * 600)["input_ids"]
    a_id = ByteTokenizer()("a")["input_ids"][0]
    assert data.train.blocks.eq(a_id).all()  # training text from before the held-out decade only
    with pytest.raises(ValueError, match="split must be"):
        sotu_data(ByteTokenizer(), budget, addresses, split="test")


@pytest.mark.parametrize("method", METHODS)
def test_short_run_of_each_method(method: str, float_checkpoint, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    folder = float_checkpoint("llama")
    teacher = AutoModelForCausalLM.from_pretrained(folder)
    student = build_student(folder, method, num_experts=2)
    layer_type = TernaryLinear if method == "ternary" else BinaryMoSLinear
    layers = [m for m in student.modules() if isinstance(m, layer_type)]
    assert layers
    if method != "ternary":
        assert {layer.num_experts for layer in layers} == {1 if method == "onebit" else 2}
    before = [p.detach().clone() for p in student.parameters() if p.requires_grad]

    blocks = torch.randint(1, VOCAB, (4, 16))
    from optimum_binarymos.distill import TokenBlocks

    budget = Budget(steps=2, block_size=16, batch_size=2, learning_rate=1e-2)
    history = distill(student, teacher, TokenBlocks(blocks), budget, tmp_path / "out", progress=False)
    assert [row["step"] for row in history] == [1, 2]
    assert all(row["loss"] > 0 and "kd_logits" in row and "kd_hidden" in row for row in history)
    after = [p.detach() for p in student.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))

    ppl = evaluate_perplexity(student, blocks.reshape(-1), seq_len=16, max_windows=2)
    assert 1.0 < ppl < float("inf")


def test_token_scales_are_fixed_for_onebit_and_mixed_per_token_for_binarymos(float_checkpoint) -> None:
    folder = float_checkpoint("llama")
    input_ids = torch.randint(1, VOCAB, (1, 12))
    name = "model.layers.0.self_attn.o_proj"
    onebit = build_student(folder, "onebit")
    scales = token_scale_samples(onebit, input_ids, name)
    layer = onebit.get_submodule(name)
    assert scales["scale_in"].shape == (12, layer.in_features)
    assert scales["scale_out"].shape == (12, layer.out_features)
    assert torch.equal(token_spread(scales["scale_in"]), torch.zeros(layer.in_features))

    # SVID starts every expert equal: the mix is the same for every token until the experts differ.
    mos = build_student(folder, "binarymos", num_experts=4)
    assert token_spread(token_scale_samples(mos, input_ids, name)["scale_out"]).max() < 1e-6
    spread = build_student(folder, "binarymos", num_experts=4, expert_spread=0.2)
    scales = token_scale_samples(spread, input_ids, name)
    assert token_spread(scales["scale_in"]).min() > 0
    assert token_spread(scales["scale_out"]).min() > 0
    # The recorded scale is the gate-weighted mix for that token.
    layer = spread.get_submodule(name)
    x = torch.randn(5, layer.in_features)
    assert torch.allclose(layer.token_scales(x)[0], layer.router_gates(x) @ layer.scale_in, atol=1e-6)

    with pytest.raises(TypeError, match="not a BinaryMoS layer"):
        token_scale_samples(mos, input_ids, "model.embed_tokens")


def test_spread_experts_keeps_the_expert_mean_and_skips_onebit(float_checkpoint) -> None:
    folder = float_checkpoint("llama")
    plain = build_student(folder, "binarymos", num_experts=3)
    spread = build_student(folder, "binarymos", num_experts=3)
    assert spread_experts(spread, 0.1, seed=1) == 14  # 7 linears x 2 layers
    for name, module in spread.named_modules():
        if isinstance(module, BinaryMoSLinear):
            original = plain.get_submodule(name)
            assert not torch.equal(module.scale_in, original.scale_in)
            torch.testing.assert_close(module.scale_in.mean(0), original.scale_in.mean(0))
            torch.testing.assert_close(module.scale_out.mean(0), original.scale_out.mean(0))
    assert spread_experts(build_student(folder, "onebit"), 0.1) == 0
    with pytest.raises(ValueError, match="spread"):
        spread_experts(spread, -1.0)
