"""What ``embedding_bits=8`` and ``embedding_bits=4`` cost in quality and buy in size and speed on SmolLM2-135M, in
one run.

Size: whole-model bytes in float16 and as packed checkpoints (OneBit, BinaryMoS E=4, ternary) with float, 8-bit
and 4-bit embeddings and ``lm_head``, from the model's shapes (:func:`optimum_binarymos.estimate_footprint`, which
counts exactly what ``save_pretrained`` writes with bfloat16 float parts; ``tests/test_embeddings8.py`` and
``tests/test_embeddings4.py`` check it against a written file).

Quality: the quantized tables on their own, on the real float model. SmolLM2-135M in float32 is evaluated as it is
and with only its input embeddings and (tied) ``lm_head`` replaced by their 8-bit or 4-bit layers
(:func:`optimum_binarymos.methods.embeddings.quantize_embeddings`, what ``embedding_bits`` does at conversion),
on the demo's evaluation text (State of the Union addresses from 2000 on, ``--eval-windows`` windows of
``--seq-len`` tokens, the GPTQ protocol). The 1-bit layers are left out of this measurement on purpose: an
undistilled 1-bit model has a perplexity near 1e6, where a change from the embeddings cannot be read.

Speed: the head's product for one float32 token (what every decoded token pays), ``lm_head`` as a float32
``F.linear`` against ``optimum_binarymos::int8_linear`` and ``::int4_linear`` on the same weights, at 1 and 2 torch
threads, in alternating rounds (median of ``--rounds`` rounds of ``--repeats`` calls each).

Run from the repository root::

    python benchmarks/embedding_bits.py --output benchmarks/results/embedding_bits-cpu.md
    python benchmarks/embedding_bits.py --tiny   # smoke run: random 2-layer model, random token ids
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import optimum_binarymos
from optimum_binarymos import BinaryMoSConfig, TernaryConfig, estimate_footprint
from optimum_binarymos.eval.windows import tokenize_text
from optimum_binarymos.experiment import evaluate_perplexity
from optimum_binarymos.footprint import format_bytes
from optimum_binarymos.hardware import cpu_info
from optimum_binarymos.kernels import ops
from optimum_binarymos.methods.embeddings import quantize_embeddings
from optimum_binarymos.packing import GROUP4_SIZE, groups4_count, quantize_groups4, quantize_rows

REPOSITORY = Path(__file__).resolve().parents[1]

METHODS = {
    "OneBit": lambda bits: BinaryMoSConfig(num_experts=1, embedding_bits=bits),
    "BinaryMoS E=4": lambda bits: BinaryMoSConfig(num_experts=4, embedding_bits=bits),
    "ternary (2bit codes, group 128)": lambda bits: TernaryConfig(embedding_bits=bits),
}

#: Characters at the end of the training text used as the validation split.
VALIDATION_CHARS = 400_000

#: ``embedding_bits`` values compared, and how the tables read.
BITS = {None: "bfloat16", 8: "8-bit rows", 4: "4-bit groups of 32"}


def max_over_7_groups4(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` through 4-bit groups of 32 with the plain scale ``max |W| / 7`` (values -7..7): the baseline of
    the scale search."""
    rows, columns = weight.shape
    wide = F.pad(weight.float(), (0, groups4_count(columns) * GROUP4_SIZE - columns)).view(rows, -1, GROUP4_SIZE)
    scale = (wide.abs().amax(2, keepdim=True) / 7).to(weight.dtype).float()
    values = torch.where(scale > 0, wide / scale.clamp_min(torch.finfo(torch.float32).tiny), 0.0).round().clamp(-7, 7)
    return (values * scale).view(rows, -1)[:, :columns].to(weight.dtype)


def relative_change(value: float, baseline: float) -> str:
    """``value`` against ``baseline`` as a signed percentage."""
    return f"{100 * (value / baseline - 1):+.2f} %"


def time_heads(weight: torch.Tensor, threads: int, rounds: int, repeats: int) -> dict[str, float]:
    """Median microseconds per one-token head product for each layout, rounds alternating between them."""
    codes8, scale8 = quantize_rows(weight)
    codes4, scale4 = quantize_groups4(weight)
    x = torch.randn(1, weight.shape[1])
    products = {
        "float32 F.linear": lambda: F.linear(x, weight),
        "int8 rows": lambda: ops.int8_linear(x, codes8, scale8, None),
        "int4 groups": lambda: ops.int4_linear(x, codes4, scale4, None),
    }
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples: dict[str, list[float]] = {name: [] for name in products}
    try:
        with torch.no_grad():
            for product in products.values():
                product()  # warm-up (compiles the native kernels once)
            for _ in range(rounds):
                for name, product in products.items():
                    start = time.perf_counter()
                    for _ in range(repeats):
                        product()
                    samples[name].append((time.perf_counter() - start) / repeats * 1e6)
    finally:
        torch.set_num_threads(previous)
    return {name: sorted(times)[len(times) // 2] for name, times in samples.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="float HF folder (default: the demo's SmolLM2)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15, help="alternating timing rounds of the head products")
    parser.add_argument("--repeats", type=int, default=50, help="calls per layout per round")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="random 2-layer SmolLM2 shapes and random ids (smoke run)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tiny:
        from peers_cpu import SMOLLM2_CONFIG

        folder = Path("random-2-layer-smollm2-shapes")
        config = transformers.LlamaConfig(**{**SMOLLM2_CONFIG, "num_hidden_layers": 2})
    else:
        sys.path.insert(0, str(REPOSITORY / "examples"))
        from demo_assets import smollm2_path

        folder = args.model_dir or smollm2_path()
        config = AutoConfig.from_pretrained(folder)
    sizes = []
    float16 = None
    for name, make in METHODS.items():
        for bits in BITS:
            footprint = estimate_footprint(config, make(bits))
            float16 = footprint.float16_bytes
            sizes.append((name, bits, footprint.packed_bytes, footprint.ratio))

    if args.tiny:
        torch.manual_seed(0)
        eval_ids = torch.randint(0, config.vocab_size, (args.seq_len * args.eval_windows,))
        validation_ids = torch.randint(0, config.vocab_size, (args.seq_len * args.eval_windows,))
        model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    else:
        from demo_assets.sotu import sotu_split

        train_text, eval_text = sotu_split()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        eval_ids = tokenize_text(tokenizer, eval_text)
        validation_ids = tokenize_text(tokenizer, train_text[-VALIDATION_CHARS:])
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    head_weight = model.get_output_embeddings().weight.detach().float().contiguous()
    timings = {threads: time_heads(head_weight, threads, args.rounds, args.repeats) for threads in (1, 2)}

    start = time.perf_counter()
    perplexities = {None: evaluate_perplexity(model, eval_ids, seq_len=args.seq_len, max_windows=args.eval_windows)}
    for bits in (8, 4):
        quantized = copy.deepcopy(model)
        quantize_embeddings(quantized, bits=bits)
        perplexities[bits] = evaluate_perplexity(
            quantized, eval_ids, seq_len=args.seq_len, max_windows=args.eval_windows
        )
        del quantized
    seconds = time.perf_counter() - start
    float_ppl = perplexities[None]

    def perplexity(candidate: torch.nn.Module, ids: torch.Tensor) -> float:
        return evaluate_perplexity(candidate, ids, seq_len=args.seq_len, max_windows=args.eval_windows)

    # The 4-bit scale choice, decided on text cut from the training side (never on the evaluation text).
    plain = copy.deepcopy(model)
    with torch.no_grad():
        for module in {plain.get_input_embeddings(), plain.get_output_embeddings()}:
            module.weight.copy_(max_over_7_groups4(module.weight))
    searched = copy.deepcopy(model)
    quantize_embeddings(searched, bits=4)
    validation = {
        "float32": perplexity(model, validation_ids),
        "4-bit, scale max abs(W) / 7 per group": perplexity(plain, validation_ids),
        "4-bit, scale searched and refitted (what `embedding_bits=4` writes)": perplexity(searched, validation_ids),
    }
    del plain, searched

    lines = [
        "# 8-bit and 4-bit embeddings and `lm_head` on SmolLM2-135M-Instruct (`benchmarks/embedding_bits.py`)",
        "",
        f"- Model: `{folder.name}` (the demo's folder); vocabulary {config.vocab_size} x hidden {config.hidden_size}, "
        f"tied head: {config.tie_word_embeddings}.",
        f"- Machine: `lscpu` {cpu_info()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads. "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"optimum-binarymos {optimum_binarymos.__version__}.",
        f"- Date: {datetime.date.today().isoformat()}. Command: `python benchmarks/embedding_bits.py "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}`.",
        "",
        "## Whole-model size (bfloat16 float parts, as `save_pretrained` writes them)",
        "",
        f"float16 model: {format_bytes(float16)}.",
        "",
        "| packed model | embeddings and `lm_head` | bytes | smaller than float16 |",
        "|---|---|---|---|",
        *(
            f"| {name} | {BITS[bits]} | {format_bytes(size)} | {ratio:.2f}x |"
            for name, bits, size, ratio in sizes
        ),
        "",
        "## Perplexity change from the quantized tables alone (float32 model, everything else float)",
        "",
        f"Evaluation: the demo's text (State of the Union addresses from 2000 on), {args.eval_windows} windows of "
        f"{args.seq_len} tokens; the three rows in {seconds:.0f} s.",
        "",
        "| model | perplexity | change |",
        "|---|---|---|",
        f"| SmolLM2-135M float32 | {float_ppl:.3f} | |",
        *(
            f"| same, embeddings and tied `lm_head` as {BITS[bits]} | {perplexities[bits]:.3f} | "
            f"{100 * (perplexities[bits] / float_ppl - 1):+.2f} % |"
            for bits in (8, 4)
        ),
        "",
        "## Choosing the 4-bit scale (validation split: the last "
        f"{VALIDATION_CHARS // 1000} kB of the training text, {args.eval_windows} windows of {args.seq_len} tokens)",
        "",
        "| tables | validation perplexity | change |",
        "|---|---|---|",
        *(
            f"| {name} | {ppl:.3f} | {relative_change(ppl, validation['float32']) if name != 'float32' else ''} |"
            for name, ppl in validation.items()
        ),
        "",
        f"## One-token `lm_head` product ({head_weight.shape[0]} x {head_weight.shape[1]}, float32 activations)",
        "",
        f"Median of {args.rounds} alternating rounds of {args.repeats} calls per layout, microseconds per call.",
        "",
        "| torch threads | " + " | ".join(timings[1]) + " | int8 / float32 | int4 / float32 | int4 / int8 |",
        "|---|" + "---|" * (len(timings[1]) + 3),
        *(
            f"| {threads} | "
            + " | ".join(f"{us:.0f}" for us in row.values())
            + f" | {row['float32 F.linear'] / row['int8 rows']:.2f}x faster"
            f" | {row['float32 F.linear'] / row['int4 groups']:.2f}x faster"
            f" | {row['int4 groups'] / row['int8 rows']:.2f} of the time |"
            for threads, row in timings.items()
        ),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.output is not None:
        args.output.write_text(report)
        record = {
            "float16_bytes": float16,
            "sizes": sizes,
            "perplexity": {str(bits): ppl for bits, ppl in perplexities.items()},
            "validation_perplexity": validation,
            "head_microseconds": timings,
        }
        args.output.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
