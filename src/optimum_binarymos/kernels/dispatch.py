"""Which backend runs a packed BinaryMoS linear: Triton or the torch/CPU path.

``BINARYMOS_BACKEND`` is read at every call, so it can be changed between forwards:

* ``auto`` (default): Triton for CUDA tensors when ``triton`` is installed, the torch backend otherwise
  (on CPU that is the native kernel of :mod:`optimum_binarymos.kernels.native` when it compiled).
* ``triton``: always Triton. CPU tensors then need Triton's interpreter (``TRITON_INTERPRET=1`` set before
  Triton kernels are first imported); slow, meant for tests.
* ``torch``: always :mod:`optimum_binarymos.kernels.torch_backend`.

Importing this module never imports ``triton``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

logger = logging.getLogger(__name__)

#: Environment variable choosing the kernel backend, read at every forward.
BACKEND_VARIABLE = "BINARYMOS_BACKEND"

#: Accepted values of :data:`BACKEND_VARIABLE`.
BACKENDS = ("auto", "triton", "torch")


def requested_backend() -> str:
    """The backend asked for through ``BINARYMOS_BACKEND`` (default ``"auto"``), validated.

    Raises:
        ValueError: for any other value, naming the accepted ones.
    """
    value = os.environ.get(BACKEND_VARIABLE, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_VARIABLE} must be one of {list(BACKENDS)}, got {value!r}")
    return value


@functools.cache
def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """Whether Triton kernels run in its interpreter (``TRITON_INTERPRET=1``), which accepts CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@functools.cache
def _warn_torch_on_cuda_once() -> None:
    logger.warning(
        "triton is not installed: packed BinaryMoS layers on CUDA use the slower torch path "
        "(unpack then matmul). `pip install triton` to use the fused kernels."
    )


def select_backend(device: torch.device) -> str:
    """``"triton"`` or ``"torch"`` for tensors on ``device``, following ``BINARYMOS_BACKEND``.

    Raises:
        RuntimeError: when ``triton`` is forced but cannot run here (not installed, or a CPU tensor without
            the interpreter), with the setting to change.
    """
    requested = requested_backend()
    if requested == "torch":
        return "torch"
    if requested == "auto":
        if device.type != "cuda":
            return "torch"
        if triton_installed():
            return "triton"
        _warn_torch_on_cuda_once()
        return "torch"
    if not triton_installed():
        raise RuntimeError(
            f"{BACKEND_VARIABLE}=triton but the `triton` package is not installed: `pip install triton`, "
            f"or set {BACKEND_VARIABLE}=auto (or torch)."
        )
    if device.type != "cuda" and not triton_interpreting():
        raise RuntimeError(
            f"{BACKEND_VARIABLE}=triton on a {device.type} tensor needs Triton's interpreter: set "
            f"TRITON_INTERPRET=1 before the kernels are first imported, or set {BACKEND_VARIABLE}=auto."
        )
    return "triton"
