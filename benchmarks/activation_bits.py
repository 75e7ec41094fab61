"""What ``activation_bits=8`` costs in quality on a packed model, and what it changes in its outputs, in one run.

A packed checkpoint (by default the demo's distilled SmolLM2-135M BinaryMoS, ``demo_out/binarymos``) is loaded once
and evaluated with float activations and with the scaled activations of every packed layer rounded to int8 per
token (:func:`optimum_binarymos.kernels.set_activation_bits`). Perplexity by the GPTQ protocol on a validation split
cut from the end of the training text (State of the Union addresses before 2000, the split the demo trains on) and
on the demo's evaluation text (addresses from 2000 on); the agreement of the two settings' next-token logits on the
first evaluation window (largest difference, share of equal argmax). Speed is measured elsewhere:
``benchmarks/cpu_kernels.py`` (the layer) and ``benchmarks/peers_cpu.py`` (whole-model decode).

Run from the repository root, after ``make demo``::

    python benchmarks/activation_bits.py --output benchmarks/results/activation_bits-cpu.md
    python benchmarks/activation_bits.py --tiny   # smoke run: random 2-layer model, random token ids
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import optimum_binarymos
from optimum_binarymos import BinaryMoSConfig, convert_model, pack_model
from optimum_binarymos.eval.windows import tokenize_text
from optimum_binarymos.experiment import evaluate_perplexity
from optimum_binarymos.hardware import cpu_info
from optimum_binarymos.kernels import set_activation_bits
from optimum_binarymos.kernels.native import native_kernels

REPOSITORY = Path(__file__).resolve().parents[1]
#: Characters cut from the end of the training text as the validation split (as ``embedding_bits.py``).
VALIDATION_CHARS = 400_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=REPOSITORY / "demo_out" / "binarymos",
                        help="a packed BinaryMoS checkpoint (default: the demo's)")  # fmt: skip
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--windows", type=int, default=16, help="windows of each text")
    parser.add_argument("--tiny", action="store_true", help="random 2-layer model and token ids (smoke run)")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    """The packed model in float32, validation ids, evaluation ids and a description of the model."""
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from peers_cpu import SMOLLM2_CONFIG

        torch.manual_seed(0)
        config = transformers.LlamaConfig(**{**SMOLLM2_CONFIG, "num_hidden_layers": 2, "vocab_size": 512})
        model = AutoModelForCausalLM.from_config(config)
        convert_model(model, BinaryMoSConfig(num_experts=4))
        pack_model(model)
        ids = torch.randint(0, config.vocab_size, (2, args.seq_len * args.windows))
        return model.eval(), ids[0], ids[1], "random 2-layer model with SmolLM2's widths, BinaryMoS E=4, packed"
    sys.path.insert(0, str(REPOSITORY / "examples"))
    from demo_assets.sotu import sotu_split

    if not (args.model_dir / "config.json").is_file():
        raise SystemExit(f"no packed checkpoint in {args.model_dir}: run `make demo` first, or pass --model-dir")
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    train_text, eval_text = sotu_split()
    validation_ids = tokenize_text(tokenizer, train_text[-VALIDATION_CHARS:])
    return model.eval(), validation_ids, tokenize_text(tokenizer, eval_text), f"packed checkpoint `{args.model_dir}`"


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, validation_ids, eval_ids, description = load(args)
    settings = {"float activations": None, "int8 activations": 8}
    perplexities: dict[str, dict[str, float]] = {}
    logits = {}
    seconds = {}
    window = eval_ids[: args.seq_len].unsqueeze(0)
    for label, bits in settings.items():
        layers = set_activation_bits(model, bits)
        start = time.perf_counter()
        perplexities[label] = {
            "validation": evaluate_perplexity(model, validation_ids, seq_len=args.seq_len, max_windows=args.windows),
            "evaluation": evaluate_perplexity(model, eval_ids, seq_len=args.seq_len, max_windows=args.windows),
        }
        seconds[label] = time.perf_counter() - start
        logits[label] = model(window).logits[0].float()
    reference, rounded = logits["float activations"], logits["int8 activations"]
    difference = (rounded - reference).abs().max().item() / reference.abs().max().item()
    agreement = (rounded.argmax(-1) == reference.argmax(-1)).float().mean().item()
    kernels = native_kernels()
    lines = [
        "# Float against int8 activations in the packed layers (`benchmarks/activation_bits.py`)",
        "",
        f"- Model: {description}; {layers} packed BinaryMoS layers, float parts in float32.",
        f"- Machine: {cpu_info()}, native kernel {kernels.simd if kernels else 'absent'}"
        f" (int8-activation loop {kernels.q8_simd if kernels else 'absent'}); torch {torch.__version__},"
        f" optimum-binarymos {optimum_binarymos.__version__}. Date: {datetime.date.today().isoformat()}.",
        f"- Command: `python benchmarks/activation_bits.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- Perplexity: GPTQ protocol, {args.windows} windows of {args.seq_len} tokens of each text; validation: the"
        f" last {VALIDATION_CHARS // 1000} kB of the training text; evaluation: the demo's held-out text.",
        "",
        "| activations | validation perplexity | change | evaluation perplexity | change | seconds (both) |",
        "|---|---|---|---|---|---|",
    ]
    base = perplexities["float activations"]
    for label, values in perplexities.items():
        changes = [f"{values[split] / base[split] - 1:+.2%}" for split in ("validation", "evaluation")]
        lines.append(
            f"| {label} | {values['validation']:.3f} | {changes[0]} | {values['evaluation']:.3f} | {changes[1]} |"
            f" {seconds[label]:.1f} |"
        )
    lines += [
        "",
        f"Next-token logits on the first evaluation window ({args.seq_len} positions), int8 against float"
        f" activations: largest difference {difference:.2%} of the largest float logit, same argmax at"
        f" {agreement:.1%} of the positions.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
