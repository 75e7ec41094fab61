"""Bridges to optional libraries: peft (LoRA on BinaryMoS layers) and lm-eval-harness (zero-shot evaluation).

Nothing here imports those libraries: :mod:`optimum_binarymos.integrations.peft` imports peft (import it to
build LoRA configs for quantized layers), :mod:`optimum_binarymos.integrations.lm_eval` imports lm-eval when its
evaluation function is called.
"""

from __future__ import annotations

import logging
import warnings

logger = logging.getLogger(__name__)

__all__ = ["adapter_version_conflict", "register_peft"]

_PEFT = "peft"


def register_peft() -> None:
    """Deprecated, does nothing: LoRA support is now registered per ``LoraConfig``.

    Use :func:`optimum_binarymos.integrations.peft.register_lora_layers` (or ``lora_config`` /
    ``load_lora_adapter`` from the same module); they use peft's documented custom-module mapping.
    """
    warnings.warn(
        "register_peft() does nothing any more: pass your LoraConfig through "
        "optimum_binarymos.integrations.peft.register_lora_layers(config), or build it with lora_config(model).",
        FutureWarning,
        stacklevel=2,
    )


def adapter_version_conflict(
    transformers_version: str | None = None, required_peft: str | None = None, peft_version: str | None = None
) -> str | None:
    """Why transformers' adapter methods cannot run beside the installed peft, or ``None`` when they can.

    transformers' ``model.add_adapter`` / ``load_adapter`` / ``set_adapter`` refuse a peft older than the
    ``MIN_PEFT_VERSION`` that transformers declares (5.24 asks for peft >= 0.22 while the newest release is
    0.21.2). The package's metadata excludes such pairs; this catches an environment that was forced past it.
    Each argument defaults to what is installed; pass them to ask about another combination.
    """
    from packaging.version import Version

    if transformers_version is None:
        transformers_version = _installed_version("transformers")
    if required_peft is None:
        try:
            from transformers.integrations import peft as transformers_peft
        except ImportError:
            return None
        required_peft = getattr(transformers_peft, "MIN_PEFT_VERSION", None)
    if peft_version is None:
        peft_version = _installed_version(_PEFT)
    try:
        too_old = Version(peft_version) < Version(required_peft)
    except (TypeError, ValueError):  # no requirement declared, or a version that does not parse
        return None
    if not too_old:
        return None
    return (
        f"transformers {transformers_version} needs peft >= {required_peft} for model.add_adapter(), "
        f"load_adapter() and set_adapter(), but peft {peft_version} is installed. Either install a peft that "
        f"new (pip install 'peft>={required_peft}'), or keep the transformers this package supports with it "
        f"(pip install 'optimum-binarymos' resolves one; or pip install 'transformers<{transformers_version}'). "
        "peft's own get_peft_model() and PeftModel.from_pretrained() work with either."
    )


def _installed_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "(unknown version)"
