"""benchmarks/gpu_kernels.py runs end to end on CPU under the Triton interpreter (its smoke mode), so that the
GPU run only has the timing left to do."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_kernel_benchmark_smoke_run_writes_every_variant(tmp_path):
    pytest.importorskip("triton", reason="needs the triton package")
    env = dict(os.environ, TRITON_INTERPRET="1")
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_kernels.py"),
        "--device", "cpu",
        "--shapes", "72x40",
        "--tokens", "1", "12",
        "--dtypes", "float16",
        "--num-experts", "2",
        "--strategies",
        "--output-dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (table,) = tmp_path.glob("gpu_kernels-*.csv")
    rows = list(csv.DictReader(table.open()))
    variants = {"dense", "packed", "layer", "packed gemv", "packed gemm"}
    assert {(row["M"], row["variant"]) for row in rows} == {(m, v) for m in ("1", "12") for v in variants}
    for row in rows:
        assert row["timing"] == "wall clock" and float(row["ms"]) > 0
        # Every packed variant was checked against a float32 reference before it was timed.
        assert (row["max_error"] == "") == (row["variant"] == "dense")
        assert row["variant"] == "dense" or float(row["max_error"]) < 16 * 2**-10
        assert float(row["speedup"]) == pytest.approx(float(row["dense_ms"]) / float(row["ms"]), abs=1e-3)
    assert (tmp_path / table.name.replace(".csv", ".md")).read_text().count("| 72 x 40 |") == len(rows)
