"""What the built wheel installs: the package, an entry point for lm-eval, and nothing that runs at start-up."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        str(ROOT),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    (path,) = out.glob("optimum_binarymos-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_no_start_up_hook(wheel):
    names = wheel.namelist()
    assert [name for name in names if name.endswith(".pth")] == []
    outside_the_package = [
        name for name in names if not name.startswith(("optimum_binarymos/", "optimum_binarymos-"))
    ]
    # optimum-cli finds its subcommands in the namespace package optimum.commands.register (its plugin point).
    assert outside_the_package == ["optimum/commands/register/register_binarymos.py"]


def test_the_wheel_declares_the_lm_eval_entry_point(wheel):
    (entry_points,) = [name for name in wheel.namelist() if name.endswith("entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "lm-eval-binarymos = optimum_binarymos.integrations.lm_eval:main" in text
