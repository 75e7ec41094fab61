"""How far a bfloat16 model reloaded packed is from the in-memory (latent) one, and from exact arithmetic.

SmolLM2-135M-Instruct is converted to BinaryMoS in bfloat16, saved packed and reloaded. The in-memory model
computes each layer as a bfloat16 matmul against ``sign(W)`` with the scales applied in bfloat16; the packed one
sums in float32 with the scales fused and rounds once. Both are compared with the same weights computed in float32
(the in-memory model cast to float32: bfloat16 values are exact in float32), so the table says whether the two
paths part by bfloat16 rounding, and which of them stays closer to exact arithmetic. Writes ``<output>.md`` and
``<output>.json``.

Run from the repository root (about a minute on 2 CPU cores)::

    python benchmarks/bf16_reload.py --output benchmarks/results/bf16_reload-cpu
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
from optimum_binarymos.hardware import cpu_info

# The demo's model and text fetching (it runs pip and npm) lives in examples/, not in the library.
sys.path.append(str(Path(__file__).resolve().parents[1] / "examples"))
from demo_assets import smollm2_path, sotu_split  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-experts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--tokens", type=int, default=256, help="held-out tokens scored")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/bf16_reload-cpu"))
    return parser.parse_args(argv)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def compare(model_dir: Path, num_experts: int, ids: torch.Tensor) -> dict:
    latent = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=BinaryMoSConfig(num_experts=num_experts), dtype=torch.bfloat16
    )
    with tempfile.TemporaryDirectory() as folder:
        latent.save_pretrained(folder)
        packed = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    exact = copy.deepcopy(latent).to(torch.float32)
    with torch.no_grad():
        outputs = {name: model(ids, output_hidden_states=True) for name, model in
                   (("latent", latent), ("packed", packed), ("exact", exact))}  # fmt: skip
    logits = {name: output.logits.float() for name, output in outputs.items()}
    hidden = {name: output.hidden_states for name, output in outputs.items()}
    argmax = {name: value.argmax(-1) for name, value in logits.items()}
    return {
        "num_experts": num_experts,
        "latent_vs_packed": relative(logits["packed"], logits["latent"]),
        "latent_vs_exact": relative(logits["latent"], logits["exact"]),
        "packed_vs_exact": relative(logits["packed"], logits["exact"]),
        "argmax_latent_packed": (argmax["latent"] == argmax["packed"]).float().mean().item(),
        "argmax_latent_exact": (argmax["latent"] == argmax["exact"]).float().mean().item(),
        "argmax_packed_exact": (argmax["packed"] == argmax["exact"]).float().mean().item(),
        "hidden_latent_vs_packed": [
            relative(p.float(), q.float()) for p, q in zip(hidden["packed"], hidden["latent"], strict=True)
        ],
        "max_abs_hidden": max(h.float().abs().max().item() for h in hidden["exact"]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    _, held_out = sotu_split(2000)
    ids = tokenizer(held_out, return_tensors="pt", verbose=False).input_ids[:, : args.tokens]
    rows = [compare(model_dir, experts, ids) for experts in args.num_experts]
    results = {
        "command": shlex.join(
            ["python", "benchmarks/bf16_reload.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_info()}, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "tokens": ids.shape[1],
        "rows": rows,
    }
    lines = [
        "# bfloat16 reload: in-memory (latent) vs packed vs exact arithmetic, SmolLM2-135M-Instruct",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}; machine: {results['machine']}",
        f"- input: the first {results['tokens']} tokens of the addresses from 2000 on; converted with SVID, untrained",
        "- relative difference: `||a - b|| / ||b||` of the logits; exact: the same bfloat16 weights computed in float32",
        "",
        "| experts | latent vs packed | latent vs exact | packed vs exact | argmax latent = packed | argmax latent = exact"
        " | argmax packed = exact | hidden states, latent vs packed, after layers 1 / 10 / last | max abs hidden |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        h = row["hidden_latent_vs_packed"]
        lines.append(
            f"| {row['num_experts']} | {row['latent_vs_packed']:.4f} | {row['latent_vs_exact']:.4f} | "
            f"{row['packed_vs_exact']:.4f} | {row['argmax_latent_packed']:.1%} | {row['argmax_latent_exact']:.1%} | "
            f"{row['argmax_packed_exact']:.1%} | {h[1]:.1e} / {h[10]:.1e} / {h[-1]:.1e} | {row['max_abs_hidden']:,.0f} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
