"""What a model card knows about its model, kept in the model's config so that it survives saving and reloading.

``config.json`` holds it under ``binarymos_model_card``: ``base_model``, the license fields and ``evaluation``. The
float checkpoint a model was converted from is recorded at conversion time (:func:`remember_float_source`);
:func:`record_base_model` and :func:`record_evaluation` add the rest. Rendering the card is
:mod:`optimum_binarymos.model_card`'s job.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.repocard import metadata_load
from huggingface_hub.utils import validate_repo_id
from torch import nn

logger = logging.getLogger(__name__)

#: Key of ``config.json`` holding what the card says about the model's origin and evaluation.
CARD_RECORD_KEY = "binarymos_model_card"

#: License metadata carried over from the float model's card.
LICENSE_FIELDS = ("license", "license_name", "license_link")

_HF_CACHE_SNAPSHOT = re.compile(
    r"models--(?P<owner>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots[/\\][0-9a-f]{40}$"
)


def card_record(model: nn.Module) -> dict[str, Any]:
    """A copy of what is recorded for the card: ``base_model``, ``license``, ``evaluation`` (each when known)."""
    record = getattr(getattr(model, "config", model), CARD_RECORD_KEY, None)
    return dict(record) if isinstance(record, dict) else {}


def _update_record(model: nn.Module, **fields: Any) -> dict[str, Any]:
    config = getattr(model, "config", model)
    record = card_record(model)
    record.update({key: value for key, value in fields.items() if value is not None})
    setattr(config, CARD_RECORD_KEY, record)
    return record


def record_evaluation(
    model: nn.Module, results: Mapping[str, float | int | str]
) -> dict[str, float | int | str]:
    """Record evaluation results on ``model`` (merged with earlier ones); the model card shows them as a table.

    They are stored in the model's config, so they travel with ``save_pretrained`` and come back with
    ``from_pretrained``. Works the same for BinaryMoS and ternary models.

    Args:
        model: the model (or its config).
        results: metric name -> value, e.g. ``{"wikitext2_ppl": 7.88, "arc_easy_acc": 0.65}``.

    Returns:
        Every result recorded so far.

    Example::

        >>> record_evaluation(model, {"wikitext2_ppl": 7.88})
        {'wikitext2_ppl': 7.88}
    """
    clean: dict[str, float | int | str] = {}
    for name, value in dict(results).items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"Evaluation metric names must be non-empty strings; got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(
                f"Evaluation result {name!r} must be a number or a string (it is written to config.json); "
                f"got {type(value).__name__}"
            )
        clean[name] = value
    evaluation = {**card_record(model).get("evaluation", {}), **clean}
    _update_record(model, evaluation=evaluation)
    return evaluation


def record_base_model(
    model: nn.Module,
    base_model: str,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
) -> None:
    """Record the Hub id of the float model this one was made from (and its license) for the card.

    Conversion records it by itself when the float model was loaded by Hub id (or from the Hub cache); call this
    when it was loaded from a local folder.

    Args:
        base_model: Hub repo id such as ``"meta-llama/Llama-2-7b-hf"``.
        license: the base model's license identifier (``"apache-2.0"``, ``"llama2"``, ``"other"``...).
        license_name, license_link: what the Hub asks for along with ``license: other``.
    """
    try:
        validate_repo_id(base_model)
    except HFValidationError as error:
        raise ValueError(
            f"base_model must be a Hub repo id such as 'org/name'; got {base_model!r}: {error}"
        ) from None
    _update_record(
        model, base_model=base_model, license=license, license_name=license_name, license_link=license_link
    )


def remember_float_source(model: nn.Module) -> None:
    """Record where a just-converted model's float weights came from, from ``config._name_or_path``.

    Sets ``base_model`` when that is a Hub id (or a folder of the Hub cache) and the license when the float
    model's card is on disk (a local folder's ``README.md`` or the cached one). Nothing is downloaded. Fields
    already recorded are kept.
    """
    source = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    if not source:
        return
    base_model, card_path = None, None
    if os.path.isdir(source):
        match = _HF_CACHE_SNAPSHOT.search(os.path.abspath(source))
        base_model = f"{match['owner']}/{match['name']}" if match else None
        card_path = Path(source, "README.md")
    elif _is_repo_id(source):
        base_model = source
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "README.md")
        card_path = Path(cached) if isinstance(cached, str) else None
    known = card_record(model)
    fields = {"base_model": base_model, **license_fields(card_path)}
    _update_record(model, **{key: value for key, value in fields.items() if key not in known})


def _is_repo_id(text: str) -> bool:
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def license_fields(card_path: Path | None) -> dict[str, str]:
    """The license metadata (:data:`LICENSE_FIELDS`) of the model card at ``card_path``; ``{}`` if none."""
    if card_path is None or not card_path.is_file():
        return {}
    try:
        card_metadata = metadata_load(card_path) or {}
    except Exception as error:  # a float model's malformed card must not break its conversion
        logger.info("Could not read the metadata of %s: %s", card_path, error)
        return {}
    return {key: str(card_metadata[key]) for key in LICENSE_FIELDS if card_metadata.get(key)}
