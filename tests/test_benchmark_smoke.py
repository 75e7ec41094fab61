"""CPU benchmark scripts run end to end at tiny sizes, so that a real run only has the measuring left to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_decode_profile_smoke_run_writes_its_tables(tmp_path):
    output = tmp_path / "profile.md"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "profile_decode.py"),
        "--tiny", "--random", "--rounds", "1", "--steps", "2", "--profile-steps", "2",
        "--ladder-iterations", "2", "--threads", "1", "--output", str(output),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = output.read_text()
    for heading in ("Decode speed", "Where one decode step goes", "Cost ladder", "Top"):
        assert heading in report, heading
    assert "random LLaMA" in report  # says it did not measure the real model
    top_ops = report.split("### Top")[1]  # the packed model's op table
    # The packed kernel was profiled: its C++ operator, or the Python one where that could not be built.
    assert "`optimum_binarymos_cpu::linear_f32`" in top_ops or "`optimum_binarymos::packed_linear`" in top_ops


def run_script(name: str, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / name), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_peer_benchmark_smoke_run_writes_its_table_and_plot(tmp_path):
    output, figure = tmp_path / "peers.md", tmp_path / "peers.png"
    run_script(
        "peers_cpu.py", "--tiny", "--rounds", "1", "--threads", "1", "--prompt-tokens", "8", "--new-tokens", "2",
        "--output", str(output), "--plot", str(figure),
    )  # fmt: skip
    report = output.read_text()
    for name in ("transformers float32", "packed BinaryMoS E=4, 8-bit embeddings", "packed ternary",
                 "packed BinaryMoS E=4, 8-bit embeddings, int8 activations, compiled"):
        assert f"| {name} |" in report, name
    assert "llama.cpp" not in report.split("## ")[0].split("| model")[1]  # no peer in a --tiny run
    assert figure.stat().st_size > 0


def test_compiled_decode_profile_smoke_run_lists_the_packed_operator(tmp_path):
    output = tmp_path / "profile.md"
    run_script(
        "profile_compiled_decode.py", "--tiny", "--steps", "2", "--prompt-tokens", "8", "--output", str(output)
    )  # fmt: skip
    report = output.read_text()
    assert "random LLaMA" in report and "attention `binarymos_sdpa`" in report
    assert "optimum_binarymos_cpu::linear_q8" in report  # the int8-activation C++ operator ran inside the graph


def test_int8_loop_benchmark_smoke_run_times_both_builds(tmp_path):
    output = tmp_path / "loops.md"
    run_script("int8_loops_cpu.py", "--tiny", "--budget-ms", "5", "--output", str(output))
    report = output.read_text()
    assert "| default (" in report and "| without AVX-512 (" in report
    assert report.count("x |") == 4  # a ratio for each build and shape


def test_embedding_bits_smoke_run_reports_sizes_and_perplexities(tmp_path):
    output = tmp_path / "embedding_bits.md"
    run_script(
        "embedding_bits.py", "--tiny", "--seq-len", "16", "--eval-windows", "1", "--rounds", "2", "--repeats", "2",
        "--output", str(output),
    )  # fmt: skip
    report = output.read_text()
    assert "| BinaryMoS E=4 | 8-bit rows |" in report and "| BinaryMoS E=4 | 4-bit groups of 32 |" in report
    assert "same, embeddings and tied `lm_head` as 8-bit rows" in report
    assert "same, embeddings and tied `lm_head` as 4-bit groups of 32" in report
    assert "| 4-bit, scale max abs(W) / 7 per group |" in report and "## Choosing the 4-bit scale" in report
    head_rows = [line for line in report.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(head_rows) == 2 and all("x faster" in line for line in head_rows)


def test_load_memory_smoke_run_reports_both_checkpoints(tmp_path):
    output = tmp_path / "load_memory.md"
    run_script(
        "load_memory.py", "--layers", "1", "--hidden-size", "128", "--intermediate-size", "352",
        "--vocab-size", "500", "--output", str(output),
    )  # fmt: skip
    report = output.read_text()
    assert "| float (bfloat16) embeddings |" in report and "| 8-bit embeddings |" in report and "| 4-bit embeddings |" in report


def test_kernel_benchmark_bandwidth_smoke_run_reports_the_limit(tmp_path):
    output = tmp_path / "cpu_kernels.md"
    run_script(
        "cpu_kernels.py", "--bandwidth", "--tokens", "1", "--in-features", "256", "--out-features", "128",
        "--num-experts", "4", "--min-rounds", "2", "--max-rounds", "2", "--warmup", "1", "--stream-mib", "8",
        "--cache-mib", "1", "--output", str(output),
    )  # fmt: skip
    report = output.read_text()
    section = report.split("### One token against the memory-bandwidth limit")[1]
    for row in ("STREAM-like read", "STREAM-like copy", "packed layer, kernel, cold", "packed layer, forward, cold",
                "packed layer, kernel, int8 activations, cold", "packed layer, forward, int8 activations, cold"):
        assert f"| {row}" in section, row
    assert "bandwidth limit of one call" in section


def test_activation_bits_smoke_run_reports_both_settings(tmp_path):
    output = tmp_path / "activation_bits.md"
    run_script("activation_bits.py", "--tiny", "--seq-len", "16", "--windows", "1", "--output", str(output))
    report = output.read_text()
    assert "| float activations |" in report and "| int8 activations |" in report
    assert "same argmax at" in report


def test_kernel_benchmark_times_int8_activations_at_every_token_count(tmp_path):
    output = tmp_path / "cpu_kernels.md"
    run_script(
        "cpu_kernels.py", "--tokens", "1", "40", "--in-features", "256", "--out-features", "128", "--num-experts", "4",
        "--min-rounds", "2", "--max-rounds", "2", "--warmup", "1", "--output", str(output),
    )  # fmt: skip
    report = output.read_text()
    for tokens in (1, 40):
        assert f"| {tokens} | packed, 4 experts, int8 activations |" in report
