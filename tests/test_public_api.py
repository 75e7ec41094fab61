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
