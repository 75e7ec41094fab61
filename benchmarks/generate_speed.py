"""Generation speed of a whole packed BinaryMoS model against its float original, as a ratio in one run.

Builds (or loads with ``--model-dir``) a float causal LM, makes a packed BinaryMoS copy of it
(``convert_model`` then ``pack_model``), and times ``generate`` of ``--new-tokens`` greedy tokens after a
``--prompt-tokens`` prompt on both, alternating between the two models call by call. Each figure is the median
of ``--repeats`` calls; tokens/s counts the new tokens over the whole call (prefill included), and decode
tokens/s leaves the prefill out (a one-token ``generate`` is timed too and subtracted). The packed
model runs on its default backend (on CPU: the native kernel for decoding, blocks of unpacked rows for long
prefills); embeddings, norms and ``lm_head`` stay in float in both models.

The default model is a random LLaMA with the layer shapes of TinyLlama-1.1B (hidden 2048, intermediate 5632,
32 heads with 4 key/value heads, vocabulary 32000) but 8 of its 22 layers: random weights generate as fast as
trained ones, and 8 layers keep the float model's timing within minutes on two cores.

Run from the repository root (``benchmarks/results/generate_speed-cpu.md`` records the first two)::

    python benchmarks/generate_speed.py
    python benchmarks/generate_speed.py --threads 1 --clock cpu
    python benchmarks/generate_speed.py --model-dir path/to/hf-model --dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

from optimum_binarymos import BinaryMoSConfig, convert_model, pack_model
from optimum_binarymos.hardware import cpu_info
from optimum_binarymos.kernels import requested_backend
from optimum_binarymos.kernels.native import native_kernels

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="a float HF model folder (default: random)"
    )
    parser.add_argument("--hidden-size", type=int, default=2048)
    parser.add_argument("--intermediate-size", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--num-experts", type=int, default=4)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of both models")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed generate calls per model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: CPU time of the process, which other jobs on a shared machine barely "
        "disturb (meaningful as a latency with --threads 1; CPU only)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    return parser.parse_args(argv)


def float_model(args: argparse.Namespace) -> torch.nn.Module:
    dtype = DTYPES[args.dtype]
    if args.model_dir is not None:
        return AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype)
    config = transformers.LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config).to(dtype)


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure(args: argparse.Namespace) -> tuple[list[list[str]], str]:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    reference = float_model(args).eval()
    started = time.perf_counter()
    packed = pack_model(
        convert_model(copy.deepcopy(reference), BinaryMoSConfig(num_experts=args.num_experts))
    )
    conversion_s = time.perf_counter() - started
    models = {
        "float": reference.to(device),
        f"packed BinaryMoS, {args.num_experts} experts": packed.eval().to(device),
    }
    vocab = reference.config.vocab_size
    prompt = torch.randint(1, vocab, (args.batch_size, args.prompt_tokens), device=device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def run(model, new_tokens: int) -> float:
        options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        synchronize(device)
        start = clock()
        out = model.generate(prompt, **options)
        synchronize(device)
        assert out.shape[1] == args.prompt_tokens + new_tokens
        return clock() - start

    for model in models.values():
        run(model, 2)  # warm-up: first-call costs (native library build, allocator) are not generation speed
    # Each round times the full generation and a one-token generation (the prefill): their difference is
    # the decoding of the other new_tokens - 1 tokens.
    full: dict[str, list[float]] = {name: [] for name in models}
    prefill: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            full[name].append(run(model, args.new_tokens))
            prefill[name].append(run(model, 1))
    rows = []
    reference_speed = reference_decode = None
    for name, model in models.items():
        seconds = statistics.median(full[name])
        first = statistics.median(prefill[name])
        speed = args.batch_size * args.new_tokens / seconds
        decode = args.batch_size * (args.new_tokens - 1) / max(seconds - first, 1e-9)
        reference_speed = reference_speed or speed
        reference_decode = reference_decode or decode
        rows.append(
            [
                name,
                f"{seconds:.3f}",
                f"{speed:.1f}",
                f"{speed / reference_speed:.2f}x",
                f"{first:.3f}",
                f"{decode:.1f}",
                f"{decode / reference_decode:.2f}x",
                f"{parameter_bytes(model) / 2**20:.1f} MiB",
            ]
        )
    return rows, f"conversion and packing took {conversion_s:.1f} s"


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = cpu_info()
    kernels = native_kernels()
    native = f"native kernel {kernels.simd}" if kernels is not None else "no native kernel"
    return (
        f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {native}, "
        f"load average {os.getloadavg()[0]:.1f} when the run ended"
    )


def render(args: argparse.Namespace, rows: list[list[str]], note: str) -> str:
    if args.model_dir is not None:
        what = f"`{args.model_dir}`"
    else:
        what = (
            f"random LLaMA (hidden {args.hidden_size}, intermediate {args.intermediate_size}, "
            f"{args.layers} layers, "
            f"{args.heads} heads / {args.kv_heads} kv heads, vocabulary {args.vocab_size})"
        )
    header = [
        "model",
        "s per generate",
        "new tokens/s",
        "vs float",
        "s for prompt + 1 token",
        "decode tokens/s",
        "decode vs float",
        "weights in memory",
    ]
    return "\n".join(
        [
            f"### `generate` of {args.new_tokens} new tokens after a {args.prompt_tokens}-token prompt, "
            f"batch "
            f"{args.batch_size}, {args.dtype}, {args.device}",
            "",
            f"Model: {what}. Machine: {machine(args.device)}; torch {torch.__version__}; "
            f"backend {requested_backend()}; {datetime.date.today().isoformat()}.",
            "",
            f"Command: `python {' '.join(sys.argv)}`",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows),
            "",
            f"Medians of {args.repeats} rounds alternating between the models, "
            f"{'CPU time of the process' if args.clock == 'cpu' else 'wall-clock time'}. New tokens/s counts "
            "the whole call (prefill included); decode tokens/s = (new tokens - 1) / (time of the whole call "
            f"- time of a one-token call). {note[:1].upper() + note[1:]}.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows, note = measure(args)
    report = render(args, rows, note)
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
