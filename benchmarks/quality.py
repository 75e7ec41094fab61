"""OneBit vs BinaryMoS vs ternary on SmolLM2-135M-Instruct at one stated distillation budget.

Each method starts from the same float checkpoint, trains on the same State of the Union blocks (addresses before
2000) with the same objective, learning rate and seed, and is scored by perplexity (GPTQ protocol) on the later
addresses. Reported: perplexity before and after distillation, the gap closure
``(ppl_onebit - ppl_mos) / (ppl_onebit - ppl_fp)`` (the paper's headline: about a quarter), and the bytes of each
packed checkpoint saved in bfloat16 against float16.

Writes ``<output-dir>/quality-<tag>.md`` (table, budget, command, date, machine) and ``quality-<tag>.json`` (every
number and the loss curves), and two plots into ``--plots-dir``: the distillation loss curves, and the
distribution over tokens of the effective input/output scales of one layer (OneBit's are one value per channel;
BinaryMoS's router mixes them per token).

Run from the repository root (about 10 s per step and method on 2 CPU cores)::

    python benchmarks/quality.py --steps 60 --output-dir benchmarks/results --plots-dir docs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_binarymos import record_base_model, record_evaluation, render_model_card
from optimum_binarymos.assets import folder_size_bytes, smollm2_path
from optimum_binarymos.experiment import (
    METHODS,
    Budget,
    build_student,
    distill,
    evaluate_perplexity,
    sotu_data,
    token_scale_samples,
    token_spread,
)

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CARD_NAME = "smollm2-135m-instruct-binarymos.md"


def label(method: str, results: dict) -> str:
    """Row and legend label; notes BinaryMoS experts started apart."""
    if method == "binarymos" and results.get("expert_spread"):
        return f"{LABELS[method][:-1]}, experts spread {results['expert_spread']:g})"
    return LABELS[method]


LABELS = {
    "float": "float (fp32)",
    "onebit": "OneBit (E=1)",
    "binarymos": "BinaryMoS (E=4)",
    "ternary": "ternary (DLT)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Budget()
    parser.add_argument("--steps", type=int, default=60, help="distillation steps per method")
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument(
        "--kd-hidden-loss", default=defaults.kd_hidden_loss, choices=["mse", "normalized_mse", "cosine"]
    )
    parser.add_argument("--kd-hidden-weight", type=float, default=defaults.kd_hidden_weight)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--num-experts", type=int, default=4, help="experts of the BinaryMoS run")
    parser.add_argument(
        "--expert-spread",
        type=float,
        default=0.0,
        help="start BinaryMoS's experts apart by this relative spread (0 = the paper's identical SVID experts)",
    )
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=40, help="held-out windows scored per model")
    parser.add_argument(
        "--scale-layer", default="model.layers.15.self_attn.o_proj", help="layer of the scale plot"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tag", default="cpu", help="suffix of the result files")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--plots-dir", type=Path, default=Path("docs"))
    parser.add_argument(
        "--cards-dir", type=Path, default=Path("model_cards"), help="where the BinaryMoS card goes"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the plots (they need matplotlib)")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="redo the report, plots and card from an earlier run's JSON",
    )
    return parser.parse_args(argv)


def gap_closure(ppl_base: float, ppl_method: float, ppl_float: float) -> float:
    """Fraction of the base method's perplexity gap to the float model that ``method`` closes."""
    return (ppl_base - ppl_method) / (ppl_base - ppl_float)


def scale_summary(scales: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """What the scale plot and table need from ``token_scale_samples``: channel 0's per-token deviation from its
    mean and every channel's token spread, both in percent."""
    summary = {}
    for side in ("in", "out"):
        values = scales[f"scale_{side}"]
        channel = values[:, 0]
        summary[f"channel0_{side}"] = (100 * (channel / channel.mean() - 1)).tolist()
        summary[f"spread_{side}"] = (100 * token_spread(values)).tolist()
    return summary


def saved_bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes of the model's safetensors when saved in ``dtype`` (packed for a quantized model; cast in place)."""
    model.to(dtype)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return folder_size_bytes(folder)


def run(args: argparse.Namespace) -> tuple[dict, torch.nn.Module | None]:
    """Train and score every method; returns the results and the distilled BinaryMoS model (if it ran)."""
    budget = Budget(
        steps=args.steps,
        block_size=args.block_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        kd_hidden_loss=args.kd_hidden_loss,
        kd_hidden_weight=args.kd_hidden_weight,
    )
    model_dir = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = sotu_data(tokenizer, budget)
    evaluate = lambda model: evaluate_perplexity(  # noqa: E731
        model, data.eval_ids, seq_len=args.eval_seq_len, max_windows=args.eval_windows
    )
    scale_ids = data.eval_ids[: args.eval_seq_len].unsqueeze(0)

    teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    results: dict = {"budget": budget.as_dict(), "expert_spread": args.expert_spread, "methods": {}}
    binarymos_model = None
    # A separate copy: casting the teacher to float16 and back would round its weights.
    float16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16)
    float16_bytes = saved_bytes(float16, torch.float16)
    del float16
    results["float"] = {"ppl": evaluate(teacher), "bytes_fp16": float16_bytes}
    print(f"float: ppl {results['float']['ppl']:.2f}", flush=True)

    for method in args.methods:
        started = time.perf_counter()
        spread = args.expert_spread if method == "binarymos" else 0.0
        student = build_student(
            model_dir, method, num_experts=args.num_experts, seed=budget.seed, expert_spread=spread
        )
        entry: dict = {"ppl_init": evaluate(student)}
        history = distill(
            student,
            teacher,
            data.train,
            budget,
            Path(tempfile.gettempdir()) / "quality-trainer",
            progress=False,
        )
        entry["ppl"] = evaluate(student)
        entry["train_seconds"] = time.perf_counter() - started
        entry["history"] = [
            {key: row[key] for key in ("step", "loss", "kd_logits", "kd_hidden") if key in row}
            for row in history
        ]
        if method != "ternary":
            entry["token_scales"] = scale_summary(token_scale_samples(student, scale_ids, args.scale_layer))
        entry["bytes"] = saved_bytes(student, torch.bfloat16)
        results["methods"][method] = entry
        print(
            f"{method}: ppl {entry['ppl_init']:.4g} -> {entry['ppl']:.4g} in {entry['train_seconds']:.0f} s, "
            f"{entry['bytes']:,} bytes",
            flush=True,
        )
        if method == "binarymos":
            binarymos_model = student  # its model card is written with the results
        del student
    return results, binarymos_model


def table(results: dict) -> str:
    ppl_fp = results["float"]["ppl"]
    onebit = results["methods"].get("onebit")
    rows = [
        "| model | ppl before distillation | ppl after | gap closed vs OneBit "
        "| output-scale spread over tokens (channel 0 / median channel) "
        "| checkpoint | vs float16 |",
        "|---|---|---|---|---|---|---|",
        f"| {LABELS['float']} | {ppl_fp:.2f} | {ppl_fp:.2f} | | | "
        f"{results['float']['bytes_fp16'] / 1e6:.1f} MB (fp16) | 1.00x |",
    ]
    for method, entry in results["methods"].items():
        closure = ""
        if onebit is not None and method != "onebit":
            closure = f"{100 * gap_closure(onebit['ppl'], entry['ppl'], ppl_fp):+.1f} %"
        spread = ""
        if "token_scales" in entry:
            scales = entry["token_scales"]
            spread = f"{statistics.pstdev(scales['channel0_out']):.3f} %"
            if scales.get("spread_out"):  # absent from runs that kept channel 0 only
                spread += f" / {statistics.median(scales['spread_out']):.3f} %"
        rows.append(
            f"| {label(method, results)} | {entry['ppl_init']:,.0f} | {entry['ppl']:,.2f} | {closure} | {spread} | "
            f"{entry['bytes'] / 1e6:.1f} MB | {results['float']['bytes_fp16'] / entry['bytes']:.2f}x |"
        )
    return "\n".join(rows)


def write_report(results: dict, args: argparse.Namespace, argv: list[str]) -> Path:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"quality-{args.tag}"
    budget = Budget(**{k: v for k, v in results["budget"].items() if k != "tokens"})
    command = "python benchmarks/quality.py " + shlex.join(argv)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    text = "\n".join(
        [
            "# Quality at an equal budget: OneBit vs BinaryMoS vs ternary on SmolLM2-135M-Instruct",
            "",
            f"- date: {datetime.date.today().isoformat()}",
            f"- machine: {machine}",
            f"- command: `{command}`",
            f"- budget, the same for every method: {budget.describe()}, seed {budget.seed}",
            f"- training text: State of the Union addresses before {2000} (the most recent {results['budget']['tokens']:,} tokens)",
            f"- evaluation: perplexity (GPTQ protocol) on the addresses from 2000 on, first {args.eval_windows} windows of "
            f"{args.eval_seq_len} tokens",
            "- checkpoint: packed safetensors with float parts in bfloat16 (float model: float16)",
            "",
            table(results),
            "",
            "Gap closed vs OneBit: `(ppl_onebit - ppl_method) / (ppl_onebit - ppl_float)`; positive is better than OneBit. "
            f"Scale spread: standard deviation over {args.eval_seq_len} held-out tokens of the output scales of "
            f"`{args.scale_layer}`, relative to their mean (OneBit's scales are fixed: 0).",
            "",
        ]
    )
    (stem.with_suffix(".md")).write_text(text, encoding="utf-8")
    (stem.with_suffix(".json")).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return stem.with_suffix(".md")


def plot(results: dict, args: argparse.Namespace) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("The plots need matplotlib: pip install matplotlib (or pass --no-plots)") from error
    args.plots_dir.mkdir(parents=True, exist_ok=True)
    written = []

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, entry in results["methods"].items():
        steps = [row["step"] for row in entry["history"]]
        axes[0].plot(steps, [row["kd_logits"] for row in entry["history"]], label=label(method, results))
        axes[1].plot(steps, [row["kd_hidden"] for row in entry["history"]], label=label(method, results))
    axes[0].set(title="KL(teacher || student) per token", xlabel="step", yscale="log")
    axes[1].set(
        title=f"hidden-state term ({results['budget']['kd_hidden_loss']}, summed over layers)",
        xlabel="step",
        yscale="log",
    )
    axes[0].legend()
    figure.suptitle(f"Distillation of SmolLM2-135M: {results['budget']['tokens']:,} tokens per method")
    figure.tight_layout()
    path = args.plots_dir / f"quality_kd_loss-{args.tag}.png"
    figure.savefig(path, dpi=120)
    written.append(path)

    with_scales = {m: e["token_scales"] for m, e in results["methods"].items() if "token_scales" in e}
    if with_scales:
        with_spread = any(scales.get("spread_out") for scales in with_scales.values())
        figure, axes = plt.subplots(1, 2 if with_spread else 1, figsize=(10 if with_spread else 5.5, 3.8))
        axes = list(axes) if with_spread else [axes]
        for axis, key in zip(axes, ("channel0_out", "spread_out"), strict=False):  # one panel without spreads
            values = {m: scales[key] for m, scales in with_scales.items() if scales.get(key)}
            bins = shared_bins([v for series in values.values() for v in series])
            for method, series in values.items():
                axis.hist(series, bins=bins, alpha=0.6, label=label(method, results))
        axes[0].set(
            title="output scale of channel 0 per token, vs its mean",
            xlabel="deviation (%)",
            ylabel="tokens",
            yscale="log",
        )
        if with_spread:
            axes[1].set(
                title="spread over tokens of each output channel",
                xlabel="std / mean (%)",
                ylabel="channels",
                yscale="log",
            )
        axes[0].legend()
        figure.suptitle(f"Token-adaptive scales of {args.scale_layer} after distillation", fontsize=10)
        figure.tight_layout()
        path = args.plots_dir / f"quality_token_scales-{args.tag}.png"
        figure.savefig(path, dpi=120)
        written.append(path)
    return written


def shared_bins(values: list[float], count: int = 60) -> list[float]:
    """Bin edges covering every series of one panel, so a constant series does not set the range alone."""
    low, high = min(values), max(values)
    margin = max(high - low, 1e-6) * 0.05
    step = (high - low + 2 * margin) / count
    return [low - margin + i * step for i in range(count + 1)]


def write_card(results: dict, args: argparse.Namespace, model: torch.nn.Module | None = None) -> Path:
    """Model card of the BinaryMoS model of this comparison, with its results and the comparison table.

    ``model`` is the distilled student; without it (``--from-json``) a freshly converted one of the same
    shapes stands in: the card reads only its configuration and tensor sizes.
    """
    if model is None:
        model = build_student(smollm2_path(), "binarymos", num_experts=args.num_experts)
        model.to(torch.bfloat16)
    entry = results["methods"]["binarymos"]
    record_base_model(model, BASE_MODEL, license="apache-2.0")
    record_evaluation(
        model,
        {
            f"sotu_2000_ppl_{args.eval_seq_len}": round(entry["ppl"], 2),
            f"float_sotu_2000_ppl_{args.eval_seq_len}": round(results["float"]["ppl"], 2),
            "distillation_tokens": results["budget"]["tokens"],
        },
    )
    card = render_model_card(model, "optimum-binarymos/SmolLM2-135M-Instruct-BinaryMoS")
    card += (
        "\n## Compared at the same distillation budget\n\n"
        f"From `benchmarks/quality.py` ({results['budget']['tokens']:,} training tokens per method; see "
        f"`benchmarks/results/quality-{args.tag}.md` for the command, machine and date). This is a very small budget: the "
        "paper distills for 3 epochs over a C4 shard and WikiText-2, hundreds of millions of tokens.\n\n"
        + table(results)
        + "\n"
    )
    args.cards_dir.mkdir(parents=True, exist_ok=True)
    path = args.cards_dir / CARD_NAME
    path.write_text(card, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = None
    if args.from_json:
        results = json.loads(args.from_json.read_text(encoding="utf-8"))
        argv = results.get("argv", argv)
    else:
        results, model = run(args)
        results["argv"] = argv
    report = write_report(results, args, argv)
    if "binarymos" in results["methods"]:
        print(f"model card: {write_card(results, args, model)}")
    print(report.read_text(encoding="utf-8"))
    if not args.no_plots:
        for path in plot(results, args):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
