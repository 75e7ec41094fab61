"""Evaluation texts: local text files anywhere, WikiText-2 and C4 through ``datasets`` when online.

The two public sets are loaded exactly as GPTQ, OneBit and BinaryMoS load them:

* ``"wikitext2"``: ``load_dataset("wikitext", "wikitext-2-raw-v1")``, test split by default; its lines are the
  documents and :func:`load_eval_text` joins them with ``"\\n\\n"``.
* ``"c4"``: the first validation shard of ``allenai/c4`` (``en/c4-validation.00000-of-00008.json.gz``); its
  documents go to :func:`~optimum_binarymos.eval.c4_windows`. ``split="train"`` gives the first training shard
  (``en/c4-train.00000-of-01024.json.gz``), the distillation data of the papers.

``datasets`` is imported only for these two names, so local files need nothing beyond the package.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["EVAL_DATASETS", "load_eval_documents", "load_eval_text"]

PathLike = str | os.PathLike[str]

# The papers' C4 files: one shard per split, named explicitly because allenai/c4 holds thousands.
C4_SHARDS = {
    "validation": "en/c4-validation.00000-of-00008.json.gz",
    "train": "en/c4-train.00000-of-01024.json.gz",
}
EVAL_DATASETS = {"wikitext2": "test", "c4": "validation"}  # name -> split of the evaluation protocol
_ALIASES = {"wikitext2": "wikitext2", "wikitext-2": "wikitext2", "wikitext": "wikitext2", "c4": "c4"}


def load_eval_documents(name_or_files: PathLike | Sequence[PathLike], split: str | None = None) -> list[str]:
    """Return the documents of an evaluation set, in order.

    Args:
        name_or_files: ``"wikitext2"`` or ``"c4"`` (needs ``datasets`` and network access, or a ``datasets``
            cache); or a text file, a folder (its ``*.txt`` files, sorted by name), or a list of files.
            An existing path always wins over a dataset name.
        split: the dataset split; defaults to the one of the evaluation protocol (``"test"`` for WikiText-2,
            ``"validation"`` for C4). Not used with local files.

    Returns:
        For WikiText-2 its lines, for C4 its documents, for local files the content of each file (UTF-8).

    Raises:
        ValueError: for an unknown name, a missing file, or a folder with no ``*.txt`` file.
        ImportError: when ``datasets`` is needed and missing.
        RuntimeError: when ``datasets`` cannot load the set (typically: no network).
    """
    files = _local_files(name_or_files)
    if files is not None:
        return [file.read_text(encoding="utf-8") for file in files]
    name = _ALIASES[str(name_or_files).lower()]
    split = split or EVAL_DATASETS[name]
    if name == "wikitext2":
        return _load_hub_texts("wikitext", split, "wikitext-2-raw-v1")
    if split not in C4_SHARDS:
        raise ValueError(f"C4 has splits {sorted(C4_SHARDS)} here, got {split!r}")
    return _load_hub_texts("allenai/c4", split, data_files={split: C4_SHARDS[split]})


def load_eval_text(name_or_files: PathLike | Sequence[PathLike], split: str | None = None) -> str:
    """Return an evaluation set as one string: :func:`load_eval_documents` joined with ``"\\n\\n"``.

    This is how GPTQ builds the WikiText-2 test text that is tokenized once and cut into windows.
    """
    return "\n\n".join(load_eval_documents(name_or_files, split=split))


def _local_files(name_or_files: PathLike | Sequence[PathLike]) -> list[Path] | None:
    """Return the local files meant by ``name_or_files``, or None when it names a dataset."""
    if isinstance(name_or_files, (str, os.PathLike)):
        path = Path(name_or_files).expanduser()
        if path.is_dir():
            files = sorted(path.glob("*.txt"))
            if not files:
                raise ValueError(f"{path} holds no *.txt file")
            return files
        if path.is_file():
            return [path]
        if isinstance(name_or_files, str) and name_or_files.lower() in _ALIASES:
            return None
        raise ValueError(
            f"{str(name_or_files)!r} is neither an existing file or folder nor a known evaluation set "
            f"({', '.join(sorted(EVAL_DATASETS))})"
        )
    files = [Path(item).expanduser() for item in name_or_files]
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise ValueError(f"no such file: {', '.join(missing)}")
    if not files:
        raise ValueError("the list of files is empty")
    return files


def _load_hub_texts(path: str, split: str, config_name: str | None = None, **kwargs: Any) -> list[str]:
    """Return the ``text`` column of ``datasets.load_dataset(path, config_name, split=split, **kwargs)``."""
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as error:
        raise ImportError(
            f"loading {path} needs the 'datasets' package: pip install datasets "
            "(or pip install 'optimum-binarymos[eval]'); offline, pass local text files instead"
        ) from error
    try:
        dataset = datasets.load_dataset(path, config_name, split=split, **kwargs)
    except Exception as error:  # datasets raises many types here (ConnectionError, OSError, hub errors)
        raise RuntimeError(
            f"datasets could not load {path} ({split} split): {type(error).__name__}: {error}. "
            "It downloads from the Hugging Face Hub: check network access (or HF_ENDPOINT, HF_HUB_OFFLINE), "
            "or pass local text files instead"
        ) from error
    return list(dataset["text"])
