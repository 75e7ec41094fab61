"""Float against int8 activations in each native build's own loops: the default build of this machine and the build
without AVX-512 (``-DBINARYMOS_NO_AVX512``: the AVX2 loops that AVX2-only CPUs run), one run, alternating rounds.

Per build, shape and token count: the median microseconds of ``NativeKernels.linear`` with float activations and
with ``activation_bits=8`` (4 experts, the router's gates computed in the kernel), and their ratio. Both builds run on
this CPU, so the AVX2 rows say how the AVX2 int8 loop compares with the AVX2 float loop, not how fast an AVX2-only
CPU is. The float column is the C loop itself at every token count: above 32 tokens a layer with float activations
does not run it (it unpacks blocks of signs for a dense matmul; ``cpu_kernels.py`` times that path).

Run from the repository root::

    python benchmarks/int8_loops_cpu.py --output benchmarks/results/int8_loops-cpu.md
    python benchmarks/int8_loops_cpu.py --tiny   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from optimum_binarymos import pack_signs
from optimum_binarymos.hardware import cpu_info
from optimum_binarymos.kernels.native import NativeKernels, build_library

#: (tokens, in_features, out_features): SmolLM2-135M's MLP shapes at one token, and a 4096 x 4096 layer.
SHAPES = [(1, 576, 1536), (1, 1536, 576), (1, 4096, 4096), (128, 4096, 4096)]
TINY_SHAPES = [(1, 64, 32), (5, 96, 40)]
BUILDS = {"default": (), "without AVX-512": ("-DBINARYMOS_NO_AVX512",)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget-ms", type=float, default=200.0, help="time of one timed batch of calls")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, 2 rounds (smoke run)")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    return parser.parse_args(argv)


def batch_us(library: NativeKernels, case: tuple, bits: int | None, budget_ms: float) -> float:
    """Microseconds of one ``library.linear`` call of ``case`` over back-to-back calls lasting about ``budget_ms``."""
    _, x, layer, router = case

    def call():
        return library.linear(x, *layer, router=router, activation_bits=bits)

    start = time.perf_counter()
    call()
    calls = max(1, int(budget_ms / 1000 / max(time.perf_counter() - start, 1e-7)))
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes, rounds = (TINY_SHAPES, 2) if args.tiny else (SHAPES, args.rounds)
    with tempfile.TemporaryDirectory() as cache:
        kernels = {name: NativeKernels(build_library(cache_dir=cache, extra_flags=flags)) for name, flags in BUILDS.items()}
        cases = []
        for tokens, k, n in shapes:
            x = torch.randn(tokens, k)
            layer = (pack_signs(torch.randn(n, k)), k, torch.rand(4, k), torch.rand(4, n), None, None)
            cases.append(((tokens, k, n), x, layer, torch.randn(4, k)))
        samples: dict[tuple, list[float]] = {}
        for _ in range(rounds):  # rounds alternate over builds, shapes and both activations
            for build, library in kernels.items():
                for case in cases:
                    for bits in (None, 8):
                        us = batch_us(library, case, bits, args.budget_ms)
                        samples.setdefault((build, case[0], bits), []).append(us)
    lines = [
        "# Float against int8 activations in each native build's loops (`benchmarks/int8_loops_cpu.py`)",
        "",
        f"- Machine: {cpu_info()}, {args.threads} thread(s); torch {torch.__version__}."
        f" Date: {datetime.date.today().isoformat()}.",
        f"- Command: `python benchmarks/int8_loops_cpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- Medians of {rounds} rounds alternating over builds, shapes and activations; 4 experts, router in the kernel.",
        "",
        "| build (float loop / int8 loop) | tokens | in -> out | float us | int8 us | int8 speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for build, library in kernels.items():
        for (tokens, k, n), *_ in cases:
            float_us = statistics.median(samples[(build, (tokens, k, n), None)])
            int8_us = statistics.median(samples[(build, (tokens, k, n), 8)])
            lines.append(
                f"| {build} ({library.simd} / {library.q8_simd}) | {tokens} | {k} -> {n} | {float_us:.1f} |"
                f" {int8_us:.1f} | {float_us / int8_us:.2f}x |"
            )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
