"""Which backend runs a packed layer: Triton or the torch/CPU path.

Every packed layer (:class:`~optimum_binarymos.PackedBinaryMoSLinear`, :class:`~optimum_binarymos.PackedTernaryLinear`)
holds its own choice, ``layer.kernel_backend``, one of :data:`BACKENDS`:

* ``auto`` (default): Triton for CUDA tensors when ``triton`` is installed, the torch backend otherwise
  (on CPU that is the native kernel of :mod:`optimum_binarymos.kernels.native` when it compiled).
* ``triton``: always Triton. CPU tensors then need Triton's interpreter (``TRITON_INTERPRET=1`` set before
  Triton kernels are first imported); slow, meant for tests.
* ``torch``: always :mod:`optimum_binarymos.kernels.torch_backend`.

Choose it per layer (``layer.kernel_backend = "torch"``) or for a whole model
(:func:`optimum_binarymos.kernels.set_kernel_backend`). A layer that was never given one takes the value of the
environment variable ``BINARYMOS_BACKEND`` (:func:`requested_backend`) when it is first used, and keeps it:
the environment is not read again on later forwards. The function-level entry points
(:func:`~optimum_binarymos.kernels.binarymos_linear`, :func:`~optimum_binarymos.kernels.ternary.ternary_matmul`)
take a ``backend`` argument, and read ``BINARYMOS_BACKEND`` at the call when it is None.

Importing this module never imports ``triton``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

logger = logging.getLogger(__name__)

#: Environment variable giving the default kernel backend of packed layers, read at a layer's first use.
BACKEND_VARIABLE = "BINARYMOS_BACKEND"

#: Accepted kernel backend names (``layer.kernel_backend``, :data:`BACKEND_VARIABLE`).
BACKENDS = ("auto", "triton", "torch")

#: Environment variable giving the default ``activation_bits`` of packed BinaryMoS layers (``8``, or unset / empty /
#: ``none`` for float activations), read at a layer's first use.
ACTIVATION_BITS_VARIABLE = "BINARYMOS_ACTIVATION_BITS"

#: Accepted values of ``activation_bits``: None (activations as they come) or 8 (rounded to int8 per token).
ACTIVATION_BITS = (None, 8)

#: How to change the backend, for error messages.
_HOW_TO_CHOOSE = (
    "choose another backend with `optimum_binarymos.kernels.set_kernel_backend(model, 'auto')` "
    f"(or `layer.kernel_backend = 'auto'`, or {BACKEND_VARIABLE}=auto before the layers first run)"
)


def validate_backend(name: object, source: str = "kernel_backend") -> str:
    """``name`` as one of :data:`BACKENDS` (surrounding spaces and case ignored).

    Args:
        name: the requested backend.
        source: what the name came from, for the error message.

    Raises:
        ValueError: for anything else, naming the accepted values.
    """
    value = name.strip().lower() if isinstance(name, str) else name
    if value not in BACKENDS:
        raise ValueError(f"{source} must be one of {list(BACKENDS)}, got {name!r}")
    return value


def requested_backend() -> str:
    """The backend asked for through ``BINARYMOS_BACKEND`` (default ``"auto"``), validated; read now.

    Packed layers call it once, at their first use (unless given a backend before); the function-level kernels
    call it at each call made without a ``backend``.

    Raises:
        ValueError: for any other value, naming the accepted ones.
    """
    value = os.environ.get(BACKEND_VARIABLE, "auto").strip() or "auto"
    return validate_backend(value, BACKEND_VARIABLE)


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


def select_backend(device: torch.device, requested: str | None = None) -> str:
    """``"triton"`` or ``"torch"`` for tensors on ``device``, following ``requested`` (one of :data:`BACKENDS`;
    None: :func:`requested_backend`, read now).

    Raises:
        ValueError: for an unknown name.
        RuntimeError: when ``triton`` is forced but cannot run here (not installed, or a CPU tensor without
            the interpreter), with the setting to change.
    """
    requested = requested_backend() if requested is None else validate_backend(requested)
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
            f"kernel backend 'triton' but the `triton` package is not installed: `pip install triton`, "
            f"or {_HOW_TO_CHOOSE}."
        )
    if device.type != "cuda" and not triton_interpreting():
        raise RuntimeError(
            f"kernel backend 'triton' on a {device.type} tensor needs Triton's interpreter: set "
            f"TRITON_INTERPRET=1 before the kernels are first imported, or {_HOW_TO_CHOOSE}."
        )
    return "triton"


class KernelBackendMixin:
    """``kernel_backend`` of a packed layer: chosen once, not read from the environment at every forward.

    Unset, it takes :func:`requested_backend` (``BINARYMOS_BACKEND``, default ``"auto"``) at its first read,
    which is the layer's first forward unless the value is read before, and keeps it. Setting it validates the
    name; setting ``None`` returns to the environment's default, read again at the next use. It is a plain
    attribute: not saved in checkpoints, kept by ``copy.deepcopy`` and ``.to()``.
    """

    #: The chosen backend; None until chosen or first used (a class default, so layers built any way have it).
    _kernel_backend: str | None = None

    @property
    def kernel_backend(self) -> str:
        """One of :data:`BACKENDS`: which kernels this layer's forward runs (see :mod:`.dispatch`)."""
        backend = self._kernel_backend
        if backend is None:
            # First use: the environment gives the default, once. Under torch.compile, Dynamo traces this
            # read and replays the assignment, so it costs no graph break either.
            backend = self._kernel_backend = requested_backend()
        return backend

    @kernel_backend.setter
    def kernel_backend(self, name: str | None) -> None:
        self._kernel_backend = None if name is None else validate_backend(name)


def validate_activation_bits(bits: object, source: str = "activation_bits") -> int | None:
    """``bits`` as one of :data:`ACTIVATION_BITS` (the strings ``"8"``, ``"none"`` and ``""`` accepted too).

    Raises:
        ValueError: for anything else, naming the accepted values.
    """
    value = bits
    if isinstance(bits, str):
        text = bits.strip().lower()
        value = None if text in ("", "none") else int(text) if text.isdigit() else bits
    if isinstance(value, bool) or value not in ACTIVATION_BITS:
        raise ValueError(f"{source} must be None or 8, got {bits!r}")
    return value


def requested_activation_bits() -> int | None:
    """``activation_bits`` asked for through ``BINARYMOS_ACTIVATION_BITS`` (default None), validated; read now.

    Raises:
        ValueError: for a value other than ``8``, ``none`` or empty.
    """
    return validate_activation_bits(os.environ.get(ACTIVATION_BITS_VARIABLE, ""), ACTIVATION_BITS_VARIABLE)


class ActivationBitsMixin:
    """``activation_bits`` of a packed BinaryMoS layer: None (the default) multiplies the signs by the activations as
    they come; 8 rounds the scaled activations ``x * s_in`` to int8, one scale per token, before the product, as
    llama.cpp's quantized matmuls do, where the native CPU kernel then adds 64 weights per two instructions.

    Never set, it takes :func:`requested_activation_bits` (``BINARYMOS_ACTIVATION_BITS``) at its first read and
    keeps it; once set (None included), the environment is not read. A plain attribute, not saved in checkpoints
    (:func:`optimum_binarymos.kernels.set_activation_bits` sets a whole model).
    """

    #: The chosen value, or the class default ``"environment"`` until chosen or first used.
    _activation_bits: int | str | None = "environment"

    @property
    def activation_bits(self) -> int | None:
        """None or 8: the precision of the activations entering this layer's product with the signs."""
        if self._activation_bits == "environment":
            self._activation_bits = requested_activation_bits()
        return self._activation_bits

    @activation_bits.setter
    def activation_bits(self, bits: int | str | None) -> None:
        self._activation_bits = validate_activation_bits(bits)
