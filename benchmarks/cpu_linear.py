"""Forward latency of the packed BinaryMoS layer on CPU (the pure-torch path) against a dense float32 linear.

For each number of tokens ``M``, times ``PackedBinaryMoSLinear`` (with 4 experts and with 1, the OneBit
baseline) and a dense ``nn.Linear`` of the same ``(N, K)`` shape, all in float32, in the same run. Each figure
is the median of ``--repeats`` timed calls under ``torch.no_grad()`` after ``--warmup`` untimed ones; the
candidates take turns call by call, so that a slow spell of the machine hits all of them alike. The packed
path unpacks the sign bits to a dense float matrix on every call, so it is expected to be slower than the
dense layer; ``unpack_signs`` alone is timed as well to show how much of the time it takes.

Run from the repository root::

    python benchmarks/cpu_linear.py --tokens 1 8 128 --in-features 4096 --out-features 4096 --output cpu_linear.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from optimum_binarymos import PackedBinaryMoSLinear, unpack_signs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 128], help="values of M (rows of x)")
    parser.add_argument("--in-features", type=int, default=4096, help="K")
    parser.add_argument("--out-features", type=int, default=4096, help="N")
    parser.add_argument("--num-experts", type=int, nargs="+", default=[4, 1], help="packed layers to time")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table here")
    return parser.parse_args(argv)


def interleaved_medians(functions: list[Callable[[], object]], repeats: int, warmup: int) -> list[float]:
    """Median seconds per call of each function, calling them in turn within every repeat."""
    for _ in range(warmup):
        for function in functions:
            function()
    timings: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, samples in zip(functions, timings, strict=True):
            start = time.perf_counter()
            function()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in timings]


def dense_layer(in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=False, dtype=torch.float32)


@torch.no_grad()
def packed_layer(in_features: int, out_features: int, num_experts: int) -> PackedBinaryMoSLinear:
    """A packed layer with random bits and positive scales: the speed does not depend on the values."""
    layer = PackedBinaryMoSLinear(in_features, out_features, num_experts, bias=False, dtype=torch.float32)
    layer.weight.copy_(torch.randint(0, 256, layer.weight.shape, dtype=torch.uint8))
    layer.scale_in.uniform_(0.5, 1.5)
    layer.scale_out.uniform_(0.005, 0.015)
    return layer.requires_grad_(False)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module``."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def mebibytes(size: int) -> str:
    return f"{size / 2**20:.2f} MiB"


def layers_to_time(args: argparse.Namespace) -> list[tuple[str, nn.Module]]:
    """``(label, layer)`` pairs, the dense reference first."""
    k, n = args.in_features, args.out_features
    layers: list[tuple[str, nn.Module]] = [("dense fp32 `nn.Linear`", dense_layer(k, n))]
    for experts in args.num_experts:
        label = f"packed, {experts} expert{'s' if experts > 1 else ''}"
        layers.append((label, packed_layer(k, n, experts)))
    return layers


@torch.no_grad()
def measure(args: argparse.Namespace) -> list[list[str]]:
    """One row per (M, candidate): median time and weight bytes, each also relative to the dense layer."""
    layers = layers_to_time(args)
    dense_bytes = weight_bytes(layers[0][1])
    packed_signs = layers[-1][1].weight
    rows = []
    for tokens in args.tokens:
        x = torch.randn(tokens, args.in_features)
        calls = [partial(layer, x) for _, layer in layers]
        calls.append(partial(unpack_signs, packed_signs, args.in_features))
        timings = interleaved_medians(calls, args.repeats, args.warmup)
        for (label, layer), elapsed in zip(layers, timings, strict=False):
            size = weight_bytes(layer)
            relative_size = f"{dense_bytes / size:.1f}x smaller" if size != dense_bytes else "-"
            rows.append(timing_row(tokens, label, elapsed, timings[0], mebibytes(size), relative_size))
        rows.append(
            timing_row(tokens, "`unpack_signs` alone (inside every packed call)", timings[-1], timings[0])
        )
    return rows


def timing_row(
    tokens: int, label: str, elapsed: float, dense: float, size: str = "-", relative_size: str = "-"
) -> list[str]:
    return [str(tokens), label, f"{elapsed * 1e3:.2f}", f"{elapsed / dense:.1f}x", size, relative_size]


def render(args: argparse.Namespace, rows: list[list[str]]) -> str:
    header = ["M", "layer", "median ms", "time vs dense", "weight bytes", "weights vs dense"]
    lines = [
        f"### Forward of a {args.in_features} -> {args.out_features} linear on CPU, float32 activations "
        f"(median of {args.repeats} interleaved calls, `torch.no_grad()`)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    report = render(args, measure(args))
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
