"""Triton kernels of the packed BinaryMoS linear against ``F.linear`` on a GPU, by number of tokens.

For each weight shape, activation dtype and number of tokens ``M``, times each variant over a rotation of
independent weight copies whose total is at least twice the L2 cache, so that every call reads its weights from
DRAM like successive layers of a model (one packed 4096 x 11008 weight is 5.6 MB and would otherwise sit in
L2), and reports the time per call:

* ``dense``: ``F.linear(x, W)`` with a dense ``(N, K)`` weight in the activations' dtype;
* ``packed``: :func:`optimum_binarymos.kernels.binarymos_linear` on the Triton backend, router gates given
  (the kernel alone), with the strategy the dispatcher picks; ``--strategies`` adds each strategy forced;
* ``layer``: a whole ``PackedBinaryMoSLinear`` forward, router included.

``--timing graph`` (the default) replays the rotation from a CUDA graph (``triton.testing.do_bench_cudagraph``),
as a decoder served with CUDA graphs runs: at one token a kernel lasts about as long as launching it from
Python, so eager timing would measure the launch path. ``--timing eager`` times plain calls with
``triton.testing.do_bench`` (median, L2 flushed), launch overhead included.

It reports the speedup over dense and the achieved bandwidth (bytes of weights, activations, scales and
outputs read or written once, over the time) as a fraction of the device's peak (from its memory clock and bus
width, or ``--peak-gbps``). Results go to a markdown table and a CSV; ``docs/plot_speedup.py`` plots the CSV.

Run from the repository root on a CUDA machine::

    python benchmarks/gpu_kernels.py --output-dir benchmarks/results
    python docs/plot_speedup.py benchmarks/results/gpu_kernels-<device>.csv

``--device cpu`` runs a smoke test under ``TRITON_INTERPRET=1`` (small shapes, wall-clock timing).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from optimum_binarymos import PackedBinaryMoSLinear
from optimum_binarymos.kernels import binarymos_linear
from optimum_binarymos.kernels.dispatch import BACKEND_VARIABLE
from optimum_binarymos.packing import unpack_signs

TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]
#: (in_features K, out_features N) of LLaMA-2-7B's linears: attention, MLP up/gate, MLP down.
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
TIMING_NOTES = {
    "graph": "`do_bench_cudagraph` means (CUDA-graph replays, no launch overhead)",
    "eager": "`do_bench` medians (eager calls, launch overhead included)",
}
CSV_FIELDS = [
    "timing",
    "device",
    "dtype",
    "K",
    "N",
    "M",
    "experts",
    "variant",
    "ms",
    "dense_ms",
    "speedup",
    "gbps",
    "peak_fraction",
    "max_error",
]

#: Largest error allowed against the float32 reference, in units of the activation dtype's epsilon relative to the
#: reference's largest output: the kernels accumulate in float32, so what is left is the rounding of the inputs'
#: products and of the output to the activation dtype.
ERROR_BUDGET_EPS = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=TOKENS, help="values of M")
    parser.add_argument(
        "--shapes", nargs="+", default=[f"{k}x{n}" for k, n in SHAPES], help="KxN pairs (in x out features)"
    )
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float16", "bfloat16"])
    parser.add_argument("--num-experts", type=int, default=4)
    parser.add_argument(
        "--strategies", action="store_true", help="also time the GEMV and GEMM kernels forced"
    )
    parser.add_argument(
        "--timing",
        choices=["graph", "eager"],
        default="graph",
        help="replay from a CUDA graph (kernel time) or time eager calls (launch overhead included)",
    )
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth, GB/s")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="write gpu_kernels-<device>.md and .csv here"
    )
    return parser.parse_args(argv)


def peak_bandwidth_gbps(device: torch.device, override: float | None) -> float | None:
    """Peak DRAM bandwidth in GB/s: ``--peak-gbps``, else 2 (double data rate) x memory clock x bus width."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def timer(device: torch.device, timing: str) -> Callable[[Callable[[], object]], float]:
    """Milliseconds per call of a function: ``do_bench_cudagraph`` (mean over graph replays) or ``do_bench``
    (median) on CUDA, a wall-clock median elsewhere (smoke runs). The function is called once first, so that
    autotuning and compilation happen before any graph is captured."""
    if device.type == "cuda":
        from triton.testing import do_bench, do_bench_cudagraph

        def cuda_time(function: Callable[[], object]) -> float:
            function()
            torch.cuda.synchronize(device)
            if timing == "graph":
                return do_bench_cudagraph(function)
            return do_bench(function, return_mode="median")

        return cuda_time

    def wall_clock(function: Callable[[], object]) -> float:
        function()
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            function()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e3

    return wall_clock


def rotation_length(weight_bytes: int, device: torch.device) -> int:
    """Number of weight copies whose total is at least twice the device's L2 cache (1 off CUDA)."""
    if device.type != "cuda":
        return 1
    l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
    return max(1, -(-2 * l2_bytes // weight_bytes))


@torch.no_grad()
def packed_layer(
    k: int, n: int, experts: int, dtype: torch.dtype, device: torch.device
) -> PackedBinaryMoSLinear:
    layer = PackedBinaryMoSLinear(k, n, experts, bias=False, dtype=dtype, device=device)
    layer.weight.copy_(torch.randint(0, 256, layer.weight.shape, dtype=torch.uint8, device=device))
    layer.scale_in.uniform_(0.5, 1.5)
    layer.scale_out.uniform_(0.005, 0.015)
    return layer.requires_grad_(False)


def moved_bytes(m: int, k: int, n: int, experts: int, element: int, packed: bool) -> int:
    """Bytes a kernel must move at least once: weights, activations in, outputs out, and (packed) the
    tables."""
    weights = n * -(-k // 8) if packed else n * k * element
    tables = experts * (k + n) * element + m * experts * 4 if packed else 0
    return weights + m * k * element + m * n * element + tables


def calls(
    x: torch.Tensor,
    layers: list[PackedBinaryMoSLinear],
    dense_weights: list[torch.Tensor],
    strategies: bool,
) -> dict[str, tuple[int, Callable[[], object]]]:
    """The variants timed for activations ``x``, each as ``(calls per round, round)``: dense over its weight
    copies, the packed kernel (gates given) and the whole layer over the packed copies."""
    from optimum_binarymos.kernels.triton import linear as triton_linear

    operands = [
        (layer.weight, layer.in_features, layer.scale_in, layer.scale_out, layer.router_gates(x))
        for layer in layers
    ]
    variants: dict[str, tuple[int, Callable[[], object]]] = {
        "dense": (len(dense_weights), lambda: [F.linear(x, weight) for weight in dense_weights]),
        "packed": (len(layers), lambda: [binarymos_linear(x, *args) for args in operands]),
        "layer": (len(layers), lambda: [layer(x) for layer in layers]),
    }
    if strategies:
        for strategy in ("gemv", "gemm"):

            def forced(strategy: str = strategy) -> list[torch.Tensor]:
                return [triton_linear.packed_linear(x, *args, None, strategy=strategy) for args in operands]

            variants[f"packed {strategy}"] = (len(layers), forced)
    return variants


@torch.no_grad()
def reference_output(layer: PackedBinaryMoSLinear, x: torch.Tensor) -> torch.Tensor:
    """``((x * s_in) @ sign(W)^T) * s_out`` in float32 from the unpacked signs, without any kernel."""
    signs = unpack_signs(layer.weight, layer.in_features, dtype=torch.float32)
    gates = layer.router_gates(x)
    scale_in, scale_out = layer.scale_in.float(), layer.scale_out.float()
    if gates is not None:
        scale_in, scale_out = gates.float() @ scale_in, gates.float() @ scale_out
    return ((x.float() * scale_in) @ signs.t()) * scale_out


def check_outputs(x: torch.Tensor, layer: PackedBinaryMoSLinear, variants: dict) -> dict[str, float]:
    """Each packed variant's output on ``layer`` against :func:`reference_output`: the largest error relative to
    the largest reference value. Raises when one exceeds :data:`ERROR_BUDGET_EPS` epsilons of ``x``'s dtype, so
    that no timing of a wrong kernel is ever recorded."""
    expected = reference_output(layer, x)
    scale = expected.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    budget = ERROR_BUDGET_EPS * torch.finfo(x.dtype).eps
    errors = {}
    for name, (_, run) in variants.items():
        if name == "dense":
            continue
        output = run()[0].float()
        errors[name] = ((output - expected).abs().max() / scale).item()
        if not errors[name] <= budget:
            raise AssertionError(
                f"{name} computes a wrong result on {tuple(x.shape)} x {tuple(layer.weight.shape)}: max error "
                f"{errors[name]:.2e} of the largest output, more than {budget:.2e}"
            )
    return errors


@torch.no_grad()
def measure(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    bench = timer(device, args.timing)
    peak = peak_bandwidth_gbps(device, args.peak_gbps)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    records = []
    for shape in args.shapes:
        k, n = (int(part) for part in shape.lower().split("x"))
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            dense_weights = [
                torch.randn(n, k, dtype=dtype, device=device) * 0.02
                for _ in range(rotation_length(n * k * torch.finfo(dtype).bits // 8, device))
            ]
            layers = [
                packed_layer(k, n, args.num_experts, dtype, device)
                for _ in range(rotation_length(n * -(-k // 8), device))
            ]
            for m in args.tokens:
                x = torch.randn(m, k, dtype=dtype, device=device)
                variants = calls(x, layers, dense_weights, args.strategies)
                errors = check_outputs(x, layers[0], variants)
                timings = {name: bench(run) / count for name, (count, run) in variants.items()}
                for name, ms in timings.items():
                    size = moved_bytes(m, k, n, args.num_experts, x.element_size(), packed=name != "dense")
                    gbps = size / (ms * 1e-3) / 1e9
                    records.append(
                        {
                            "timing": args.timing if device.type == "cuda" else "wall clock",
                            "device": device_name,
                            "dtype": dtype_name,
                            "K": k,
                            "N": n,
                            "M": m,
                            "experts": args.num_experts,
                            "variant": name,
                            "ms": round(ms, 5),
                            "dense_ms": round(timings["dense"], 5),
                            "speedup": round(timings["dense"] / ms, 3),
                            "gbps": round(gbps, 1),
                            "peak_fraction": round(gbps / peak, 3) if peak else "",
                            "max_error": f"{errors[name]:.2e}" if name in errors else "",
                        }
                    )
                    print(records[-1], flush=True)
    return records


def render(args: argparse.Namespace, records: list[dict], peak: float | None) -> str:
    device = records[0]["device"] if records else args.device
    header = ["K x N", "dtype", "M", "variant", "ms", "speedup vs F.linear", "GB/s", "of peak"]
    lines = [
        f"### Packed BinaryMoS Triton kernels vs `F.linear` on {device}, {args.num_experts} experts",
        "",
        f"Peak bandwidth used: {f'{peak:.0f} GB/s' if peak else 'unknown'}; torch {torch.__version__}; "
        f"{datetime.date.today().isoformat()}; timing: {TIMING_NOTES[args.timing]}; each call over a rotation of "
        "weight copies of at least twice the L2 cache.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for r in records:
        fraction = f"{r['peak_fraction']:.0%}" if r["peak_fraction"] != "" else "-"
        lines.append(
            f"| {r['K']} x {r['N']} | {r['dtype']} | {r['M']} | {r['variant']} | {r['ms']:.4f} | "
            f"{r['speedup']:.2f}x | {r['gbps']:.0f} | {fraction} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine (or --device cpu under TRITON_INTERPRET=1)")
    os.environ[BACKEND_VARIABLE] = "triton"
    records = measure(args)
    report = render(args, records, peak_bandwidth_gbps(device, args.peak_gbps))
    print(report)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", records[0]["device"].lower()).strip("-") if records else "none"
        (args.output_dir / f"gpu_kernels-{slug}.md").write_text(report + "\n")
        with open(args.output_dir / f"gpu_kernels-{slug}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(records)


if __name__ == "__main__":
    main()
