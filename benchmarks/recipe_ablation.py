"""Recovery-recipe ablation on SmolLM2-135M-Instruct: each lever a row, same budget, seed and data.

Every row starts from the same float checkpoint, distills for the same number of steps of the same blocks with
the same seed, and is scored by perplexity (GPTQ protocol, 256-token windows) on held-out addresses:
``--split validation`` (the 1990s, training from before 1990: for choosing levers) or ``--split evaluation``
(2000 on, training from before 2000: the demo's evaluation). Rows differ only in the levers named in their
label, so equal steps are equal wall clock up to the calibration pass, whose seconds are a column.

A row is ``name:key=value,...`` with keys ``method`` (``ternary`` for TernaryLLM's DLT; default: OneBit or
BinaryMoS by ``experts``), ``experts`` (1 = OneBit; default 4), ``init`` (``svid``: the paper;
``rms`` / ``relative``: data-aware, :func:`optimum_binarymos.calibrate_model` with that ``scale_fit``; default
``svid``), ``lr`` (latent weights' peak learning rate; default ``--learning-rate``), ``scales_lr`` (``none``: one
learning rate; default ``none``), ``latent`` (``train`` or ``frozen``), ``temperature`` (the router's route
temperature) and ``hidden_weight`` (weight of the hidden-state term). The older positional form
``name:experts:init:scales_lr[:route_temperature]`` still parses. Writes ``<output>.md`` (table, command, machine,
date) and ``<output>.json``.

Run from the repository root (about 3.5 min per row at 20 steps on 2 CPU cores)::

    python benchmarks/recipe_ablation.py --split validation --steps 20 \\
        --rows onebit:experts=1 binarymos:experts=4 binarymos-rms:experts=4,init=rms,scales_lr=5e-3 \\
        --output benchmarks/results/recipe-ablation-validation-cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_binarymos import calibrate_model
from optimum_binarymos.calibration import DEFAULT_ROUTE_TEMPERATURE
from optimum_binarymos.experiment import (
    Budget,
    build_student,
    distill,
    evaluate_perplexity,
    median_scale_spread,
    sotu_data,
)
from optimum_binarymos.hardware import cpu_info

# The demo's model and text fetching (it runs pip and npm) lives in examples/, not in the library.
sys.path.append(str(Path(__file__).resolve().parents[1] / "examples"))
from demo_assets import smollm2_path, sotu_addresses  # noqa: E402

ROW_DEFAULTS = {
    "method": None,
    "experts": 4,
    "init": "svid",
    "lr": None,
    "scales_lr": None,
    "latent": "train",
    "temperature": DEFAULT_ROUTE_TEMPERATURE,
    "hidden_weight": Budget.kd_hidden_weight,
}


def parse_row(text: str) -> dict:
    name, _, rest = text.partition(":")
    fields = rest.split(":") if rest else []
    if fields and "=" not in fields[0]:  # name:experts:init:scales_lr[:route_temperature]
        keys = ("experts", "init", "scales_lr", "temperature")
        pairs = dict(zip(keys, fields, strict=False))
    else:
        pairs = dict(item.split("=", 1) for item in rest.split(",") if item)
    unknown = set(pairs) - set(ROW_DEFAULTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown row keys {sorted(unknown)}; known: {sorted(ROW_DEFAULTS)}")
    row = {"name": name, **ROW_DEFAULTS}
    for key, value in pairs.items():
        if key in ("init", "latent", "method"):
            row[key] = value
        elif key == "experts":
            row[key] = int(value)
        else:
            row[key] = None if value == "none" else float(value)
    if row["init"] not in ("svid", "rms", "relative"):
        raise argparse.ArgumentTypeError(f"init must be svid, rms or relative, got {row['init']!r}")
    if row["method"] not in (None, "onebit", "binarymos", "ternary"):
        raise argparse.ArgumentTypeError(
            f"method must be onebit, binarymos or ternary, got {row['method']!r}"
        )
    if row["method"] == "onebit":
        row["experts"] = 1
    if row["latent"] not in ("train", "frozen"):
        raise argparse.ArgumentTypeError(f"latent must be train or frozen, got {row['latent']!r}")
    return row


def row_method(row: dict) -> str:
    return row.get("method") or ("onebit" if row["experts"] == 1 else "binarymos")


def machine() -> str:
    return f"{cpu_info()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def run_row(row: dict, model_dir: Path, teacher, data, budget: Budget, eval_windows: int, work: Path) -> dict:
    method = row_method(row)
    row_budget = replace(
        budget,
        scales_learning_rate=row["scales_lr"],
        learning_rate=budget.learning_rate if row["lr"] is None else row["lr"],
        kd_hidden_weight=row["hidden_weight"],
    )
    student = build_student(model_dir, method, num_experts=row["experts"], seed=budget.seed)
    calibration_seconds = 0.0
    if row["init"] != "svid":
        report = calibrate_model(
            student,
            data.calibration,
            num_tokens=data.calibration.numel(),
            scale_fit=row["init"],
            route_temperature=row["temperature"],
            seed=budget.seed,
            progress=False,
        )
        calibration_seconds = report.seconds
    probe = data.eval_ids[None, :256]
    converted = evaluate_perplexity(student, data.eval_ids, seq_len=256, max_windows=eval_windows)
    spread_before = median_scale_spread(student, probe)
    started = time.perf_counter()
    history = distill(
        student,
        teacher,
        data.train,
        row_budget,
        work / row["name"],
        progress=False,
        train_latent_weights=row["latent"] == "train",
    )
    distill_seconds = time.perf_counter() - started
    return {
        **row,
        "converted_ppl": converted,
        "ppl": evaluate_perplexity(student, data.eval_ids, seq_len=256, max_windows=eval_windows),
        "spread_before": spread_before,
        "spread_after": median_scale_spread(student, probe),
        "calibration_seconds": calibration_seconds,
        "distill_seconds": distill_seconds,
        "final_loss": history[-1]["loss"],
    }


def render(results: dict) -> str:
    lines = [
        f"# Recipe ablation: {results['split']} split, {results['budget']['steps']} steps",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}; machine: {results['machine']}",
        f"- budget: {results['describe']}",
        f"- seed: {results['budget'].get('seed', 0)}",
        f"- held out: {results['held_out']}; {results['eval_windows']} windows of 256 tokens",
        f"- float model: perplexity {results['float_ppl']:.2f}",
        "",
        "| row | method | experts | init | route temperature | lr | scales lr | latent weights | hidden weight |"
        " ppl after convert | ppl after distill | scale spread before / after | calibration s | distill s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        scales_lr = "= lr" if row["scales_lr"] is None else f"{row['scales_lr']:g}"
        method = row_method(row)
        experts = "-" if method == "ternary" else row["experts"]
        calibrated_router = row["init"] != "svid" and method == "binarymos"
        temperature = row.get("temperature", row.get("route_temperature", DEFAULT_ROUTE_TEMPERATURE))
        temperature = f"{temperature:g}" if calibrated_router else "-"
        lr = row.get("lr")
        lr = f"{results['budget']['learning_rate'] if lr is None else lr:g}"
        hidden = f"{row.get('hidden_weight', results['budget']['kd_hidden_weight']):g}"
        lines.append(
            f"| {row['name']} | {method} | {experts} | {row['init']} | {temperature} | {lr} | {scales_lr} | "
            f"{row.get('latent', 'train')} | {hidden} | {row['converted_ppl']:,.0f} | "
            f"{row['ppl']:,.1f} | {row['spread_before']:.2%} / {row['spread_after']:.2%} | "
            f"{row['calibration_seconds']:.1f} | {row['distill_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", nargs="+", type=parse_row, required=True, help="name:key=value,... (see above)"
    )
    parser.add_argument("--split", choices=["validation", "evaluation"], default="validation")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=Budget.learning_rate)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument(
        "--seed", type=int, default=Budget.seed, help="seeds calibration, data order and trainer"
    )
    parser.add_argument("--output", type=Path, required=True, help="path without suffix for .md and .json")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="a float SmolLM2 folder (default: the demo's)"
    )
    args = parser.parse_args(argv)

    model_dir = args.model_dir or smollm2_path(None)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    budget = Budget(steps=args.steps, learning_rate=args.learning_rate, seed=args.seed)
    data = sotu_data(tokenizer, budget, sotu_addresses(), split=args.split)
    teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    results = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "split": args.split,
        "held_out": f"addresses from {data.eval_from_year}"
        + (" to 1999" if args.split == "validation" else " on"),
        "eval_windows": args.eval_windows,
        "budget": budget.as_dict(),
        "describe": budget.describe(),
        "float_ppl": evaluate_perplexity(teacher, data.eval_ids, seq_len=256, max_windows=args.eval_windows),
        "rows": [],
    }
    work = Path(tempfile.mkdtemp(prefix="recipe-ablation-"))  # trainer output folders (nothing is saved)
    for row in args.rows:
        results["rows"].append(run_row(row, model_dir, teacher, data, budget, args.eval_windows, work))
        print(json.dumps(results["rows"][-1]), flush=True)
        # Written after every row: a long run interrupted keeps what it measured.
        args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        args.output.with_suffix(".md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
