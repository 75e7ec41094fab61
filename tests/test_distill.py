"""Quantization-aware distillation: config, losses, data helpers, the trainer, checkpoints and the example."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import make_float_model, tiny_llama_config
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, HfArgumentParser, PreTrainedTokenizerFast, TrainerCallback

from optimum_binarymos import BinaryMoSConfig, BinaryMoSLinear, convert_model
from optimum_binarymos.distill import (
    DistillationConfig,
    DistillationTrainer,
    HiddenStateTap,
    TokenBlocks,
    binarymos_trainable_parameters,
    hidden_state_loss,
    layerwise_hidden_loss,
    load_text_blocks,
    logits_kl_loss,
    pack_into_blocks,
    text_blocks,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "distill.py"
# transformers 5.23 renamed gradient checkpointing to activation checkpointing (the old names still work).
CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in DistillationConfig.__dataclass_fields__
    else "gradient_checkpointing"
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pair(num_experts: int = 4, seed: int = 0):
    """(teacher, student): a tiny random LLaMA and its BinaryMoS conversion (router seeded)."""
    teacher = make_float_model("llama")
    torch.manual_seed(seed)
    student = convert_model(copy.deepcopy(teacher), BinaryMoSConfig(num_experts=num_experts))
    return teacher, student


def random_blocks(count: int = 16, length: int = 16, seed: int = 0) -> TokenBlocks:
    generator = torch.Generator().manual_seed(seed)
    return TokenBlocks(torch.randint(1, 96, (count, length), generator=generator))


def tiny_args(tmp_path, **overrides) -> DistillationConfig:
    """The paper's loss (the numbers below are written for it) at a learning rate tiny models move at."""
    settings = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "warmup_steps": 0,
        "seed": 0,
        "dataloader_pin_memory": False,
    }
    return DistillationConfig.paper(**{**settings, **overrides})


def train_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


# ---- config -----------------------------------------------------------------------------------------------


def test_config_defaults_are_the_small_budget_recipe_and_paper_gives_the_authors(tmp_path):
    args = DistillationConfig(output_dir=str(tmp_path))
    assert (args.learning_rate, args.scales_learning_rate, args.weight_decay) == (1e-3, 5e-3, 0.0)
    assert args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 0.05
    assert (args.kd_logits_weight, args.kd_hidden_weight, args.kd_hidden_loss) == (1.0, 1.0, "normalized_mse")
    assert (args.kd_hidden_layers, args.kd_temperature, args.kd_logits_reduction) == ("all", 1.0, "token_mean")
    args = DistillationConfig.paper(output_dir=str(tmp_path))
    assert (args.learning_rate, args.scales_learning_rate, args.weight_decay, args.num_train_epochs) == (
        2e-5, None, 0.0, 3.0,
    )
    assert args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 0.03
    assert (args.per_device_train_batch_size, args.adam_beta1, args.adam_beta2) == (4, 0.9, 0.999)
    assert (args.kd_logits_weight, args.kd_hidden_weight, args.kd_hidden_loss) == (1.0, 10.0, "mse")
    assert (args.kd_hidden_layers, args.kd_temperature, args.kd_logits_reduction) == ("all", 1.0, "batchmean")
    onebit = DistillationConfig.onebit(output_dir=str(tmp_path))
    assert (onebit.kd_logits_weight, onebit.kd_hidden_weight, onebit.kd_hidden_loss) == (
        0.01,
        1.0,
        "normalized_mse",
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kd_hidden_loss": "l1"}, "kd_hidden_loss must be one of"),
        ({"kd_logits_weight": -1.0}, "kd_logits_weight must be a number >= 0"),
        ({"kd_logits_weight": 0.0, "kd_hidden_weight": 0.0}, "both 0"),
        ({"kd_temperature": 0.0}, "kd_temperature must be > 0"),
        ({"kd_logits_reduction": "sum"}, "kd_logits_reduction must be one of"),
        ({"kd_logits_chunk_tokens": -2}, "kd_logits_chunk_tokens must be an integer >= 0"),
        ({"kd_hidden_layers": []}, "kd_hidden_layers must be 'all' or a non-empty list"),
        ({"kd_hidden_layers": ["first"]}, "kd_hidden_layers must be 'all' or a non-empty list"),
        ({"kd_hidden_layers": [1, 1]}, "lists a layer twice"),
    ],
)
def test_config_rejects_bad_values_saying_what_to_change(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DistillationConfig(output_dir=str(tmp_path), **overrides)


def test_config_fields_parse_from_the_command_line_and_show_in_help(tmp_path, capsys):
    parser = HfArgumentParser(DistillationConfig)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--kd_hidden_layers", "0,-1", "--kd-hidden-loss", "cosine"]
    )
    assert args.kd_hidden_layers == [0, -1] and args.kd_hidden_loss == "cosine"
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--kd_hidden_layers", "all"])
    assert args.kd_hidden_layers == "all"
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path)])
    assert args.kd_hidden_layers == "all"
    assert DistillationConfig(output_dir=str(tmp_path), kd_hidden_layers=["1", 0]).kd_hidden_layers == [1, 0]
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    help_text = capsys.readouterr().out
    for name in ("--kd_logits_weight", "--kd_hidden_loss", "--kd_hidden_layers", "--kd_temperature"):
        assert name in help_text


# ---- losses -----------------------------------------------------------------------------------------------


def test_kl_of_identical_logits_is_zero_and_matches_torch_on_a_known_case():
    logits = torch.randn(2, 5, 11)
    assert logits_kl_loss(logits, logits.clone()).abs().item() < 1e-6
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    expected = torch.nn.functional.kl_div(
        student.log_softmax(-1), teacher.log_softmax(-1), reduction="batchmean", log_target=True
    )
    # F.kl_div's "batchmean" on (batch, seq, vocab) divides the sum by the batch size, as the authors use it.
    assert torch.allclose(logits_kl_loss(student, teacher), expected, atol=1e-6)
    assert torch.allclose(
        logits_kl_loss(student, teacher, reduction="token_mean"), expected * 2 / 10, atol=1e-6
    )
    chunked = logits_kl_loss(student, teacher, chunk_tokens=3)
    assert torch.allclose(chunked, expected, atol=1e-6)


def test_kl_temperature_softens_both_sides_and_rescales():
    student, teacher = torch.randn(1, 4, 7), torch.randn(1, 4, 7)
    direct = logits_kl_loss(student / 2.0, teacher / 2.0) * 4.0
    assert torch.allclose(logits_kl_loss(student, teacher, temperature=2.0), direct, atol=1e-6)


def test_hidden_losses_on_hand_checkable_tensors():
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (batch 1, seq 2, hidden 2)
    teacher = torch.tensor([[[3.0, 0.0], [0.0, 0.0]]])
    # mse: ((1-3)^2 + 0 + 0 + (2-0)^2) / 4 = 2
    assert hidden_state_loss(student, teacher, kind="mse").item() == pytest.approx(2.0)
    # parallel vectors: cosine 0 and normalized distance 0 (the zero teacher vector counts as orthogonal)
    parallel = torch.tensor([[[1.0, 2.0]]])
    assert hidden_state_loss(parallel, 5 * parallel, kind="cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_state_loss(parallel, 5 * parallel, kind="normalized_mse").item() == pytest.approx(
        0.0, abs=1e-6
    )
    # orthogonal unit vectors: 1 - cos = 1, |a - b|^2 = 2
    a, b = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 3.0]]])
    assert hidden_state_loss(a, b, kind="cosine").item() == pytest.approx(1.0)
    assert hidden_state_loss(a, b, kind="normalized_mse").item() == pytest.approx(2.0)
    total = layerwise_hidden_loss([student, a], [teacher, b], kind="mse")
    assert total.item() == pytest.approx(2.0 + (1 + 9) / 2)


@pytest.mark.parametrize("kind", ["mse", "normalized_mse", "cosine"])
def test_masking_leaves_padding_out_of_every_loss(kind):
    student, teacher = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    garbage_student, garbage_teacher = student.clone(), teacher.clone()
    garbage_student[0, 4:] = 1e4
    garbage_teacher[0, 4:] = -1e4
    masked = hidden_state_loss(garbage_student, garbage_teacher, mask, kind)
    # The same tokens without padding: per-token means over the 10 real tokens.
    real = mask.bool()
    flat = hidden_state_loss(student[real][None], teacher[real][None], kind=kind)
    assert torch.allclose(masked, flat, atol=1e-5)
    logits_s, logits_t = torch.randn(2, 6, 9), torch.randn(2, 6, 9)
    noisy_s, noisy_t = logits_s.clone(), logits_t.clone()
    noisy_s[0, 4:], noisy_t[0, 4:] = 50.0 * torch.randn(2, 9), 50.0 * torch.randn(2, 9)
    for reduction in ("batchmean", "token_mean"):
        with_padding = logits_kl_loss(noisy_s, noisy_t, mask, reduction=reduction)
        denominator = 2 if reduction == "batchmean" else 10
        expected = (
            logits_kl_loss(logits_s[real][None], logits_t[real][None], reduction="batchmean") / denominator
        )
        assert torch.allclose(with_padding, expected, atol=1e-5)


def test_half_precision_inputs_give_finite_float32_losses():
    # Values whose squares overflow float16 (max 65504) and logits whose softmax underflows it.
    student = (torch.randn(2, 4, 16) * 300).half()
    teacher = (torch.randn(2, 4, 16) * 300).half()
    for kind in ("mse", "normalized_mse", "cosine"):
        value = hidden_state_loss(student, teacher, kind=kind)
        assert value.dtype == torch.float32 and torch.isfinite(value)
    logits_s = (torch.randn(2, 4, 50) * 40).half().requires_grad_()
    logits_t = (torch.randn(2, 4, 50) * 40).half()
    kl = logits_kl_loss(logits_s, logits_t)
    assert kl.dtype == torch.float32 and torch.isfinite(kl)
    kl.backward()
    assert torch.isfinite(logits_s.grad).all()


def test_losses_backpropagate_like_their_uncheckpointed_formula():
    student = torch.randn(2, 3, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4)
    hidden_state_loss(student, teacher, kind="mse").backward()
    assert torch.allclose(student.grad, 2 * (student - teacher).detach() / student.numel(), atol=1e-6)


# ---- data -------------------------------------------------------------------------------------------------


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {"<eos>": 0, "<unk>": 1, **{word: i + 2 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def test_pack_into_blocks_cuts_consecutive_blocks_and_drops_the_tail():
    blocks = pack_into_blocks(list(range(10)), 3)
    assert blocks.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and blocks.dtype == torch.long
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_into_blocks([1, 2], 3)
    with pytest.raises(ValueError, match="block_size"):
        pack_into_blocks([1, 2], 0)


def test_load_text_blocks_joins_files_with_eos(tmp_path):
    tokenizer = word_tokenizer(["a", "b", "c", "d"])
    (tmp_path / "one.txt").write_text("a b c\n")
    (tmp_path / "two.txt").write_text("d d\n")
    blocks = load_text_blocks([tmp_path / "one.txt", tmp_path / "two.txt"], tokenizer, block_size=2)
    # a b c <eos> d d <eos> -> [a b] [c <eos>] [d d]
    assert blocks.blocks.tolist() == [[2, 3], [4, 0], [5, 5]]
    assert blocks[1]["input_ids"].tolist() == [4, 0]
    assert (
        len(load_text_blocks([tmp_path / "one.txt", tmp_path / "two.txt"], tokenizer, 2, max_blocks=1)) == 1
    )
    train, held_out = blocks.split(1)
    assert (len(train), len(held_out)) == (2, 1)
    assert text_blocks(["a b", "c"], tokenizer, 5).blocks.tolist() == [[2, 3, 0, 4, 0]]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text_blocks([tmp_path / "missing.txt"], tokenizer, 2)


# ---- trainer ----------------------------------------------------------------------------------------------


def test_trainer_refuses_what_it_cannot_distill(tmp_path):
    teacher, student = tiny_pair()
    with pytest.raises(TypeError, match="DistillationConfig"):
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=transformers.TrainingArguments(output_dir=str(tmp_path)),
        )
    with pytest.raises(ValueError, match="has no BinaryMoS layer"):
        DistillationTrainer(model=make_float_model("llama"), teacher_model=teacher, args=tiny_args(tmp_path))
    with pytest.raises(ValueError, match="model has 2 decoder layers"):
        DistillationTrainer(
            model=student, teacher_model=teacher, args=tiny_args(tmp_path, kd_hidden_layers=[0, 5])
        )


def test_only_binarymos_parameters_train_and_the_teacher_stays_frozen(tmp_path):
    teacher, student = tiny_pair()
    teacher_before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    student_before = {name: tensor.clone() for name, tensor in student.named_parameters()}
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=tiny_args(tmp_path), train_dataset=random_blocks()
    )
    count = trainer.trainable_count
    binarymos = {
        f"{name}.{param_name}"
        for name, module in student.named_modules()
        if isinstance(module, BinaryMoSLinear)
        for param_name, _ in module.named_parameters()
    }
    assert count.trainable == sum(p.numel() for n, p in student.named_parameters() if n in binarymos)
    assert count.layers == 14 and "frozen" in str(count)
    trainer.train()

    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, teacher_before[name]), name
    for name, param in student.named_parameters():
        changed = not torch.equal(param, student_before[name])
        assert changed == (name in binarymos), (
            name
        )  # embeddings, norms, lm_head untouched; every BinaryMoS tensor moved


def test_logs_carry_each_term_beside_the_weighted_total(tmp_path):
    teacher, student = tiny_pair()
    args = tiny_args(tmp_path, kd_logits_weight=0.5, kd_hidden_weight=3.0, kd_hidden_layers=[-1])
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=random_blocks()
    )
    trainer.train()
    logs = train_logs(trainer)
    assert len(logs) == 3
    for entry in logs:
        assert entry["loss"] == pytest.approx(0.5 * entry["kd_logits"] + 3.0 * entry["kd_hidden"], rel=1e-5)
        assert entry["kd_logits"] > 0 and entry["kd_hidden"] > 0
    metrics = trainer.evaluate(random_blocks(4, seed=1))
    assert {"eval_loss", "eval_kd_logits", "eval_kd_hidden"} <= set(metrics)
    assert metrics["eval_loss"] == pytest.approx(
        0.5 * metrics["eval_kd_logits"] + 3.0 * metrics["eval_kd_hidden"], rel=1e-5
    )


def test_hidden_only_and_logits_only_runs_log_only_their_term(tmp_path):
    teacher, student = tiny_pair()
    args = tiny_args(tmp_path, max_steps=1, kd_logits_weight=0.0, kd_hidden_loss="cosine")
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=random_blocks()
    )
    trainer.train()
    (entry,) = train_logs(trainer)
    assert "kd_logits" not in entry and entry["loss"] == pytest.approx(10.0 * entry["kd_hidden"], rel=1e-5)


def test_gradient_accumulation_and_checkpointing_reproduce_the_plain_run(tmp_path):
    def losses(**overrides):
        teacher, student = tiny_pair()
        args = tiny_args(tmp_path, **overrides)
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=random_blocks()
        )
        trainer.train()
        return [entry["loss"] for entry in train_logs(trainer)]

    plain = losses()
    # "batchmean" divides by the micro-batch size and Trainer by the accumulation steps: same gradients.
    accumulated = losses(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    checkpointed = losses(**{CHECKPOINTING: True})
    assert accumulated == pytest.approx(plain, rel=1e-4)
    assert checkpointed == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_autocast_with_a_half_student_trains_float32_master_weights(tmp_path, precision):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    teacher, student = tiny_pair()
    student.to(dtype)
    seen: list[torch.dtype] = []

    class DtypeProbe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append(model.model.layers[0].self_attn.q_proj.weight.dtype)

    weight_before = student.model.layers[0].mlp.down_proj.weight.detach().clone()
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,  # float32: cast to the student's dtype
        # fp16 also runs a gradient scaler, which refuses float16 gradients: master weights make it work.
        args=tiny_args(tmp_path, use_cpu=True, learning_rate=1e-4, **{precision: True}),
        train_dataset=random_blocks(),
        callbacks=[DtypeProbe()],
    )
    trainer.train()
    assert next(teacher.parameters()).dtype == dtype
    assert seen == [torch.float32] * len(seen) and seen  # master weights while training ...
    weight = student.model.layers[0].mlp.down_proj.weight
    assert weight.dtype == dtype  # ... and the loaded dtype afterwards
    assert not torch.equal(weight, weight_before)
    assert all(math.isfinite(entry["loss"]) for entry in train_logs(trainer))


def test_60_steps_lower_held_out_kl_by_at_least_20_percent(tmp_path):
    vocab = 96
    successors = torch.randint(0, vocab, (vocab, 3), generator=torch.Generator().manual_seed(123))

    def markov_blocks(count: int, length: int, seed: int) -> torch.Tensor:
        """Text with structure: each token is followed by one of 3 fixed successors."""
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.empty(count, length, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, vocab, (count,), generator=generator)
        for position in range(1, length):
            choice = torch.randint(0, 3, (count,), generator=generator)
            tokens[:, position] = successors[tokens[:, position - 1], choice]
        return tokens

    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=vocab, intermediate_size=128)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(10.0)  # peaked, context-dependent teacher distributions, not near-uniform
    student = convert_model(copy.deepcopy(teacher), BinaryMoSConfig())
    train, held_out = markov_blocks(64, 32, seed=1), markov_blocks(16, 32, seed=2)

    def held_out_kl() -> float:
        with torch.no_grad():
            return logits_kl_loss(
                student(held_out).logits, teacher(held_out).logits, reduction="token_mean"
            ).item()

    before = held_out_kl()
    args = tiny_args(tmp_path, max_steps=60, per_device_train_batch_size=8, logging_steps=20)
    DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=TokenBlocks(train)
    ).train()
    after = held_out_kl()
    assert after <= 0.8 * before, (before, after)


class StopAt(TrainerCallback):
    """Ends training after ``step`` optimizer steps, as if the job had been interrupted."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resumed_run_matches_an_uninterrupted_one_and_checkpoints_stay_latent(tmp_path):
    def run(output: str, callbacks=(), resume: str | None = None):
        teacher, student = tiny_pair()
        args = tiny_args(
            tmp_path, output_dir=str(tmp_path / output), max_steps=6, save_strategy="steps", save_steps=3
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=random_blocks(),
            callbacks=list(callbacks),
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer, student

    uninterrupted, reference = run("full")
    interrupted, _ = run("interrupted", callbacks=[StopAt(3)])
    checkpoint = tmp_path / "interrupted" / "checkpoint-3"
    assert interrupted.state.global_step == 3 and checkpoint.is_dir()
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["quantization_config"]["checkpoint_form"] == "latent"
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as tensors:
        assert tensors.get_tensor("model.layers.0.self_attn.q_proj.weight").is_floating_point()

    resumed, student = run("interrupted", resume=str(checkpoint))
    full_logs = {entry["step"]: entry for entry in train_logs(uninterrupted)}
    for entry in train_logs(resumed):
        for key in ("loss", "kd_logits", "kd_hidden"):
            assert entry[key] == pytest.approx(full_logs[entry["step"]][key], rel=1e-5), (entry["step"], key)
    # Steps 1-3 come back from the checkpoint's trainer state, 4-6 were computed after resuming.
    assert [entry["step"] for entry in train_logs(resumed)] == [1, 2, 3, 4, 5, 6]
    for (name, expected), actual in zip(
        reference.state_dict().items(), student.state_dict().values(), strict=True
    ):
        assert torch.allclose(expected, actual, atol=1e-6), name

    # The final save is packed: 1-bit signs, and it reloads to the same function.
    final = tmp_path / "final"
    resumed.save_model(str(final))
    config = json.loads((final / "config.json").read_text())
    assert config["quantization_config"]["checkpoint_form"] == "packed"
    with safe_open(str(final / "model.safetensors"), framework="pt") as tensors:
        assert tensors.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.uint8
    packed = AutoModelForCausalLM.from_pretrained(final)
    tokens = random_blocks(2, seed=3).blocks
    with torch.no_grad():
        assert torch.allclose(packed(tokens).logits, student(tokens).logits, atol=1e-5)


def test_a_process_that_does_not_write_saves_nothing(tmp_path, monkeypatch):
    """Under torchrun every rank calls save_model; only the writing one may touch the folder (no model card race)."""
    teacher, student = tiny_pair()
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=tiny_args(tmp_path), train_dataset=random_blocks()
    )
    monkeypatch.setattr(type(trainer.args), "should_save", property(lambda args: False))
    trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()


def test_hidden_state_tap_matches_output_hidden_states_under_checkpointing():
    _, student = tiny_pair()
    student.train()
    getattr(student, f"{CHECKPOINTING}_enable")()
    tokens = random_blocks(2).blocks
    with HiddenStateTap(student, [0, 1]) as tap:
        outputs = student(tokens, output_hidden_states=True)
    states = tap.states()
    for index, state in enumerate(states):
        assert torch.equal(state, outputs.hidden_states[index + 1]) and state.requires_grad
    sum(state.sum() for state in states).backward()  # a recomputation in backward must not record again
    assert tap._collected == {}


def test_binarymos_trainable_parameters_on_a_onebit_student():
    _, student = tiny_pair(num_experts=1)
    count = binarymos_trainable_parameters(student)
    names = {name for name, param in student.named_parameters() if param.requires_grad}
    assert all(".mlp." in name or ".self_attn." in name for name in names)
    assert not any("router" in name for name in names) and count.trainable == sum(
        p.numel() for p in student.parameters() if p.requires_grad
    )


def test_a_ternary_student_distills_with_the_cosine_feature_loss(tmp_path):
    import optimum_binarymos.ternary_config as ternary
    teacher = make_float_model("llama")
    torch.manual_seed(0)
    student = convert_model(copy.deepcopy(teacher), ternary.TernaryConfig())
    args = tiny_args(
        tmp_path, kd_hidden_loss="cosine", kd_hidden_weight=1.0, save_strategy="steps", save_steps=2
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=random_blocks()
    )
    assert trainer.trainable_count.layers == 14
    trainer.train()
    assert all(math.isfinite(entry["loss"]) for entry in train_logs(trainer))
    checkpoint = json.loads((tmp_path / "out" / "checkpoint-2" / "config.json").read_text())
    assert checkpoint["quantization_config"]["checkpoint_form"] == "latent"
    trainer.save_model(str(tmp_path / "final"))
    final = json.loads((tmp_path / "final" / "config.json").read_text())
    assert final["quantization_config"]["checkpoint_form"] == "packed"


def test_teacher_deepspeed_config_drops_the_optimizer_and_keeps_zero3_partitioning():
    import types

    from optimum_binarymos.distill.teacher import _teacher_deepspeed_config

    student_config = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "bf16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
        "scheduler": {"type": "WarmupLR"},
        "zero_optimization": {
            "stage": 3,
            "reduce_bucket_size": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    }
    teacher_config = _teacher_deepspeed_config(student_config, types.SimpleNamespace(mixed_precision="bf16"))
    assert teacher_config == {
        "train_micro_batch_size_per_gpu": 1,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
    }
    assert student_config["optimizer"]["type"] == "AdamW"  # the student's config is left alone
    below_three = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2}}
    assert _teacher_deepspeed_config(below_three, types.SimpleNamespace(mixed_precision="no"))[
        "zero_optimization"
    ] == {"stage": 0}


# ---- example script ---------------------------------------------------------------------------------------


def test_example_script_distills_text_files_and_saves_a_packed_model(tmp_path, monkeypatch):
    words = "the cat sat on a mat and ran to its hat".split()
    folder = tmp_path / "tiny"
    make_float_model("llama").save_pretrained(folder)
    word_tokenizer(words).save_pretrained(folder)
    for index in range(2):
        (tmp_path / f"part{index}.txt").write_text(" ".join(words[index:] + words[:index]) * 20 + "\n")
    spec = importlib.util.spec_from_file_location("distill_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # dataclasses look their module up there
    spec.loader.exec_module(example)
    final = example.main(
        [
            "--model_name_or_path", str(folder),
            "--train-files", str(tmp_path / "part0.txt"), str(tmp_path / "part1.txt"),
            "--block-size", "16",
            "--num-experts", "2",
            "--eval_blocks", "2",
            "--dtype", "float32",
            "--output_dir", str(tmp_path / "run"),
            "--max_steps", "2",
            "--per_device_train_batch_size", "2",
            "--save_strategy", "no",
            "--disable_tqdm", "true",
            "--dataloader_pin_memory", "false",
        ]
    )  # fmt: skip
    config = json.loads((Path(final) / "config.json").read_text())
    assert config["quantization_config"]["checkpoint_form"] == "packed"
    assert config["quantization_config"]["num_experts"] == 2
    assert (Path(final) / "tokenizer.json").is_file()


def test_scales_learning_rate_puts_scales_and_routers_in_their_own_groups(tmp_path):
    teacher, student = tiny_pair()
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=tiny_args(tmp_path, scales_learning_rate=7e-3),
        train_dataset=random_blocks(),
    )
    optimizer = trainer.create_optimizer()
    lr_of = {id(param): group["lr"] for group in optimizer.param_groups for param in group["params"]}
    layer = student.model.layers[0].mlp.up_proj
    assert lr_of[id(layer.weight)] == 1e-3
    assert lr_of[id(layer.scale_in)] == lr_of[id(layer.scale_out)] == lr_of[id(layer.router_weight)] == 7e-3
    trainable = [param for param in student.parameters() if param.requires_grad]
    assert sorted(map(id, trainable)) == sorted(lr_of)  # every trainable parameter once, nothing else

    same = DistillationTrainer(
        model=student, teacher_model=teacher, args=tiny_args(tmp_path, scales_learning_rate=None),
        train_dataset=random_blocks(),
    )
    assert {group["lr"] for group in same.create_optimizer().param_groups} == {1e-3}


def test_frozen_latent_weights_keep_the_signs_and_train_only_quantizer_parameters(tmp_path):
    teacher, student = tiny_pair()
    layer = student.model.layers[0].mlp.up_proj
    weight, scale_out = layer.weight.detach().clone(), layer.scale_out.detach().clone()
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=tiny_args(tmp_path, train_latent_weights=False),
        train_dataset=random_blocks(),
    )
    assert not layer.weight.requires_grad and layer.scale_out.requires_grad
    trainer.train()
    assert torch.equal(layer.weight, weight) and not torch.equal(layer.scale_out, scale_out)
    with pytest.raises(ValueError, match="train_latent_weights=False needs train_binarymos_only"):
        tiny_args(tmp_path, train_latent_weights=False, train_binarymos_only=False)


def test_trainer_loss_equals_kl_teacher_to_student_plus_the_hidden_distance_written_out(tmp_path):
    teacher, student = tiny_pair()
    with torch.no_grad():  # a student whose outputs differ from the teacher's in every layer
        for module in student.modules():
            if isinstance(module, BinaryMoSLinear):
                module.scale_out.mul_(1.5)
        student.model.norm.weight.mul_(20.0)  # sharp next-token distributions: the KL direction matters
    args = tiny_args(
        tmp_path, kd_logits_weight=0.7, kd_hidden_weight=0.3, kd_hidden_loss="normalized_mse",
        kd_hidden_layers=[0, 1], kd_logits_reduction="token_mean",
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=random_blocks())
    tokens = random_blocks(2).blocks
    student.train()
    with torch.no_grad():
        loss = trainer.compute_loss(student, {"input_ids": tokens})
        t = teacher(tokens, output_hidden_states=True)
        s = student(tokens, output_hidden_states=True)
    # KL(teacher || student) = sum_v p_t (log p_t - log p_s), averaged over the tokens.
    log_t, log_s = t.logits.log_softmax(-1), s.logits.log_softmax(-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    # OneBit's distance: squared distance of the per-token unit vectors, summed over the tapped layers' outputs.
    unit = lambda h: h / h.norm(dim=-1, keepdim=True)  # noqa: E731
    hidden = sum(((unit(s.hidden_states[i]) - unit(t.hidden_states[i])) ** 2).sum(-1).mean() for i in (1, 2))
    reverse = (log_s.exp() * (log_s - log_t)).sum(-1).mean()
    assert kl > 0 and hidden > 0 and not torch.isclose(kl, reverse, rtol=0.1)  # the direction is visible
    torch.testing.assert_close(loss, 0.7 * kl + 0.3 * hidden, rtol=1e-5, atol=1e-6)
