"""Where one compiled decode step of the fastest packed SmolLM2 goes on CPU: the ``torch.profiler`` table of a few
decode steps, per op, per step.

The model is ``benchmarks/peers_cpu.py``'s row "packed BinaryMoS E=4, 8-bit embeddings, int8 activations, compiled"
(loaded, packed, ``attn_implementation="binarymos_sdpa"``, int8 activations, a ``StaticCache`` and the decode step
through ``torch.compile(model.forward, dynamic=False)``), after the same 128-token prompt. Inductor's own C++ kernels
are profiled one by one (``torch._inductor.config.cpp.enable_kernel_profile``); what the compiled graph's Python
wrapper spends between them is the self time of its ``## Call CompiledFxGraph`` row. ``--attention sdpa`` profiles
transformers' attention instead, to see what ``binarymos_sdpa`` saves.

Run from the repository root (after ``make demo`` has fetched the model; ``--tiny``: random 2-layer model)::

    python benchmarks/profile_compiled_decode.py --threads 1 --output benchmarks/results/profile_compiled_decode-cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers_cpu  # noqa: E402  the peer benchmark's model loading and decode loop

from optimum_binarymos.hardware import cpu_info  # noqa: E402

MODEL = "packed BinaryMoS E=4, 8-bit embeddings, int8 activations, compiled"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=16, help="decode steps profiled")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--attention", default="binarymos_sdpa", help="attn_implementation of the packed model")
    parser.add_argument("--rows", type=int, default=20, help="ops listed")
    parser.add_argument("--tiny", action="store_true", help="random 2-layer model (smoke run)")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    return parser.parse_args(argv)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    inductor_config.cpp.enable_kernel_profile = True
    folder, _, what = peers_cpu.model_source(peers_cpu.parse_args(["--tiny"] if args.tiny else []))
    model = peers_cpu.load_torch_model(MODEL, folder, seed=0)
    model.set_attn_implementation(args.attention)
    runner = peers_cpu.TorchRunner(model, compiled=True, max_cache_len=args.prompt_tokens + args.steps + 8)
    prompt = peers_cpu.prompt_ids(folder, args.prompt_tokens, seed=0)
    runner.warm_up(prompt)
    _, token = runner.prefill(prompt)
    seconds = runner.decode(token, args.steps)  # unprofiled, for the profiler's overhead
    _, token = runner.prefill(prompt)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        runner.decode(token, args.steps)
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events) / args.steps / 1000
    lines = [
        "# One compiled decode step of the packed SmolLM2, profiled (`benchmarks/profile_compiled_decode.py`)",
        "",
        f"- Model: {what}; row \"{MODEL}\" of `benchmarks/peers_cpu.py`, attention `{args.attention}`.",
        f"- Machine: {cpu_info()}, {args.threads} torch thread(s); torch {torch.__version__}."
        f" Date: {datetime.date.today().isoformat()}.",
        f"- Command: `python benchmarks/profile_compiled_decode.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- {args.steps} decode steps after a {args.prompt_tokens}-token prompt: {seconds / args.steps * 1000:.2f} ms a"
        f" step without the profiler, {total:.2f} ms of summed self time a step with it.",
        "",
        "| op (self time) | calls a step | ms a step | % | us a call |",
        "|---|---|---|---|---|",
    ]
    for event in events[: args.rows]:
        ms = event.self_cpu_time_total / args.steps / 1000
        lines.append(
            f"| `{event.key[:90]}` | {event.count / args.steps:g} | {ms:.3f} | {ms / total:.1%} |"
            f" {event.self_cpu_time_total / event.count:.1f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
