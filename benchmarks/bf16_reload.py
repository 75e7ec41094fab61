"""How far a bfloat16 model reloaded packed is from the in-memory (latent) one, and from exact arithmetic.

A real model (``--model``: SmolLM2-135M-Instruct, or Gemma 3 270M with its sliding-window attention, scaled
embeddings, extra norms and tied ``lm_head``) is converted to BinaryMoS in bfloat16, saved packed and reloaded in
bfloat16. The in-memory model computes each layer as a bfloat16 matmul against ``sign(W)`` with the scales applied
in bfloat16; the packed one sums in float32 with the scales fused and rounds once. Both are compared with the same
weights computed in float32 (the in-memory model cast to float32: bfloat16 values are exact in float32), so the
table says whether the two paths part by bfloat16 rounding, and which of them stays closer to exact arithmetic.

Two more measurements separate a layer's own error from its amplification by the layers after it:

- teacher-forced: every decoder layer of the packed (and of the exact) model is fed the in-memory model's input
  to that layer, so each layer's output error is its own, not inherited;
- sensitivity: the exact float32 model with one bfloat16 rounding of the residual stream after the first layer,
  against the exact model: how much the network itself amplifies one rounding, with no other bfloat16 op.

``--students`` picks the students: ``svid`` (converted, untrained: what a reload of a fresh conversion shows),
``distilled`` (calibrated and distilled in float32 for ``--distill-steps`` on addresses before 2000, then cast to
bfloat16, saved packed and reloaded the same way). Writes ``<output>.md`` and ``<output>.json``.

Run from the repository root (about a minute for SmolLM2 on 2 CPU cores; Gemma with a distilled student, ten)::

    python benchmarks/bf16_reload.py --output benchmarks/results/bf16_reload-cpu
    python benchmarks/bf16_reload.py --model gemma3 --students svid distilled \\
        --output benchmarks/results/bf16_reload-gemma3-cpu
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_binarymos import BinaryMoSConfig
from optimum_binarymos.distill.hidden import decoder_layers
from optimum_binarymos.experiment import Budget, build_student, distill, sotu_data
from optimum_binarymos.hardware import cpu_info

# The demo's model and text fetching (it runs pip and npm) lives in examples/, not in the library.
sys.path.append(str(Path(__file__).resolve().parents[1] / "examples"))
from demo_assets import smollm2_path, sotu_addresses, sotu_split  # noqa: E402
from demo_assets.gemma3 import gemma3_path  # noqa: E402

MODELS = {"smollm2": ("SmolLM2-135M-Instruct", smollm2_path), "gemma3": ("Gemma 3 270M", gemma3_path)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--num-experts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--students", nargs="+", choices=["svid", "distilled"], default=["svid"])
    parser.add_argument("--distill-steps", type=int, default=20, help="steps of 2 x 128 tokens, lr 1e-3")
    parser.add_argument("--tokens", type=int, default=256, help="held-out tokens scored")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/bf16_reload-cpu"))
    return parser.parse_args(argv)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@torch.no_grad()
def run(model, ids: torch.Tensor, inputs: list[torch.Tensor] | None = None, round_after_first: bool = False):
    """Logits, hidden states and every decoder layer's input and output; ``inputs`` replaces each layer's input
    (teacher forcing), ``round_after_first`` rounds the first layer's output to bfloat16 and back."""
    seen_in, seen_out, hooks = [], [], []
    for index, layer in enumerate(decoder_layers(model)):

        def before(module, args, kwargs, index=index):
            hidden = args[0] if args else kwargs["hidden_states"]
            if inputs is not None:
                hidden = inputs[index].to(hidden.dtype)
                args, kwargs = ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
            seen_in.append(hidden)
            return args, kwargs

        def after(module, args, kwargs, output, index=index):
            hidden = output[0] if isinstance(output, tuple) else output
            if round_after_first and index == 0:
                hidden = hidden.to(torch.bfloat16).to(hidden.dtype)
                output = (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            seen_out.append(hidden)
            return output

        hooks.append(layer.register_forward_pre_hook(before, with_kwargs=True))
        hooks.append(layer.register_forward_hook(after, with_kwargs=True))
    try:
        output = model(ids, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    return output.logits.float(), output.hidden_states, seen_in, seen_out


def compare(latent, ids: torch.Tensor) -> dict:
    """Save ``latent`` (bfloat16) packed, reload it in bfloat16 and compare the three paths."""
    with tempfile.TemporaryDirectory() as folder:
        latent.save_pretrained(folder)
        packed = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    exact = copy.deepcopy(latent).to(torch.float32)
    logits, hidden, layer_in, layer_out = {}, {}, {}, {}
    for name, model in (("latent", latent), ("packed", packed), ("exact", exact)):
        logits[name], hidden[name], layer_in[name], layer_out[name] = run(model, ids)
    forced_packed = run(packed, ids, inputs=layer_in["latent"])[3]
    forced_exact = run(exact, ids, inputs=[x.float() for x in layer_in["latent"]])[3]
    rounded = run(exact, ids, round_after_first=True)[0]
    argmax = {name: value.argmax(-1) for name, value in logits.items()}
    same = lambda a, b: (argmax[a] == argmax[b]).float().mean().item()  # noqa: E731
    return {
        "latent_vs_packed": relative(logits["packed"], logits["latent"]),
        "latent_vs_exact": relative(logits["latent"], logits["exact"]),
        "packed_vs_exact": relative(logits["packed"], logits["exact"]),
        "argmax_latent_packed": same("latent", "packed"),
        "argmax_latent_exact": same("latent", "exact"),
        "argmax_packed_exact": same("packed", "exact"),
        "hidden_latent_vs_packed": [relative(p, q) for p, q in zip(hidden["packed"], hidden["latent"], strict=True)],
        "forced_layer_latent_vs_packed": [
            relative(p, q) for p, q in zip(forced_packed, layer_out["latent"], strict=True)
        ],
        "forced_layer_latent_vs_exact": [
            relative(q, e) for q, e in zip(layer_out["latent"], forced_exact, strict=True)
        ],
        "sensitivity_one_rounding": relative(rounded, logits["exact"]),
        "max_abs_hidden": max(h.float().abs().max().item() for h in hidden["exact"]),
        "max_abs_hidden_by_layer": [h.float().abs().max().item() for h in hidden["exact"]],
    }


def students(args: argparse.Namespace, model_dir: Path, tokenizer, num_experts: int):
    """Yield ``(description, latent bfloat16 model)`` for each of ``args.students``."""
    for kind in args.students:
        if kind == "svid":
            torch.manual_seed(0)
            yield "converted (SVID), untrained", AutoModelForCausalLM.from_pretrained(
                model_dir, quantization_config=BinaryMoSConfig(num_experts=num_experts), dtype=torch.bfloat16
            )
        else:
            budget = Budget(steps=args.distill_steps, batch_size=2, block_size=128, calibration_tokens=2048)
            data = sotu_data(tokenizer, budget, sotu_addresses())
            student = build_student(model_dir, "binarymos", num_experts=num_experts, calibration=data.calibration)
            teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            with tempfile.TemporaryDirectory() as scratch:
                history = distill(student, teacher, data.train, budget, scratch, progress=False)
            del teacher
            loss = f"KD loss {history[0]['loss']:.2f} -> {history[-1]['loss']:.2f}"
            yield f"calibrated + distilled {budget.steps} steps in float32 ({loss})", student.to(torch.bfloat16)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    title, locate = MODELS[args.model]
    model_dir = locate()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    _, held_out = sotu_split(2000)
    ids = tokenizer(held_out, return_tensors="pt", verbose=False).input_ids[:, : args.tokens]
    rows = []
    for experts in args.num_experts:
        for student, latent in students(args, model_dir, tokenizer, experts):
            rows.append({"num_experts": experts, "student": student, **compare(latent, ids)})
            del latent
    results = {
        "command": shlex.join(
            ["python", "benchmarks/bf16_reload.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_info()}, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "model": title,
        "tokens": ids.shape[1],
        "rows": rows,
    }
    layers = len(rows[0]["forced_layer_latent_vs_packed"])
    middle = layers // 2
    lines = [
        f"# bfloat16 reload: in-memory (latent) vs packed vs exact arithmetic, {title}",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}; machine: {results['machine']}",
        f"- input: the first {results['tokens']} tokens of the addresses from 2000 on",
        "- relative difference: `||a - b|| / ||b||` of the logits; exact: the same bfloat16 weights computed in float32",
        "- teacher-forced: each packed (exact) layer fed the latent model's input to it, its output against the latent"
        " layer's: a layer's own error, max over the layers",
        "- one rounding: the exact float32 model with its residual stream rounded to bfloat16 once, after layer 1,"
        " against the exact model: the network's own amplification of one bfloat16 rounding",
        "",
        "| experts | student | latent vs packed | latent vs exact | packed vs exact | argmax latent = packed"
        " | argmax latent = exact | argmax packed = exact"
        f" | hidden states, latent vs packed, after layers 1 / {middle} / last"
        " | teacher-forced layer, latent vs packed | teacher-forced layer, latent vs exact | one rounding"
        " | max abs hidden |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        h = row["hidden_latent_vs_packed"]
        lines.append(
            f"| {row['num_experts']} | {row['student']} | {row['latent_vs_packed']:.4f} | {row['latent_vs_exact']:.4f}"
            f" | {row['packed_vs_exact']:.4f} | {row['argmax_latent_packed']:.1%} | {row['argmax_latent_exact']:.1%}"
            f" | {row['argmax_packed_exact']:.1%} | {h[1]:.1e} / {h[middle]:.1e} / {h[-1]:.1e}"
            f" | {max(row['forced_layer_latent_vs_packed']):.1e} | {max(row['forced_layer_latent_vs_exact']):.1e}"
            f" | {row['sensitivity_one_rounding']:.4f} | {row['max_abs_hidden']:,.0f} |"
        )
    lines += [
        "",
        "By layer (relative difference of each decoder layer's output; F = free-running latent vs packed,"
        " T = teacher-forced latent vs packed; max |hidden| of the exact model):",
        "",
        "| layer | " + " | ".join(f"E={row['num_experts']} {row['student'].split(' (')[0].split(' in ')[0]}: F / T / max"
                                    for row in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for layer in range(layers):
        cells = [
            f"{row['hidden_latent_vs_packed'][layer + 1]:.1e} / {row['forced_layer_latent_vs_packed'][layer]:.1e}"
            f" / {row['max_abs_hidden_by_layer'][layer + 1]:,.0f}"
            for row in rows
        ]
        lines.append(f"| {layer + 1} | " + " | ".join(cells) + " |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
