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
    assert "`optimum_binarymos::packed_linear`" in report  # the packed op was profiled
