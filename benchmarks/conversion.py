"""Conversion speed of BinaryMoS at LLaMA-2-7B scale on CPU, as ratios measured in one run.

Three measurements:

a. SVID on one 4096x11008 matrix: exact SVD (``svid_rank1(w, 0)``) against power iteration
   (``svid_rank1(w, 30)``), and how far apart their rank-1 reconstructions are.
b. ``BinaryMoSLinear.from_float`` on the seven linear shapes of one LLaMA-2-7B decoder layer, extrapolated
   to the 32 layers of the model.
c. The real path: a bfloat16 LLaMA checkpoint with 7B-shaped layers (but only ``--layers`` of them) loaded
   with ``from_pretrained(..., quantization_config=BinaryMoSConfig())`` against a plain float
   ``from_pretrained`` of the same folder, extrapolated to 32 layers.

Run from the repository root::

    python benchmarks/conversion.py --layers 2 --output conversion.md

``--skip-svd`` drops the exact SVD of part (a), which takes one to three minutes on two cores.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from optimum_binarymos import BinaryMoSConfig, BinaryMoSLinear
from optimum_binarymos.nn.svid import DEFAULT_SVID_ITERATIONS, svid_rank1

HIDDEN_SIZE = 4096
INTERMEDIATE_SIZE = 11008
NUM_HEADS = 32
VOCAB_SIZE = 32000
MODEL_LAYERS = 32
WEIGHT_STD = 0.02

#: (name, out_features, in_features) of the linears in one LLaMA-2-7B decoder layer.
LAYER_SHAPES = [
    ("q_proj", HIDDEN_SIZE, HIDDEN_SIZE),
    ("k_proj", HIDDEN_SIZE, HIDDEN_SIZE),
    ("v_proj", HIDDEN_SIZE, HIDDEN_SIZE),
    ("o_proj", HIDDEN_SIZE, HIDDEN_SIZE),
    ("gate_proj", INTERMEDIATE_SIZE, HIDDEN_SIZE),
    ("up_proj", INTERMEDIATE_SIZE, HIDDEN_SIZE),
    ("down_proj", HIDDEN_SIZE, INTERMEDIATE_SIZE),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-svd", action="store_true", help="skip the exact SVD of part (a) (1-3 min)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers in the checkpoint of part (c)")
    parser.add_argument(
        "--svid-iterations", type=int, default=DEFAULT_SVID_ITERATIONS, help="power iterations of SVID"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="where to write the temporary checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown tables here")
    return parser.parse_args(argv)


def seconds(function: Callable[[], object]) -> tuple[float, object]:
    """Wall time of one call and its result."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def random_weight(out_features: int, in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(out_features, in_features) * WEIGHT_STD).to(dtype)


def rank1_relative_difference(
    reference: tuple[torch.Tensor, torch.Tensor], other: tuple[torch.Tensor, torch.Tensor]
) -> float:
    """``||a b^T - c d^T||_F / ||a b^T||_F`` without building either matrix (float64 against cancellation)."""
    a, b = (t.double() for t in reference)
    c, d = (t.double() for t in other)
    reference_sq = a.dot(a) * b.dot(b)
    difference_sq = reference_sq + c.dot(c) * d.dot(d) - 2 * a.dot(c) * b.dot(d)
    return (difference_sq.clamp_min(0) / reference_sq).sqrt().item()


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def measure_svid(skip_svd: bool, iterations: int) -> str:
    """Part (a): exact SVD against power iteration on a 4096x11008 matrix."""
    weight = random_weight(HIDDEN_SIZE, INTERMEDIATE_SIZE)
    svid_rank1(weight, iterations)  # warm-up: cheap, and it pages in the matrix
    svid_rank1(weight[:64, :64], 0)  # the first LAPACK call pays a one-time setup of seconds
    power_time, power_factors = seconds(lambda: svid_rank1(weight, iterations))
    rows = [[f"power iteration ({iterations} it.)", f"{power_time:.2f}", "1.0x", "-"]]
    if not skip_svd:
        svd_time, svd_factors = seconds(lambda: svid_rank1(weight, 0))
        difference = rank1_relative_difference(svd_factors, power_factors)
        rows.insert(0, ["exact SVD", f"{svd_time:.2f}", f"{svd_time / power_time:.1f}x", "reference"])
        rows[1][3] = f"{difference:.1e}"
    title = f"### (a) SVID of one {HIDDEN_SIZE}x{INTERMEDIATE_SIZE} matrix (float32, std {WEIGHT_STD})"
    header = ["method", "seconds", "time vs power iteration", "rank-1 reconstruction rel. diff."]
    return title + "\n\n" + table(header, rows)


def measure_from_float(iterations: int, dtype: torch.dtype = torch.bfloat16) -> tuple[str, float]:
    """Part (b): ``BinaryMoSLinear.from_float`` on every linear shape of one decoder layer."""
    warm_up = random_weight(HIDDEN_SIZE, HIDDEN_SIZE, dtype)
    BinaryMoSLinear.from_float(warm_up, svid_iterations=iterations)
    rows, layer_time = [], 0.0
    for name, out_features, in_features in LAYER_SHAPES:
        weight = random_weight(out_features, in_features, dtype)
        elapsed, layer = seconds(lambda w=weight: BinaryMoSLinear.from_float(w, svid_iterations=iterations))
        del layer
        layer_time += elapsed
        rows.append([name, f"{out_features}x{in_features}", f"{elapsed:.2f}"])
    rows.append(["**one decoder layer**", "", f"**{layer_time:.2f}**"])
    rows.append([f"**x {MODEL_LAYERS} layers**", "", f"**{layer_time * MODEL_LAYERS / 60:.1f} min**"])
    title = (
        f"### (b) `BinaryMoSLinear.from_float` per LLaMA-2-7B linear ({dtype_name(dtype)} weights, "
        f"{iterations} SVID iterations, 4 experts)"
    )
    return title + "\n\n" + table(["linear", "shape (out x in)", "seconds"], rows), layer_time


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_checkpoint(folder: Path, layers: int, seed: int) -> None:
    """A bfloat16 LLaMA checkpoint whose decoder layers have LLaMA-2-7B's shapes."""
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=layers,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)


def read_every_weight(model: torch.nn.Module) -> None:
    """Touch every tensor once: a float load returns memory-mapped weights that are only read on first use."""
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.sum()


def load_seconds(folder: Path, read_weights: bool, **kwargs) -> float:
    """Wall time of one ``from_pretrained`` (and of one read of every weight if asked); frees the model."""

    def load() -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, **kwargs)
        if read_weights:
            read_every_weight(model)
        return model

    elapsed, model = seconds(load)
    del model
    gc.collect()
    return elapsed


def read_files(folder: Path) -> None:
    """Read every file once so that all timed loads find it in the page cache."""
    for path in folder.iterdir():
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass


def measure_checkpoint_load(layers: int, iterations: int, seed: int, work_dir: Path | None) -> str:
    """Part (c): converting on load against a plain float load of the same checkpoint."""
    with tempfile.TemporaryDirectory(dir=work_dir) as name:
        folder = Path(name)
        write_checkpoint(folder, layers, seed)
        gc.collect()
        read_files(folder)
        load_seconds(folder, read_weights=True)  # warm-up of the loading code
        lazy_float_time = load_seconds(folder, read_weights=False)
        float_time = load_seconds(folder, read_weights=True)
        config = BinaryMoSConfig(svid_iterations=iterations)
        binarymos_time = load_seconds(folder, read_weights=True, quantization_config=config)
    return format_checkpoint_load(layers, lazy_float_time, float_time, binarymos_time)


def format_checkpoint_load(
    layers: int, lazy_float_time: float, float_time: float, binarymos_time: float
) -> str:
    def row(label: str, total: float, versus_float: str) -> list[str]:
        per_layer = total / layers
        return [
            label,
            f"{total:.2f}",
            f"{per_layer:.2f}",
            versus_float,
            f"{per_layer * MODEL_LAYERS / 60:.1f}",
        ]

    rows = [
        row("float `from_pretrained` alone (weights memory-mapped, not read yet)", lazy_float_time, "-"),
        row("float `from_pretrained` + one read of every weight", float_time, "1.0x"),
        row(
            "BinaryMoS `from_pretrained` (convert on load) + one read of every weight",
            binarymos_time,
            f"{binarymos_time / float_time:.1f}x",
        ),
        row("conversion overhead (difference of the two above)", binarymos_time - float_time, "-"),
    ]
    title = (
        f"### (c) `from_pretrained` of a bfloat16 LLaMA checkpoint: {layers} decoder layers of LLaMA-2-7B shape, "
        f"vocabulary {VOCAB_SIZE}"
    )
    note = (
        "The file is in the page cache for every load. A float load only maps the file, so both timed loads "
        "end with one read of every weight, which is what the first forward pass would pay. "
        f"Per layer = total / {layers}, so the fixed cost of embeddings and `lm_head` is spread over the layers; "
        f"the {MODEL_LAYERS}-layer column scales that per-layer figure and is therefore an upper bound."
    )
    header = ["load", "seconds", "seconds per layer", "time vs float", f"minutes for {MODEL_LAYERS} layers"]
    return title + "\n\n" + table(header, rows) + "\n\n" + note


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    sections = [measure_svid(args.skip_svd, args.svid_iterations)]
    print(sections[-1] + "\n", flush=True)
    layer_section, _ = measure_from_float(args.svid_iterations)
    sections.append(layer_section)
    print(sections[-1] + "\n", flush=True)
    sections.append(measure_checkpoint_load(args.layers, args.svid_iterations, args.seed, args.work_dir))
    print(sections[-1], flush=True)
    if args.output is not None:
        args.output.write_text("\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
