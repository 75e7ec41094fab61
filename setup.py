"""Build hook: installs ``optimum_binarymos_autoload.pth`` at the top of site-packages.

All project metadata lives in ``pyproject.toml``. This file only adds the one thing setuptools cannot express
there: a ``.pth`` file next to the packages (not inside one), so that Python runs
``_optimum_binarymos_autoload.install()`` at start-up and transformers can load BinaryMoS checkpoints without an
explicit ``import optimum_binarymos`` (see ``docs/SAFETY.md``).

* Regular wheel: ``build_py`` writes the file into ``build_lib``, whose top level becomes the wheel's top level,
  which installs into site-packages.
* Editable install (PEP 660): ``editable_wheel`` never installs ``build_lib`` (the code is imported from ``src/``);
  it builds the wheel from the folder it configured as the ``install`` command's ``install_lib``, so the file
  goes there.
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "optimum_binarymos_autoload.pth"
# A .pth line that starts with "import" is executed by the site module at every interpreter start-up.
PTH_LINE = "import _optimum_binarymos_autoload; _optimum_binarymos_autoload.install()\n"


class BuildPyWithAutoloadPth(build_py):
    """``build_py`` that also writes the autoload ``.pth`` file (see the module docstring)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            target_dir = self.get_finalized_command("install").install_lib
        else:
            target_dir = self.build_lib
        self._write_pth(target_dir)

    def _write_pth(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, PTH_NAME), "w", encoding="utf-8") as handle:
            handle.write(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


setup(cmdclass={"build_py": BuildPyWithAutoloadPth})
