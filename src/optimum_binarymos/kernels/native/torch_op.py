"""The native 1-bit linear as a C++ torch operator (``torch.ops.optimum_binarymos_cpu.linear_f32``).

The ctypes call of :class:`~optimum_binarymos.kernels.native.NativeKernels` costs tens of microseconds of Python per
layer (checks, argument conversion, the Python body of ``optimum_binarymos::packed_linear``): at one token a
135M-parameter model makes 210 such calls, several milliseconds per decoded token. ``torch_op.cpp`` registers the
same kernel as a C++ operator, so a packed layer's call at few tokens goes from the dispatcher to C directly, in
eager mode and from a ``torch.compile`` graph alike.

It is built on first use with ``torch.utils.cpp_extension`` (the system C++ compiler and ninja, about 10 s on two
cores) into ``$BINARYMOS_CACHE/kernels/torch-op-<key>``, the key covering the source, the torch version and the
CPU (``-march=native``). As for the C library, a ``.sha256`` beside the built library is checked before it is
loaded, and a mismatch rebuilds it. The C++ side holds no kernel of its own: it calls the C library that
:func:`~optimum_binarymos.kernels.native.native_kernels` loaded (and checked), whose address it receives once.
When any of this is impossible (no C++ compiler or ninja, no native C library), :func:`native_linear_op` returns
None after one warning and packed layers keep the ctypes path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import warnings
from pathlib import Path

import torch

from ...cache import default_cache_dir
from .build import _matches_digest, _write_digest, cpu_signature, digest_path

logger = logging.getLogger(__name__)

#: The operator's C++ source, shipped inside the package.
SOURCE = Path(__file__).with_name("torch_op.cpp")

#: Flags of the build (the cache key covers them).
FLAGS = ("-O3", "-march=native")


def build_key() -> str:
    """What the built library depends on: the source, the flags, the torch version and the CPU."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in (" ".join(FLAGS), torch.__version__, cpu_signature()):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def _build_and_load(build_directory: Path, name: str) -> None:
    from torch.utils.cpp_extension import load

    library = build_directory / f"{name}.so"
    if library.is_file() and not _matches_digest(library):
        shutil.rmtree(build_directory, ignore_errors=True)  # damaged or foreign: rebuilt below, never loaded
    build_directory.mkdir(parents=True, exist_ok=True)
    load(
        name=name,
        sources=[str(SOURCE)],
        extra_cflags=list(FLAGS),
        build_directory=str(build_directory),
        is_python_module=False,
        verbose=False,
    )
    if not digest_path(library).is_file():
        _write_digest(library, digest_path(library))


@functools.cache
def native_linear_op():
    """``torch.ops.optimum_binarymos_cpu.linear_f32.default``, built and loaded on first call, or None (after one
    warning) when it cannot be; its arguments are those of ``NativeKernels.linear`` with the gates left to the
    kernel: ``(x, packed, in_features, scale_in, scale_out, bias, router)``, all float32 but ``packed``."""
    from . import native_kernels

    kernels = native_kernels()
    if kernels is None:
        return None
    key = build_key()
    try:
        _build_and_load(default_cache_dir() / "kernels" / f"torch-op-{key}", f"optimum_binarymos_cpu_{key}")
        operator = torch.ops.optimum_binarymos_cpu.linear_f32.default
        torch.ops.optimum_binarymos_cpu.set_kernel(kernels.linear_address)
        torch.ops.optimum_binarymos_cpu.set_kernel_q8(kernels.linear_q8_address)
    except Exception as error:  # noqa: BLE001 - any build or load failure keeps the ctypes path, and says why
        warnings.warn(
            "optimum_binarymos: the native kernel's torch operator could not be built, packed layers call the "
            f"native kernel through ctypes instead (slower at one token): {error}",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    torch.library.register_fake("optimum_binarymos_cpu::linear_f32")(_fake_linear)
    torch.library.register_fake("optimum_binarymos_cpu::linear_q8")(_fake_linear)
    logger.info("native kernel operator loaded (build key %s)", key)
    return operator


def native_linear_q8_op():
    """``torch.ops.optimum_binarymos_cpu.linear_q8.default``: :func:`native_linear_op` with the scaled activations
    rounded to int8 per token (``bmos_linear_q8_f32``), same arguments; None where that operator is None."""
    if native_linear_op() is None:
        return None
    return torch.ops.optimum_binarymos_cpu.linear_q8.default


def _fake_linear(x, packed, in_features, scale_in, scale_out, bias, router):
    return x.new_empty(x.shape[0], packed.shape[0])
