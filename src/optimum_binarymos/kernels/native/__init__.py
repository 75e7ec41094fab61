"""Native CPU kernels for packed BinaryMoS layers: C compiled on first use, called through ctypes.

:func:`native_kernels` returns the process-wide :class:`NativeKernels`, compiling ``binarymos_cpu.c`` the
first time (about a second; cached afterwards, see :mod:`.build`), or None when that is impossible, in which
case one warning says why and the torch path is used instead.
"""

from __future__ import annotations

import functools
import logging
import warnings

from .build import NativeBuildError, build_library, digest_path
from .library import NativeKernels

__all__ = ["NativeBuildError", "NativeKernels", "build_library", "digest_path", "native_kernels"]

logger = logging.getLogger(__name__)


@functools.cache
def native_kernels() -> NativeKernels | None:
    """The compiled kernels, built on first call; None (after one warning) when they cannot be built or
    loaded."""
    try:
        kernels = NativeKernels(build_library())
    except (NativeBuildError, OSError, RuntimeError) as error:
        warnings.warn(
            "optimum_binarymos: native CPU kernels unavailable, packed layers on CPU use the slower torch "
            f"path ({error})",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    logger.info("native BinaryMoS CPU kernels (%s) loaded from %s", kernels.simd, kernels.path)
    return kernels
