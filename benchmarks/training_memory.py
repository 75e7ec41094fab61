"""Memory autograd holds from forward to backward in one distillation step, and the step's time: the layers as
they are (each dense quantized weight made again in backward) against plain autograd (which keeps it).

Plain autograd on ``F.linear(x, quantize(W))`` keeps the dense ``sign(W)`` (or ``alpha * T + gamma``) of every
layer until backward: one extra dense copy of every decoder weight, the size of the float model. The layers
instead keep only what the weight is made from (:mod:`optimum_binarymos.recompute`). This script measures, for
the same students and batch:

* ``held``: bytes of every tensor autograd saved during the student's forward through the distillation loss
  (``torch.autograd.graph.saved_tensors_hooks``), each storage counted once, parameters and buffers left out
  (they live anyway) -- the activation memory of the step;
* ``step``: median time of a whole step (teacher forward, student forward and backward, AdamW), the two forms
  taking turns so that a slow spell of the machine hits both alike;
* one decoder linear alone, forward + backward, in both forms, with the time of one ``sign(W)`` (the extra work
  of the recomputed form).

Students, all from one random LLaMA teacher (:mod:`distill_step`'s shape): OneBit (BinaryMoS, 1 expert),
BinaryMoS (4 experts), ternary, and LoRA adapters (r=16) over the packed BinaryMoS model, where plain autograd
keeps every unpacked sign matrix. The plain form is the layers under
:func:`~optimum_binarymos.recompute.keep_quantized_weights` (the weight built in forward and handed to
``F.linear``).

Run from the repository root::

    python benchmarks/training_memory.py --output benchmarks/results/training_memory-cpu.md
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from distill_step import (
    add_model_arguments,
    build_teacher,
    decoder_linear_shapes,
    emit,
    interleaved_medians,
    make_step,
    step_inputs,
)
from peft import LoraConfig, get_peft_model
from torch import nn

from optimum_binarymos import BinaryMoSConfig, BinaryMoSLinear, TernaryConfig, convert_model, pack_model
from optimum_binarymos.distill import DistillationObjective, binarymos_trainable_parameters
from optimum_binarymos.integrations.peft import lora_target_modules, register_lora_layers
from optimum_binarymos.packing import sign_with_ties
from optimum_binarymos.recompute import keep_quantized_weights


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per student and form")
    parser.add_argument("--warmup", type=int, default=1)
    return parser.parse_args(argv)


def held_bytes(student: nn.Module, teacher: nn.Module, batch: dict, objective: DistillationObjective) -> int:
    """Bytes saved for backward by the student's forward through the loss (parameters and buffers left out)."""
    resident = {tensor.untyped_storage().data_ptr() for tensor in [*student.parameters(), *student.buffers()]}
    # Holding the storages until counted keeps a freed address from being reused by a later one.
    storages: dict[int, torch.UntypedStorage] = {}

    def count(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in resident:
            storages[storage.data_ptr()] = storage
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        loss, _, _ = objective(student, teacher, batch)
    loss.backward()
    student.zero_grad(set_to_none=True)
    return sum(storage.nbytes() for storage in storages.values())


def students(teacher: nn.Module) -> dict[str, nn.Module]:
    built = {}
    for name, config in (
        ("OneBit (1 expert)", BinaryMoSConfig(num_experts=1)),
        ("BinaryMoS (4 experts)", BinaryMoSConfig(num_experts=4)),
        ("ternary (group 128)", TernaryConfig()),
    ):
        student = convert_model(copy.deepcopy(teacher), config).train()
        binarymos_trainable_parameters(student)
        built[name] = student
    packed = pack_model(copy.deepcopy(built["BinaryMoS (4 experts)"])).requires_grad_(False)
    lora = register_lora_layers(LoraConfig(r=16, lora_alpha=32, target_modules=lora_target_modules(packed)))
    built["LoRA r=16 over packed BinaryMoS"] = get_peft_model(packed, lora).train()
    return built


def dense_weight_bytes(teacher: nn.Module) -> int:
    """Bytes of the decoder linears' weights in the teacher's dtype: what plain autograd keeps on top."""
    return sum(
        module.weight.numel() * module.weight.element_size()
        for name, module in teacher.named_modules()
        if isinstance(module, nn.Linear) and "lm_head" not in name
    )


def one_linear(shapes: list[tuple[int, int]], tokens: int, repeats: int) -> list[str]:
    """Forward + backward of one latent BinaryMoS linear (4 experts) alone, plain vs recomputed."""
    lines = [
        "",
        f"One BinaryMoS linear (4 experts), forward + backward, {tokens} tokens, median of {repeats}:",
        "",
        "| in x out | plain (ms) | recomputed (ms) | recomputed / plain | sign(W) alone (ms) |",
        "|---|---|---|---|---|",
    ]
    for in_features, out_features in shapes:
        layer = BinaryMoSLinear.from_float(torch.randn(out_features, in_features), num_experts=4)
        x = torch.randn(tokens, in_features, requires_grad=True)

        def recomputed(layer: nn.Module = layer, x: torch.Tensor = x) -> None:
            layer(x).sum().backward()

        def plain(recomputed: Callable[[], None] = recomputed) -> None:
            with keep_quantized_weights():
                recomputed()

        weight = layer.weight.detach()
        times = interleaved_medians(
            [plain, recomputed, lambda w=weight: sign_with_ties(w)], repeats, warmup=3
        )
        lines.append(
            f"| {in_features} x {out_features} | {1000 * times[0]:.2f} | {1000 * times[1]:.2f} "
            f"| {times[1] / times[0]:.3f} | {1000 * times[2]:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    teacher = build_teacher(args)
    batch, objective = step_inputs(args)
    mib = 2**20
    lines = [
        f"LLaMA shape: hidden {args.hidden_size}, intermediate {args.intermediate_size}, {args.layers} layers, "
        f"vocabulary {args.vocab_size}; batch {args.batch_size} x {args.seq_len} tokens; float32, "
        f"{torch.get_num_threads()} threads; KL + 10 x MSE on every layer; median of {args.repeats} steps. "
        f"Dense decoder weights: {dense_weight_bytes(teacher) / mib:.1f} MiB.",
        "",
        "| student | held, plain autograd (MiB) | held, recomputed (MiB) | held: recomputed / plain "
        "| step, plain (ms) | step, recomputed (ms) | step: recomputed / plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, student in students(teacher).items():
        with keep_quantized_weights():
            plain_held = held_bytes(student, teacher, batch, objective)
        held = held_bytes(student, teacher, batch, objective)
        step = make_step(student, teacher, batch, objective)

        def plain_step(step: Callable[[], None] = step) -> None:
            with keep_quantized_weights():
                step()

        plain_time, time = interleaved_medians([plain_step, step], args.repeats, args.warmup)
        lines.append(
            f"| {name} | {plain_held / mib:.1f} | {held / mib:.1f} | {held / plain_held:.3f} "
            f"| {1000 * plain_time:.0f} | {1000 * time:.0f} | {time / plain_time:.3f} |"
        )
        print(lines[-1], flush=True)
    lines += one_linear(decoder_linear_shapes(args), args.batch_size * args.seq_len, repeats=30)
    return emit("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
