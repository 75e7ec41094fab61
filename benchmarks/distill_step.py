"""Time of one knowledge-distillation step: BinaryMoS (4 experts) against a float student and OneBit (1 expert).

One step is what ``DistillationTrainer`` does per batch: the frozen float teacher's forward (no gradients), the
student's forward and backward through the distillation loss (KL on logits + 10 x MSE on every decoder layer's
hidden state, :class:`~optimum_binarymos.distill.DistillationObjective`), and an AdamW step. The three students
come from the same random LLaMA teacher and train the same parameters (the decoder linears; for BinaryMoS also
their scales and router), with embeddings, norms and ``lm_head`` frozen. Everything is float32 on CPU.

Each figure is the median of ``--repeats`` timed steps after ``--warmup`` untimed ones; the students take turns
step by step, so that a slow spell of the machine hits all of them alike. Ratios are taken within the run.
``--profile`` also prints where a BinaryMoS step spends its time (``torch.profiler``) and times one decoder
linear alone (forward + backward) in each form.

Run from the repository root::

    python benchmarks/distill_step.py --output benchmarks/results/distill_step-cpu.md
    python benchmarks/distill_step.py --hidden-size 1024 --layers 2 --seq-len 512 --profile
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM

from optimum_binarymos import BinaryMoSConfig, BinaryMoSLinear, convert_model
from optimum_binarymos.distill import DistillationObjective, binarymos_trainable_parameters
from optimum_binarymos.distill.hidden import decoder_layers
from optimum_binarymos.recompute import keep_quantized_weights

#: Goals: BinaryMoS step time over the float student's, and over OneBit's.
GOALS = {"float": 1.3, "onebit": 1.1}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The teacher's shape, the batch, the seed, the threads and ``--output``: what every step benchmark takes."""
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--intermediate-size", type=int, default=1376, help="MLP width (LLaMA ratio: 2.6875)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--heads", type=int, default=8, help="attention heads (and key/value heads)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table here")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--num-experts", type=int, default=4, help="experts of the BinaryMoS student")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per student")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per student first")
    parser.add_argument("--profile", action="store_true", help="also profile a BinaryMoS step and one linear")
    parser.add_argument(
        "--keep-quantized-weights",
        action="store_true",
        help="run under optimum_binarymos.recompute.keep_quantized_weights (faster, one more dense weight copy)",
    )
    return parser.parse_args(argv)


def build_teacher(args: argparse.Namespace) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.seq_len, 128),
        tie_word_embeddings=False,
    )
    torch.manual_seed(args.seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval().requires_grad_(False)


def step_inputs(args: argparse.Namespace) -> tuple[dict, DistillationObjective]:
    """A random batch and the objective of a step: KL on logits + 10 x MSE on every layer's hidden state."""
    generator = torch.Generator().manual_seed(args.seed)
    batch = {
        "input_ids": torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=generator)
    }
    objective = DistillationObjective(
        logits_weight=1.0, hidden_weight=10.0, hidden_loss="mse", hidden_layers=tuple(range(args.layers))
    )
    return batch, objective


def decoder_linear_shapes(args: argparse.Namespace) -> list[tuple[int, int]]:
    """``(in, out)`` of a decoder layer's linears: attention, MLP up/gate, MLP down."""
    return [
        (args.hidden_size, args.hidden_size),
        (args.hidden_size, args.intermediate_size),
        (args.intermediate_size, args.hidden_size),
    ]


def emit(table: str, output: Path | None) -> str:
    """Print the markdown ``table`` and write it to ``output`` when given."""
    print(table)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(table + "\n")
    return table


def float_student(teacher: nn.Module) -> nn.Module:
    """The teacher's copy training the same linears BinaryMoS binarizes (decoder linears), the rest frozen."""
    student = copy.deepcopy(teacher).train().requires_grad_(False)
    for layer in decoder_layers(student):
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                module.requires_grad_(True)
    return student


def binarymos_student(teacher: nn.Module, num_experts: int) -> nn.Module:
    student = convert_model(copy.deepcopy(teacher), BinaryMoSConfig(num_experts=num_experts)).train()
    binarymos_trainable_parameters(student)
    return student


def make_step(student: nn.Module, teacher: nn.Module, batch: dict, objective) -> Callable[[], None]:
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=2e-5, betas=(0.9, 0.999), weight_decay=0.0, foreach=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = objective(student, teacher, batch)
        loss.backward()
        optimizer.step()

    return step


def interleaved_medians(functions: list[Callable[[], object]], repeats: int, warmup: int) -> list[float]:
    """Median seconds per call of each function, calling them in turn within every repeat."""
    for _ in range(warmup):
        for function in functions:
            function()
    timings: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, samples in zip(functions, timings, strict=True):
            start = time.perf_counter()
            function()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in timings]


def profile(step: Callable[[], None], linear_shapes: list[tuple[int, int]], tokens: int, experts: int) -> str:
    """Top operators of one BinaryMoS step, and one linear alone in each form."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    lines = ["", "Top operators of one BinaryMoS step (self CPU time):", "", "```"]
    lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    lines.append("```")
    lines += ["", "One linear, forward + backward, milliseconds (median of 20):", ""]
    lines.append("| shape (in x out) | float | BinaryMoS E=1 | BinaryMoS E=" + f"{experts} |")
    lines.append("|---|---|---|---|")
    for in_features, out_features in linear_shapes:
        x = torch.randn(tokens, in_features, requires_grad=True)
        dense = nn.Linear(in_features, out_features, bias=False)
        onebit = BinaryMoSLinear.from_float(dense.weight.detach(), num_experts=1)
        mos = BinaryMoSLinear.from_float(dense.weight.detach(), num_experts=experts)

        def run(layer: nn.Module, x: torch.Tensor = x) -> Callable[[], None]:
            def call() -> None:
                layer(x).sum().backward()

            return call

        times = interleaved_medians([run(dense), run(onebit), run(mos)], repeats=20, warmup=3)
        row = " | ".join(f"{1000 * t:.2f}" for t in times)
        lines.append(f"| {in_features} x {out_features} | {row} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.keep_quantized_weights:
        with keep_quantized_weights():
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> str:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    teacher = build_teacher(args)
    batch, objective = step_inputs(args)
    students = {
        "float": float_student(teacher),
        "onebit": binarymos_student(teacher, 1),
        "binarymos": binarymos_student(teacher, args.num_experts),
    }
    steps = [make_step(student, teacher, batch, objective) for student in students.values()]
    medians = dict(zip(students, interleaved_medians(steps, args.repeats, args.warmup), strict=True))

    mos, flt, one = medians["binarymos"], medians["float"], medians["onebit"]
    title = (
        f"LLaMA shape: hidden {args.hidden_size}, intermediate {args.intermediate_size}, {args.layers} layers, "
        f"{args.heads} heads, vocabulary {args.vocab_size}; batch {args.batch_size} x {args.seq_len} tokens; "
        f"float32, {torch.get_num_threads()} threads; median of {args.repeats} steps; quantized weights "
        f"{'kept for' if args.keep_quantized_weights else 'made again in'} backward"
    )
    lines = [
        title,
        "",
        "| student | step (ms) | BinaryMoS / this |",
        "|---|---|---|",
        f"| float (decoder linears train) | {1000 * flt:.1f} | {mos / flt:.3f} |",
        f"| OneBit (BinaryMoS, 1 expert) | {1000 * one:.1f} | {mos / one:.3f} |",
        f"| BinaryMoS ({args.num_experts} experts) | {1000 * mos:.1f} | 1.000 |",
        "",
        f"Goals: BinaryMoS / float <= {GOALS['float']} ({'met' if mos / flt <= GOALS['float'] else 'NOT met'}), "
        f"BinaryMoS / OneBit <= {GOALS['onebit']} ({'met' if mos / one <= GOALS['onebit'] else 'NOT met'}).",
    ]
    if args.profile:
        shapes = decoder_linear_shapes(args)
        lines.append(profile(steps[2], shapes, args.batch_size * args.seq_len, args.num_experts))
    return emit("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
