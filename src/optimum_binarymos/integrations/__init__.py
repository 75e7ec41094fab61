"""Bridges to optional libraries: peft (LoRA on BinaryMoS layers) and lm-eval-harness (zero-shot evaluation).

Nothing here imports those libraries. :func:`register_peft` (run by ``import optimum_binarymos``) only arranges
for :mod:`optimum_binarymos.integrations.peft` to hook into peft once peft itself is imported, because importing
peft eagerly would add seconds to ``import optimum_binarymos`` for users who never fine-tune.
:mod:`optimum_binarymos.integrations.lm_eval` imports lm-eval when its evaluation function is called.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

logger = logging.getLogger(__name__)

__all__ = ["adapter_version_conflict", "register_peft"]

_PEFT = "peft"


def register_peft() -> None:
    """Teach peft's LoRA to wrap BinaryMoS layers, now if peft is imported, else the moment it is imported.

    Afterwards plain ``get_peft_model(model, LoraConfig(target_modules=[...]))``,
    ``PeftModel.from_pretrained(model, adapter_dir)`` and transformers' ``model.add_adapter(LoraConfig(...))``
    work on BinaryMoS models (see :mod:`optimum_binarymos.integrations.peft`). Without peft installed this does
    nothing. Calling it again is harmless.
    """
    if sys.modules.get(_PEFT) is not None:
        _install_lora_support()
        return
    if importlib.util.find_spec(_PEFT) is None:
        logger.debug("peft is not installed: LoRA support for BinaryMoS layers is not registered.")
        return
    if not any(isinstance(finder, _PeftImportWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PeftImportWatcher())


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


def _install_lora_support() -> None:
    conflict = adapter_version_conflict()
    if conflict is not None:
        logger.warning(conflict)
    # A peft whose internals moved must not make `import peft` itself fail: say so and go on without LoRA support.
    try:
        from .peft import register_lora_layers  # registers on import; the call documents the intent

        register_lora_layers()
    except Exception as error:
        logger.warning(
            "Could not register BinaryMoS layers with peft %s (%r): LoRA on BinaryMoS models will fail with "
            "'Target module ... is not supported'.",
            _installed_version(_PEFT),
            error,
        )


def _installed_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "(unknown version)"


class _PeftImportWatcher:
    """A ``sys.meta_path`` finder that finds nothing itself: it lets the other finders locate peft and runs
    :func:`_install_lora_support` right after peft's ``__init__`` has fully run.

    It stays in place until that happens, because a bare ``importlib.util.find_spec("peft")`` (transformers'
    ``is_peft_available()`` does one) asks finders too, without importing anything.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _PEFT:
            return None
        spec = self._spec_from_other_finders(fullname, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RunAfterExec(spec.loader, self)
        return spec

    def _spec_from_other_finders(self, fullname, path, target):
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None


class _RunAfterExec:
    """Wraps peft's loader: executes the module, removes the watcher, then registers the LoRA layers."""

    def __init__(self, loader, watcher: _PeftImportWatcher) -> None:
        self._loader = loader
        self._watcher = watcher

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        if self._watcher in sys.meta_path:
            sys.meta_path.remove(self._watcher)
        _install_lora_support()

    def __getattr__(self, name):
        # get_source, get_resource_reader, is_package, ...: whatever else tools ask of the real loader.
        return getattr(self._loader, name)
