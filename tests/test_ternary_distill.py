"""Distilling a ternary (DLT) student from its float teacher with the OFF loss (cosine hidden states + KL)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_llama_config
from transformers import AutoModelForCausalLM

import optimum_binarymos.ternary_quantizer  # noqa: F401  registers "binarymos_ternary" with transformers
from optimum_binarymos import TernaryConfig, convert_model
from optimum_binarymos.distill import DistillationConfig, DistillationTrainer, TokenBlocks, logits_kl_loss
from optimum_binarymos.nn.ternary import TernaryLinear

VOCAB = 96


pytestmark = pytest.mark.usefixtures("one_thread")


def markov_blocks(successors: torch.Tensor, count: int, length: int, seed: int) -> torch.Tensor:
    """Token blocks with structure: each token is followed by one of a few fixed successors."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.empty(count, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, VOCAB, (count,), generator=generator)
    for position in range(1, length):
        choice = torch.randint(0, successors.shape[1], (count,), generator=generator)
        tokens[:, position] = successors[tokens[:, position - 1], choice]
    return tokens


def train_only_ternary_layers(model: torch.nn.Module) -> int:
    """Freeze everything but the ternary layers (latent weights, scales, shifts, biases), as in the paper."""
    model.requires_grad_(False)
    trainable = 0
    for module in model.modules():
        if isinstance(module, TernaryLinear):
            module.requires_grad_(True)
            trainable += sum(p.numel() for p in module.parameters())
    return trainable


def test_40_off_distillation_steps_lower_held_out_kl_by_at_least_10_percent(tmp_path):
    successors = torch.randint(0, VOCAB, (VOCAB, 3), generator=torch.Generator().manual_seed(123))
    torch.manual_seed(0)
    config = tiny_llama_config(intermediate_size=128)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(10.0)  # peaked, context-dependent teacher distributions, not near-uniform
    student = convert_model(copy.deepcopy(teacher), TernaryConfig(group_size=32))
    assert student.hf_quantizer.is_trainable and student.hf_quantizer.is_qat_trainable
    assert train_only_ternary_layers(student) > 0
    train = markov_blocks(successors, 64, 32, seed=1)
    held_out = markov_blocks(successors, 16, 32, seed=2)

    def held_out_kl() -> float:
        with torch.no_grad():
            return logits_kl_loss(
                student(held_out).logits, teacher(held_out).logits, reduction="token_mean"
            ).item()

    before = held_out_kl()
    args = DistillationConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=40,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        warmup_steps=0,
        kd_hidden_loss="cosine",  # TernaryLLM's OFF: 1 - cos(h_s, h_t) per token, every decoder layer
        kd_hidden_weight=1.0,
        kd_logits_weight=1.0,
        train_binarymos_only=False,  # the ternary layers were selected above
        logging_steps=20,
        save_strategy="no",
        disable_tqdm=True,
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_pin_memory=False,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=TokenBlocks(train)
    )
    trainer.train()
    after = held_out_kl()
    print(
        f"held-out KL(teacher || ternary student): {before:.4f} -> {after:.4f} ({1 - after / before:.1%} lower)"
    )
    assert after <= 0.9 * before, (before, after)
    logged = [entry for entry in trainer.state.log_history if "kd_hidden" in entry]
    # Each layer's OFF term lies in [0, 2]; they are summed over the decoder layers.
    assert logged and all(0 <= entry["kd_hidden"] <= 2 * config.num_hidden_layers for entry in logged)
