"""Forward latency of the packed BinaryMoS layer on CPU against a dense float32 linear, and its weight bytes.

For each number of tokens ``M``, times in the same run, all in float32 under ``torch.no_grad()``:

* ``dense fp32``: ``nn.Linear(K, N)``, the reference;
* ``packed, E experts``: ``PackedBinaryMoSLinear(K, N)`` with 4 experts and with 1 (the OneBit baseline) on
  its default path (``BINARYMOS_BACKEND`` dispatch; the table names the path taken);
* ``pure torch``: the same layers through the reference forward that unpacks the whole weight to float and
  calls ``F.linear``, the path every packed layer took before the kernels existed.

Each figure is the median of ``--repeats`` timed calls after ``--warmup`` untimed ones; the candidates take
turns call by call, so that a slow spell of the machine hits all of them alike. ``benchmarks/cpu_kernels.py``
goes further into the kernels themselves.

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

from optimum_binarymos import PackedBinaryMoSLinear
from optimum_binarymos.kernels import select_backend
from optimum_binarymos.kernels.native import native_kernels
from optimum_binarymos.kernels.torch_backend import NATIVE_MAX_TOKENS


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
    parser.add_argument(
        "--skip-pure-torch", action="store_true", help="do not time the unpack-everything path"
    )
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


def pure_torch_forward(layer: PackedBinaryMoSLinear, x: torch.Tensor) -> torch.Tensor:
    """The reference forward shared with the latent layer: unpack every sign to float, then ``F.linear``."""
    return super(PackedBinaryMoSLinear, layer).forward(x)


def default_path(tokens: int) -> str:
    """The path :class:`PackedBinaryMoSLinear` takes for ``tokens`` float32 CPU tokens."""
    if select_backend(torch.device("cpu")) == "torch" and tokens <= NATIVE_MAX_TOKENS and native_kernels():
        return "native C kernel"
    return "blocked unpack + matmul"


def weight_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module``."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def mebibytes(size: int) -> str:
    return f"{size / 2**20:.2f} MiB"


def experts_label(experts: int) -> str:
    return f"{experts} expert{'s' if experts > 1 else ''}"


def candidates(
    args: argparse.Namespace, x: torch.Tensor, dense: nn.Linear, packed: list[PackedBinaryMoSLinear]
) -> list[tuple[str, Callable[[], object], nn.Module]]:
    """``(label, call, layer)`` for every candidate at this ``x``, the dense reference first."""
    path = default_path(x.shape[0])
    timed = [("dense fp32 `nn.Linear`", partial(dense, x), dense)]
    timed += [
        (f"packed, {experts_label(layer.num_experts)}: {path}", partial(layer, x), layer) for layer in packed
    ]
    if not args.skip_pure_torch:
        timed += [
            (
                f"packed, {experts_label(layer.num_experts)}: pure torch",
                partial(pure_torch_forward, layer, x),
                layer,
            )
            for layer in packed
        ]
    return timed


@torch.no_grad()
def measure(args: argparse.Namespace) -> list[list[str]]:
    """One row per (M, candidate): median time and weight bytes, each also relative to the dense layer."""
    k, n = args.in_features, args.out_features
    dense = dense_layer(k, n)
    packed = [packed_layer(k, n, experts) for experts in args.num_experts]
    dense_bytes = weight_bytes(dense)
    rows = []
    for tokens in args.tokens:
        timed = candidates(args, torch.randn(tokens, k), dense, packed)
        timings = interleaved_medians([call for _, call, _ in timed], args.repeats, args.warmup)
        for (label, _, layer), elapsed in zip(timed, timings, strict=True):
            size = weight_bytes(layer)
            relative_size = f"{dense_bytes / size:.1f}x smaller" if size != dense_bytes else "-"
            rows.append(
                [
                    str(tokens),
                    label,
                    f"{elapsed * 1e3:.2f}",
                    f"{elapsed / timings[0]:.2f}x",
                    mebibytes(size),
                    relative_size,
                ]
            )
    return rows


def render(args: argparse.Namespace, rows: list[list[str]]) -> str:
    header = ["M", "layer: path", "median ms", "time vs dense", "weight bytes", "weights vs dense"]
    lines = [
        f"### Forward of a {args.in_features} -> {args.out_features} linear on CPU, float32 activations "
        f"(median of {args.repeats} interleaved calls, `torch.no_grad()`, {torch.get_num_threads()} threads)",
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
