"""Lets transformers load BinaryMoS checkpoints even when nobody ran ``import optimum_binarymos``.

Tools such as lm-eval call ``AutoModelForCausalLM.from_pretrained`` and never import plugins. Without help,
transformers would then not know the ``binarymos`` quantization method and fail on the packed tensors' shapes.

``optimum_binarymos_autoload.pth``, installed into site-packages with the package (wheel or editable install),
runs ``install()`` at interpreter start-up. ``install()`` only puts a finder at the front of ``sys.meta_path``: no
torch, no transformers, nothing heavy is imported, so start-up stays cheap. The finder watches two imports:

* ``transformers.quantizers.auto`` (transformers' registry of quantization methods): once it has run, the finder
  adds a placeholder under each method name this package registers. The placeholder imports ``optimum_binarymos``
  the first time transformers looks the method up, that is while loading a checkpoint whose ``config.json`` says
  ``quant_method: binarymos``, and hands over to the real classes that the import registers.
* ``optimum_binarymos`` itself: an explicit import removes the placeholders first, so that the package's own
  registration finds the names free.

Nothing is imported while transformers' modules are half-initialized, so no import cycle can appear.
Set ``OPTIMUM_BINARYMOS_AUTOLOAD=0`` to turn the mechanism off (transformers then behaves as if the package were
not installed). This module lives outside the ``optimum_binarymos`` package on purpose: importing anything inside
the package would run its ``__init__``, which imports torch and transformers.
"""

import os
import sys

#: Environment variable that turns the mechanism off when set to ``0``, ``false``, ``no`` or ``off``.
DISABLE_VARIABLE = "OPTIMUM_BINARYMOS_AUTOLOAD"

#: Every quantization method name that ``import optimum_binarymos`` registers (a test keeps this list in sync).
QUANT_METHODS = ("binarymos", "binarymos_ternary")

PACKAGE = "optimum_binarymos"
REGISTRY_MODULE = "transformers.quantizers.auto"
_MAPPINGS = ("AUTO_QUANTIZATION_CONFIG_MAPPING", "AUTO_QUANTIZER_MAPPING")


def enabled() -> bool:
    """False when the user turned the mechanism off with ``OPTIMUM_BINARYMOS_AUTOLOAD=0``."""
    return os.environ.get(DISABLE_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once). Called by the ``.pth`` file at start-up."""
    if not enabled() or any(isinstance(finder, _RegistryWatcher) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _RegistryWatcher())
    registry = sys.modules.get(REGISTRY_MODULE)
    if registry is not None:  # installed late, after transformers had already built its registry
        _add_placeholders(registry)


class _RegistryWatcher:
    """A ``sys.meta_path`` finder that never finds anything itself; it only observes two imports."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == PACKAGE:
            _remove_placeholders()
            return None
        if fullname != REGISTRY_MODULE:
            return None
        spec = _spec_from_other_finders(self, fullname, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _AfterExecLoader(spec.loader)
        return spec


def _spec_from_other_finders(watcher, fullname, path, target):
    for finder in sys.meta_path:
        if finder is watcher or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


class _AfterExecLoader:
    """Wraps the registry module's loader to add the placeholders once the module has fully run."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _add_placeholders(module)

    def __getattr__(self, name):
        # get_source, get_resource_reader, is_package, ...: whatever else tools ask of the real loader.
        return getattr(self._loader, name)


def _add_placeholders(registry) -> None:
    if PACKAGE in sys.modules:
        return  # the package is imported (or importing) and registers the real classes itself
    config_mapping, quantizer_mapping = (getattr(registry, name, None) for name in _MAPPINGS)
    if not isinstance(config_mapping, dict) or not isinstance(quantizer_mapping, dict):
        return  # a transformers without this registry: nothing to hook into
    for method in QUANT_METHODS:
        config_mapping.setdefault(method, _placeholder_config(method))
        quantizer_mapping.setdefault(method, _placeholder_quantizer(method))


def _remove_placeholders() -> None:
    registry = sys.modules.get(REGISTRY_MODULE)
    for name in _MAPPINGS:
        mapping = getattr(registry, name, None)
        if isinstance(mapping, dict):
            for method in QUANT_METHODS:
                if getattr(mapping.get(method), "_optimum_binarymos_placeholder", False):
                    del mapping[method]


def _load_real_classes(method: str):
    """Import the package (which registers the real classes) and return ``(config class, quantizer class)``."""
    _remove_placeholders()
    try:
        __import__(PACKAGE)
    except Exception as error:
        raise ImportError(
            f"This checkpoint uses the '{method}' quantization method of optimum-binarymos. The package is installed "
            f"but `import {PACKAGE}` failed: {error!r}. Reinstall it: pip install -U optimum-binarymos"
        ) from error
    registry = sys.modules[REGISTRY_MODULE]
    config_mapping, quantizer_mapping = (getattr(registry, name) for name in _MAPPINGS)
    return config_mapping[method], quantizer_mapping[method]


def _placeholder_config(method: str) -> type:
    def from_dict(cls, config_dict, *args, **kwargs):
        config_class, _ = _load_real_classes(method)
        return config_class.from_dict(config_dict, *args, **kwargs)

    return type(
        f"PendingImport[{method}]Config",
        (),
        {"_optimum_binarymos_placeholder": True, "from_dict": classmethod(from_dict)},
    )


def _placeholder_quantizer(method: str) -> type:
    def new(cls, *args, **kwargs):
        _, quantizer_class = _load_real_classes(method)
        return quantizer_class(*args, **kwargs)

    return type(
        f"PendingImport[{method}]Quantizer",
        (),
        {"_optimum_binarymos_placeholder": True, "__new__": new},
    )
