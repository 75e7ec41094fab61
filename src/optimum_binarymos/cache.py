"""The package's user cache directory: ``$BINARYMOS_CACHE``, else ``~/.cache/optimum_binarymos``.

The library keeps only what it builds itself there (the compiled CPU kernels, under ``kernels/``); it never
downloads anything into it. The example scripts keep the demo's model and text in the same directory
(``examples/demo_assets``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV_VAR", "default_cache_dir", "resolve_cache_dir"]

#: The environment variable that moves the cache; unset or empty means ``~/.cache/optimum_binarymos``.
CACHE_ENV_VAR = "BINARYMOS_CACHE"


def default_cache_dir() -> Path:
    """Return ``$BINARYMOS_CACHE`` when set and non-empty, else ``~/.cache/optimum_binarymos``."""
    from_env = os.environ.get(CACHE_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "optimum_binarymos"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Return ``cache_dir`` as an absolute path, or :func:`default_cache_dir` when it is None."""
    chosen = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return chosen.absolute()
