"""What the asset modules share."""

from __future__ import annotations

import sys


def progress(message: str) -> None:
    """One line of progress on stderr, prefixed like the library's own messages."""
    print(f"[optimum_binarymos] {message}", file=sys.stderr, flush=True)
