"""Every name the package exports resolves."""

from __future__ import annotations

import optimum_binarymos


def test_star_import_resolves_every_name_in_all():
    namespace: dict = {}
    exec("from optimum_binarymos import *", namespace)
    missing = [name for name in optimum_binarymos.__all__ if name not in namespace]
    assert not missing
    assert len(set(optimum_binarymos.__all__)) == len(optimum_binarymos.__all__)
    assert callable(namespace["calibrate_model"]) and callable(namespace["DistillationTrainer"])


def test_former_import_paths_still_work_and_say_where_things_moved():
    import importlib
    import sys
    import warnings

    moved = {
        "optimum_binarymos.config": "BinaryMoSConfig",
        "optimum_binarymos.ternary_config": "TernaryConfig",
        "optimum_binarymos.quantizer": "BinaryMoSHfQuantizer",
        "optimum_binarymos.ternary_quantizer": "TernaryHfQuantizer",
    }
    for module_name, name in moved.items():
        sys.modules.pop(module_name, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(module_name)
        assert getattr(module, name) is getattr(optimum_binarymos, name)
        assert any(issubclass(w.category, FutureWarning) and "deprecated" in str(w.message) for w in caught)
