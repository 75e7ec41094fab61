"""Compile ``binarymos_cpu.c`` into a shared library on first use, and cache it.

A plain C library called through :mod:`ctypes` compiles in about a second with the system C compiler and needs
neither ninja nor the torch headers. The C++ torch operator of :mod:`.torch_op`, which removes the Python of each
call at few tokens, calls into this library rather than holding a copy of the kernel; without it the library is
still used through ctypes. The library is built for the machine it runs on (``-march=native``), so the cache key holds the
CPU's feature flags as well as the source and the flags: a cache directory shared by different machines keeps
one library per kind of CPU.

Environment: ``CC`` chooses the compiler (default ``cc``, then ``gcc``, then ``clang``); the cache lives in
``$BINARYMOS_CACHE/kernels`` (default ``~/.cache/optimum_binarymos/kernels``).

Each cached library has a ``.sha256`` file beside it, written by the build that made it. A library whose bytes
do not match (truncated by a full disk or a killed copy, overwritten, or put there by hand) is never loaded: it
is deleted and built again, so a damaged cache heals instead of crashing every later process.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ...cache import default_cache_dir

#: The C source that is compiled, shipped inside the package; it includes the headers beside it.
SOURCE = Path(__file__).with_name("binarymos_cpu.c")

#: Everything the library is built from (the cache key covers all of it).
SOURCES = (SOURCE, Path(__file__).with_name("task_pool.h"))

#: Flags every build uses.
COMMON_FLAGS = ("-O3", "-shared", "-fPIC", "-std=c11", "-pthread")

# Tried in order until one compiles: not every compiler knows -march=native (some ARM gcc want -mcpu).
FLAG_CHOICES = (("-march=native",), ())


class NativeBuildError(RuntimeError):
    """The C kernels could not be compiled; the message holds the compiler's last error."""


def find_compiler() -> str | None:
    """``$CC`` when set (a command line, as make reads it: ``CC="gcc -O1"``), else the first of ``cc``, ``gcc``,
    ``clang`` on ``PATH``, else None."""
    from_env = os.environ.get("CC", "").strip()
    if from_env:
        return from_env
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def cpu_signature() -> str:
    """What ``-march=native`` depends on: the architecture and, on Linux, the CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:
        flags = platform.processor()
    return f"{platform.machine()}|{flags}"


def library_name(compiler: str, extra_flags: Sequence[str]) -> str:
    """File name of the cached library: a hash of everything that changes the binary."""
    digest = hashlib.sha256()
    for part in (
        *(source.read_bytes() for source in SOURCES),
        compiler.encode(),
        " ".join(extra_flags).encode(),
        cpu_signature().encode(),
    ):
        digest.update(part)
        digest.update(b"\0")
    return f"binarymos_cpu-{digest.hexdigest()[:16]}.so"


def build_library(
    cache_dir: str | os.PathLike[str] | None = None,
    compiler: str | None = None,
    extra_flags: Sequence[str] = (),
) -> Path:
    """Return the path of the compiled library, compiling it if the cache does not hold it yet.

    Args:
        cache_dir: where libraries are kept; default ``$BINARYMOS_CACHE/kernels``.
        compiler: C compiler command; default :func:`find_compiler`.
        extra_flags: added to every attempt (e.g. ``("-DBINARYMOS_PORTABLE",)`` for the portable loop).

    Raises:
        NativeBuildError: no compiler, or every flag choice failed (the last error is in the message).
    """
    compiler = compiler or find_compiler()
    if compiler is None:
        raise NativeBuildError("no C compiler found (set CC, or install gcc or clang)")
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "kernels"
    target = directory / library_name(compiler, extra_flags)
    if target.is_file():
        if _matches_digest(target):
            return target
        _discard(target)
    directory.mkdir(parents=True, exist_ok=True)
    errors = []
    for choice in FLAG_CHOICES:
        # Build under a private name and rename: processes that compile at the same time never see half a
        # file.
        handle, partial = tempfile.mkstemp(prefix=".binarymos_cpu-", suffix=".so", dir=directory)
        os.close(handle)
        command = [*shlex.split(compiler), *COMMON_FLAGS, *choice, *extra_flags, str(SOURCE), "-o", partial]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as error:
            errors.append(f"{' '.join(command)}: {error}")
            os.unlink(partial)
            continue
        if result.returncode == 0:
            # The digest first: a library is only ever visible with the digest of its own bytes beside it.
            _write_digest(Path(partial), digest_path(target))
            os.replace(partial, target)
            return target
        os.unlink(partial)
        errors.append(f"{' '.join(command)}:\n{result.stderr.strip()}")
    raise NativeBuildError("could not compile the native CPU kernels; last attempt: " + errors[-1])


def digest_path(library: Path) -> Path:
    """Where the SHA-256 of a cached ``library`` is kept."""
    return library.with_name(library.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _matches_digest(library: Path) -> bool:
    try:
        return digest_path(library).read_text().strip() == _sha256(library)
    except OSError:
        return False


def _write_digest(library: Path, destination: Path) -> None:
    handle, partial = tempfile.mkstemp(prefix=".binarymos_cpu-", suffix=".sha256", dir=destination.parent)
    with os.fdopen(handle, "w") as file:
        file.write(_sha256(library) + "\n")
    os.replace(partial, destination)


def _discard(library: Path) -> None:
    """Remove a cached library that must not be loaded, and its digest."""
    for path in (library, digest_path(library)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
