"""Forward latency of the packed BinaryMoS layer on CPU, on its default path, against a dense float32 linear.

For each number of tokens ``M`` the layers below are timed in the same run, interleaved call by call (one call
of each per round, so that a burst of load on a shared machine hits all of them alike); each figure is the
median over the rounds, under ``torch.no_grad()``, float32 activations:

* ``dense fp32``: ``nn.Linear(K, N)``, the reference;
* ``packed, E experts``: ``PackedBinaryMoSLinear`` on its default CPU path (the native C kernel up to
  ``NATIVE_MAX_TOKENS`` tokens, unpacking blocks of rows then a dense matmul above);
* ``packed, E experts, int8 activations``: the same layer with ``activation_bits=8`` (the native int8-activation
  kernel at every ``M``);
* with ``--strategies``, the same packed layer through each strategy forced (native kernel, blocked unpack and
  matmul, pure torch without the native library), which shows where the crossover lies.

``--design`` adds the alternatives that were measured for the product with the signs at one token: the shipped
AVX2 loop, the portable C loop, pure torch unpack and matmul, T-MAC-style lookup tables in torch (per group of
8 inputs, a 256-entry table of partial sums indexed by the packed byte) and, with ``--torch-compile``, an
unpack-multiply-sum compiled by ``torch.compile`` (about a minute of compilation).

``--bandwidth`` measures the one-token packed layer against the memory-bandwidth limit of its own bytes, in the
same alternating rounds as STREAM-like loops: a read of a ``--stream-mib`` float32 buffer (``sum``, the limit of a
kernel that only reads its weights) and a copy (``copy_``, counted as read plus write, as STREAM does). The layer
is timed cold, over enough distinct layers that their bytes (signs, scales, router) are four times the last-level
cache, so each call streams its weights from memory, and hot, one layer again and again. Per call: bytes / time,
as a share of the read bandwidth. Both the native kernel alone (the router's gates computed beforehand in torch)
and the layer's forward (what a model calls) are timed, with float and with int8 activations.

Run from the repository root (``benchmarks/results/cpu_kernels-cpu.md`` records both runs)::

    python benchmarks/cpu_kernels.py --tokens 1 8 128 --budget-s 40
    python benchmarks/cpu_kernels.py --threads 1 --clock cpu --strategies --design --torch-compile
    python benchmarks/cpu_kernels.py --bandwidth --tokens 1 --output benchmarks/results/cpu_kernels-bandwidth-cpu.md

On a machine shared with other jobs, ``--threads 1 --clock cpu`` gives figures that other jobs barely move.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from optimum_binarymos import PackedBinaryMoSLinear, unpack_signs
from optimum_binarymos.hardware import cpu_info
from optimum_binarymos.kernels import set_activation_bits, torch_backend
from optimum_binarymos.kernels.native import NativeKernels, build_library, native_kernels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 128], help="values of M (rows of x)")
    parser.add_argument("--in-features", type=int, default=4096, help="K")
    parser.add_argument("--out-features", type=int, default=4096, help="N")
    parser.add_argument("--num-experts", type=int, nargs="+", default=[4, 1], help="packed layers to time")
    parser.add_argument("--strategies", action="store_true", help="also time each CPU strategy forced")
    parser.add_argument("--design", action="store_true", help="also time the design alternatives at M=1")
    parser.add_argument("--torch-compile", action="store_true", help="include torch.compile in --design")
    parser.add_argument("--bandwidth", action="store_true", help="also measure M=1 against the bandwidth limit")
    parser.add_argument("--stream-mib", type=int, default=512, help="buffer of the STREAM-like loops")
    parser.add_argument("--cache-mib", type=int, default=None, help="last-level cache (default: from sysfs)")
    parser.add_argument("--max-rounds", type=int, default=300, help="most timed rounds per M")
    parser.add_argument("--min-rounds", type=int, default=15, help="fewest timed rounds per M")
    parser.add_argument("--budget-s", type=float, default=30.0, help="time allowed per M, sets the rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each layer before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: CPU time of the process, which other jobs on a shared machine barely "
        "disturb (meaningful as a latency with --threads 1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    return parser.parse_args(argv)


def interleaved_medians(
    functions: dict[str, Callable[[], object]], args: argparse.Namespace
) -> tuple[dict[str, float], int]:
    """Median seconds of each function, timed one call each per round; also returns the number of rounds."""
    for function in functions.values():
        for _ in range(args.warmup):
            function()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    start = clock()
    for function in functions.values():
        function()
    per_round = clock() - start
    rounds = int(min(args.max_rounds, max(args.min_rounds, args.budget_s / max(per_round, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = clock()
            function()
            samples[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in samples.items()}, rounds


@torch.no_grad()
def packed_layer(in_features: int, out_features: int, num_experts: int) -> PackedBinaryMoSLinear:
    """A packed layer with random bits, positive scales and a random router (speed does not depend on the
    values)."""
    layer = PackedBinaryMoSLinear(in_features, out_features, num_experts, bias=False, dtype=torch.float32)
    layer.weight.copy_(torch.randint(0, 256, layer.weight.shape, dtype=torch.uint8))
    layer.scale_in.uniform_(0.5, 1.5)
    layer.scale_out.uniform_(0.005, 0.015)
    return layer.requires_grad_(False)


def int8_views(layers) -> list[PackedBinaryMoSLinear]:
    """Shallow copies of packed layers with ``activation_bits=8``, sharing their tensors (no extra memory)."""
    views = [copy.copy(layer) for layer in layers]
    set_activation_bits(nn.ModuleList(views), 8)
    return views


def weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def forced(layer: PackedBinaryMoSLinear, x: torch.Tensor, strategy: str) -> Callable[[], object]:
    """A call of ``layer`` on ``x`` through one CPU strategy (router gates included, as in a forward)."""

    def tables():
        return layer.scale_in, layer.scale_out, layer.router_gates(x), layer.bias

    if strategy == "native kernel":
        kernels = native_kernels()
        return lambda: kernels.linear(x, layer.weight, layer.in_features, *tables())
    if strategy == "unpack blocks + matmul":

        def blocked():
            # The blocked strategy with the native unpacking: lift the token bound for this call only.
            saved, torch_backend.NATIVE_MAX_TOKENS = torch_backend.NATIVE_MAX_TOKENS, 0
            try:
                return torch_backend.packed_linear(x, layer.weight, layer.in_features, *tables())
            finally:
                torch_backend.NATIVE_MAX_TOKENS = saved

        return blocked
    return lambda: torch_backend.packed_linear(
        x, layer.weight, layer.in_features, *tables(), use_native=False
    )


STRATEGIES = ("native kernel", "unpack blocks + matmul", "pure torch (no native library)")


@torch.no_grad()
def measure(args: argparse.Namespace) -> list[list[str]]:
    k, n = args.in_features, args.out_features
    dense = nn.Linear(k, n, bias=False, dtype=torch.float32).requires_grad_(False)
    packed = {experts: packed_layer(k, n, experts) for experts in args.num_experts}
    packed_int8 = dict(zip(packed, int8_views(packed.values()), strict=True))
    dense_bytes = weight_bytes(dense)
    rows = []
    for tokens in args.tokens:
        x = torch.randn(tokens, k)
        functions: dict[str, Callable[[], object]] = {"dense fp32 `nn.Linear`": lambda x=x: dense(x)}
        sizes = {"dense fp32 `nn.Linear`": dense_bytes}
        for experts, layer in packed.items():
            label = f"packed, {experts} expert{'s' if experts > 1 else ''}"
            functions[label] = lambda layer=layer, x=x: layer(x)
            sizes[label] = weight_bytes(layer)
            functions[f"{label}, int8 activations"] = lambda layer=packed_int8[experts], x=x: layer(x)
            sizes[f"{label}, int8 activations"] = weight_bytes(layer)
            if args.strategies:
                for strategy in STRATEGIES:
                    functions[f"{label}, {strategy}"] = forced(layer, x, strategy)
                    sizes[f"{label}, {strategy}"] = weight_bytes(layer)
        medians, rounds = interleaved_medians(functions, args)
        reference = medians["dense fp32 `nn.Linear`"]
        for label, seconds in medians.items():
            rows.append(
                [
                    str(tokens),
                    label,
                    f"{seconds * 1e3:.3f}",
                    f"{reference / seconds:.2f}x",
                    f"{sizes[label] / 2**20:.2f} MiB",
                    str(rounds),
                ]
            )
    return rows


def lookup_table_product(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """T-MAC-style product in torch for one token: per group of 8 inputs, the 256 possible signed sums, then
    one lookup per packed byte (the int64 indices are made per call: keeping them would cost 64 bits per
    byte)."""
    groups = packed.shape[1]
    patterns = SIGN_PATTERNS.to(x.dtype)  # (256, 8)
    tables = x.view(groups, 8) @ patterns.T  # (K / 8, 256)
    return tables.gather(1, packed.T.long()).sum(0)


#: Row ``b``: the signs that byte value ``b`` encodes, bit ``j`` (least significant first) for column ``j``.
SIGN_PATTERNS = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1) * 2 - 1


def unpack_multiply_sum(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    bits = (packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    signs = bits.reshape(packed.shape[0], -1).to(x.dtype) * 2 - 1
    return (x.unsqueeze(1) * signs.unsqueeze(0)).sum(-1)


@torch.no_grad()
def measure_design(args: argparse.Namespace) -> tuple[list[list[str]], list[str]]:
    """``x @ sign(W)^T`` for one token through each alternative; rows and notes (build and compile times)."""
    k, n = args.in_features, args.out_features
    if k % 8:
        raise SystemExit("--design needs in_features divisible by 8")
    dense = torch.randn(n, k)
    packed = torch.randint(0, 256, (n, k // 8), dtype=torch.uint8)
    x = torch.randn(1, k)
    notes = []
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        portable = NativeKernels(build_library(cache_dir=cache, extra_flags=("-DBINARYMOS_PORTABLE",)))
        notes.append(f"compiling the C library took {time.perf_counter() - start:.1f} s")
    shipped = native_kernels()
    functions: dict[str, Callable[[], object]] = {
        "dense fp32 `F.linear`": lambda: torch.nn.functional.linear(x, dense),
        f"native C, {shipped.simd} masked sum (shipped)": lambda: shipped.linear(
            x, packed, k, None, None, None, None
        ),
        "native C, portable sign-table loop": lambda: portable.linear(x, packed, k, None, None, None, None),
        "torch: `unpack_signs` + matmul": lambda: x @ unpack_signs(packed, k).T,
        "torch: T-MAC-style lookup tables": lambda: lookup_table_product(x[0], packed),
    }
    if args.torch_compile:
        compiled = torch.compile(unpack_multiply_sum, dynamic=False)
        start = time.perf_counter()
        compiled(x, packed)
        notes.append(f"`torch.compile` took {time.perf_counter() - start:.0f} s to compile")
        functions["`torch.compile`: unpack, multiply, sum"] = lambda: compiled(x, packed)
    expected = x @ unpack_signs(packed, k).T
    for label, function in functions.items():
        if not label.startswith("dense"):
            torch.testing.assert_close(function().reshape(expected.shape), expected, rtol=1e-4, atol=1e-3)
    medians, rounds = interleaved_medians(functions, args)
    reference = medians["dense fp32 `F.linear`"]
    rows = [
        ["1", label, f"{seconds * 1e3:.3f}", f"{reference / seconds:.2f}x", str(rounds)]
        for label, seconds in medians.items()
    ]
    return rows, notes


def last_level_cache_bytes() -> int:
    """The largest cache of CPU 0 in sysfs (one instance, as ``lscpu -C`` lists it), or 32 MiB when there is none."""
    sizes = []
    for index in range(4):
        path = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        if path.is_file():
            text = path.read_text().strip()
            factor = {"K": 2**10, "M": 2**20}.get(text[-1], 1)
            sizes.append(int(text.rstrip("KM")) * factor)
    return max(sizes, default=32 * 2**20)


@torch.no_grad()
def measure_bandwidth(args: argparse.Namespace) -> tuple[list[list[str]], list[str]]:
    """One-token layer calls against STREAM-like read and copy bandwidth, timed in the same rounds."""
    k, n = args.in_features, args.out_features
    experts = args.num_experts[0]
    cache = args.cache_mib * 2**20 if args.cache_mib else last_level_cache_bytes()
    probe = packed_layer(k, n, experts)
    per_layer = weight_bytes(probe)
    count = max(2, -(-4 * cache // per_layer))
    layers = [probe, *(packed_layer(k, n, experts) for _ in range(count - 1))]
    x = torch.randn(1, k)
    kernels = native_kernels()
    if kernels is None:
        raise SystemExit("--bandwidth needs the native library")
    calls = [
        (layer.weight, layer.scale_in, layer.scale_out, layer.router_gates(x)) for layer in layers
    ]  # the gates are computed beforehand: the kernel row times the C kernel alone

    def kernel_sweep():
        for weight, scale_in, scale_out, gates in calls:
            kernels.linear(x, weight, k, scale_in, scale_out, gates, None)

    def forward_sweep():
        for layer in layers:
            layer(x)

    def kernel_hot():
        weight, scale_in, scale_out, gates = calls[0]
        for _ in range(count):
            kernels.linear(x, weight, k, scale_in, scale_out, gates, None)

    def kernel_sweep_int8():
        for weight, scale_in, scale_out, gates in calls:
            kernels.linear(x, weight, k, scale_in, scale_out, gates, None, activation_bits=8)

    def forward_sweep_int8():
        for layer in layers_int8:
            layer(x)

    def kernel_hot_int8():
        weight, scale_in, scale_out, gates = calls[0]
        for _ in range(count):
            kernels.linear(x, weight, k, scale_in, scale_out, gates, None, activation_bits=8)

    layers_int8 = int8_views(layers)

    source = torch.ones(args.stream_mib * 2**20 // 4)
    target = torch.empty_like(source)
    functions = {
        "read": lambda: source.sum(),
        "copy": lambda: target.copy_(source),
        "kernel, cold": kernel_sweep,
        "forward, cold": forward_sweep,
        "kernel, hot": kernel_hot,
        "kernel, int8 activations, cold": kernel_sweep_int8,
        "forward, int8 activations, cold": forward_sweep_int8,
        "kernel, int8 activations, hot": kernel_hot_int8,
    }
    medians, rounds = interleaved_medians(functions, args)
    read = source.numel() * 4 / medians["read"]
    copy = 2 * source.numel() * 4 / medians["copy"]
    rows = [
        ["STREAM-like read (`sum`)", f"{medians['read'] * 1e3:.2f} ms / {args.stream_mib} MiB",
         f"{read / 1e9:.1f}", "100 %"],
        ["STREAM-like copy (`copy_`, read + write)", f"{medians['copy'] * 1e3:.2f} ms / {args.stream_mib} MiB",
         f"{copy / 1e9:.1f}", f"{copy / read:.0%}"],
    ]  # fmt: skip
    limit_us = per_layer / read * 1e6
    for label in list(functions)[2:]:
        seconds = medians[label] / count
        achieved = per_layer / seconds
        rows.append([f"packed layer, {label}", f"{seconds * 1e6:.1f} us per call", f"{achieved / 1e9:.1f}",
                     f"{achieved / read:.0%}"])  # fmt: skip
    notes = [
        f"{k} -> {n}, {experts} experts, {per_layer / 2**20:.2f} MiB per layer (signs, scales, router);"
        f" {count} distinct layers ({count * per_layer / 2**20:.0f} MiB) against a {cache / 2**20:.0f} MiB"
        f" last-level cache; {rounds} rounds",
        f"bandwidth limit of one call: {limit_us:.1f} us (its bytes at the read bandwidth)",
    ]
    return rows, notes


def machine() -> str:
    model = cpu_info()
    kernels = native_kernels()
    native = f"native kernel: {kernels.simd}" if kernels is not None else "native kernel: unavailable"
    return (
        f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}; "
        f"{native}; {datetime.date.today().isoformat()}; "
        f"load average {os.getloadavg()[0]:.1f} when the run ended"
    )


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def render(
    args: argparse.Namespace, rows: list[list[str]], design: tuple | None, bandwidth: tuple | None = None
) -> str:
    lines = [
        f"### Forward of a {args.in_features} -> {args.out_features} linear on CPU, float32 activations",
        "",
        f"Machine: {machine()}.",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        *table(["M", "layer", "median ms", "speed vs dense fp32", "weights", "rounds"], rows),
        "",
        f"Speed vs dense = dense median time / this layer's median time (higher is faster); "
        f"{'CPU time of the process' if args.clock == 'cpu' else 'wall-clock time'} per call.",
    ]
    if design is not None:
        design_rows, notes = design
        lines += [
            "",
            f"### Design alternatives for `x @ sign(W)^T`, one token, "
            f"{args.in_features} -> {args.out_features}",
            "",
            *table(["M", "implementation", "median ms", "speed vs dense fp32", "rounds"], design_rows),
            "",
            "; ".join(notes)[:1].upper() + "; ".join(notes)[1:] + " (wall clock).",
        ]
    if bandwidth is not None:
        bandwidth_rows, notes = bandwidth
        lines += [
            "",
            "### One token against the memory-bandwidth limit of the layer's bytes",
            "",
            *table(["measure", "median time", "GB/s", "share of read bandwidth"], bandwidth_rows),
            "",
            "; ".join(notes) + ". GB/s of a layer: its bytes / its time per call (wall clock).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    report = render(
        args,
        measure(args),
        measure_design(args) if args.design else None,
        measure_bandwidth(args) if args.bandwidth else None,
    )
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
