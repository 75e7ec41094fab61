"""Plot speedup over ``F.linear`` against the number of tokens from a ``benchmarks/gpu_kernels.py`` CSV.

One panel per weight shape (``K x N``), one line per dtype and variant (the packed kernel, the whole layer,
and the forced strategies when they were timed), a dashed line at 1x. Needs matplotlib
(``pip install matplotlib``).

Run from the repository root::

    python docs/plot_speedup.py benchmarks/results/gpu_kernels-nvidia-h100.csv --output docs/gpu_speedup.png
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", type=Path, help="a CSV written by benchmarks/gpu_kernels.py")
    parser.add_argument("--output", type=Path, default=None, help="image path (default: docs/<csv name>.png)")
    return parser.parse_args(argv)


def load(path: Path) -> dict[str, dict[tuple[str, str], list[tuple[int, float]]]]:
    """``{shape: {(dtype, variant): [(M, speedup), ...]}}`` with dense rows left out (always 1x)."""
    series: dict[str, dict[tuple[str, str], list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["variant"] == "dense":
                continue
            shape = f"{row['K']} x {row['N']}"
            series[shape][(row["dtype"], row["variant"])].append((int(row["M"]), float(row["speedup"])))
    return series


def plot(series, title: str, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted(series)
    figure, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False, sharey=True)
    for axis, shape in zip(axes[0], shapes, strict=True):
        for (dtype, variant), points in sorted(series[shape].items()):
            points.sort()
            axis.plot([m for m, _ in points], [s for _, s in points], marker="o", label=f"{variant}, {dtype}")
        axis.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens M")
        axis.set_title(f"K x N = {shape}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("speedup over F.linear")
    axes[0][-1].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise SystemExit("plotting needs matplotlib: pip install matplotlib") from error
    output = args.output or Path(__file__).parent / f"{args.csv.stem}.png"
    with open(args.csv, newline="") as handle:
        device = next(csv.DictReader(handle), {}).get("device", "")
    plot(load(args.csv), f"Packed BinaryMoS Triton kernels, {device}", output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
