"""Recovery-recipe ablation on SmolLM2-135M-Instruct: each lever a row, same budget, seed and data.

Every row starts from the same float checkpoint, distills for the same number of steps of the same blocks with
the same seed, and is scored by perplexity (GPTQ protocol, 256-token windows) on held-out addresses:
``--split validation`` (the 1990s, training from before 1990: for choosing levers) or ``--split evaluation``
(2000 on, training from before 2000: the demo's evaluation). Rows differ only in the levers named in their
label, so equal steps are equal wall clock up to the calibration pass, whose seconds are a column.

A row is ``name:experts:init:scales_lr[:route_temperature]``: init ``svid`` (the paper), ``rms`` or ``relative`` (data-aware,
:func:`optimum_binarymos.calibrate_model` with that ``scale_fit``); scales_lr ``none`` (one learning rate) or a
number; route_temperature defaults to the library's. Writes ``<output>.md`` (table, command, machine, date) and ``<output>.json``.

Run from the repository root (about 3.5 min per row at 20 steps on 2 CPU cores)::

    python benchmarks/recipe_ablation.py --split validation --steps 20 \\
        --rows onebit:1:svid:none binarymos:4:svid:none binarymos-rms:4:rms:none \\
        --output benchmarks/results/recipe-ablation-validation-cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_binarymos import calibrate_model
from optimum_binarymos.assets import smollm2_path
from optimum_binarymos.calibration import DEFAULT_ROUTE_TEMPERATURE
from optimum_binarymos.experiment import (
    Budget,
    build_student,
    distill,
    evaluate_perplexity,
    median_scale_spread,
    sotu_data,
)


def parse_row(text: str) -> dict:
    name, experts, init, scales_lr, *temperature = text.split(":")
    if init not in ("svid", "rms", "relative"):
        raise argparse.ArgumentTypeError(f"init must be svid, rms or relative, got {init!r}")
    return {
        "name": name,
        "experts": int(experts),
        "init": init,
        "scales_lr": None if scales_lr == "none" else float(scales_lr),
        "route_temperature": float(temperature[0]) if temperature else DEFAULT_ROUTE_TEMPERATURE,
    }


def machine() -> str:
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
                flags = " ".join(flag for flag in line.split()[1:] if flag in wanted)
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model} ({flags}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def run_row(row: dict, model_dir: Path, teacher, data, budget: Budget, eval_windows: int, work: Path) -> dict:
    method = "onebit" if row["experts"] == 1 else "binarymos"
    row_budget = replace(budget, scales_learning_rate=row["scales_lr"])
    student = build_student(model_dir, method, num_experts=row["experts"], seed=budget.seed)
    calibration_seconds = 0.0
    if row["init"] != "svid":
        report = calibrate_model(
            student, data.calibration, num_tokens=data.calibration.numel(), scale_fit=row["init"],
            route_temperature=row["route_temperature"], seed=budget.seed, progress=False,
        )
        calibration_seconds = report.seconds
    probe = data.eval_ids[None, :256]
    converted = evaluate_perplexity(student, data.eval_ids, seq_len=256, max_windows=eval_windows)
    spread_before = median_scale_spread(student, probe)
    started = time.perf_counter()
    history = distill(student, teacher, data.train, row_budget, work / row["name"], progress=False)
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
        f"- held out: {results['held_out']}; {results['eval_windows']} windows of 256 tokens",
        f"- float model: perplexity {results['float_ppl']:.2f}",
        "",
        "| row | experts | init | route temperature | scales lr | ppl after convert | ppl after distill |"
        " scale spread before / after | calibration s | distill s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        scales_lr = "= lr" if row["scales_lr"] is None else f"{row['scales_lr']:g}"
        calibrated_router = row["init"] != "svid" and row["experts"] > 1
        temperature = f"{row.get('route_temperature', DEFAULT_ROUTE_TEMPERATURE):g}" if calibrated_router else "-"
        lines.append(
            f"| {row['name']} | {row['experts']} | {row['init']} | {temperature} | {scales_lr} | {row['converted_ppl']:,.0f} | "
            f"{row['ppl']:,.1f} | {row['spread_before']:.2%} / {row['spread_after']:.2%} | "
            f"{row['calibration_seconds']:.1f} | {row['distill_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", type=parse_row, required=True, help="name:experts:init:scales_lr")
    parser.add_argument("--split", choices=["validation", "evaluation"], default="validation")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=Budget.learning_rate)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--output", type=Path, required=True, help="path without suffix for .md and .json")
    parser.add_argument("--model-dir", type=Path, default=None, help="a float SmolLM2 folder (default: the demo's)")
    args = parser.parse_args(argv)

    model_dir = args.model_dir or smollm2_path(None)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    budget = Budget(steps=args.steps, learning_rate=args.learning_rate)
    data = sotu_data(tokenizer, budget, split=args.split)
    teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    results = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "split": args.split,
        "held_out": f"addresses from {data.eval_from_year}" + (" to 1999" if args.split == "validation" else " on"),
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
