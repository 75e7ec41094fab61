"""Zero-shot accuracy of BinaryMoS models with lm-eval-harness (``pip install lm-eval``).

:func:`evaluate_zero_shot` runs lm-eval's Hugging Face model class (``lm_eval.models.huggingface.HFLM``) on a
BinaryMoS model, packed or latent, with or without a LoRA adapter, and returns lm-eval's full results together
with one accuracy per task: the metric the BinaryMoS and OneBit papers report (``acc_norm`` for piqa, hellaswag
and the ARC sets, ``acc`` for boolq and winogrande). lm-eval is imported only when the function runs.

The standard tasks download their datasets from the Hugging Face Hub. Offline, define a task on local files:
a YAML file with ``dataset_path: json`` and ``dataset_kwargs: {data_files: {test: /path/data.jsonl}}`` in a
folder passed as ``include_path`` (lm-eval then reads the file with ``datasets``' json builder; no network,
``HF_DATASETS_OFFLINE=1`` is fine).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_ZERO_SHOT_TASKS", "REPORTED_METRICS", "ZeroShotResults", "evaluate_zero_shot"]

#: The zero-shot suite of the BinaryMoS paper (and of OneBit before it).
DEFAULT_ZERO_SHOT_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge")

#: Metric reported per task; tasks not listed report ``acc`` (else ``acc_norm``, else ``exact_match``).
REPORTED_METRICS = {
    "boolq": "acc",
    "winogrande": "acc",
    "piqa": "acc_norm",
    "hellaswag": "acc_norm",
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
}
_FALLBACK_METRICS = ("acc", "acc_norm", "exact_match")


class ZeroShotResults(dict):
    """What :func:`evaluate_zero_shot` returns: the flat ``{task: accuracy}`` dict (values in [0, 1], one
    reported metric per task, see :data:`REPORTED_METRICS`), a plain dict for printing and ``json.dumps``,
    that also carries the rest.

    Attributes:
        metrics: ``{task: metric name}``, which metric each accuracy is.
        stderrs: ``{task: standard error}`` where lm-eval computed one.
        tasks: the task names that were asked for, in order.
        results: lm-eval's own results dict (``lm_eval.simple_evaluate``'s return value).
    """

    def __init__(
        self,
        accuracies: dict[str, float],
        metrics: dict[str, str],
        stderrs: dict[str, float],
        tasks: list[str],
        results: dict[str, Any],
    ) -> None:
        super().__init__(accuracies)
        self.metrics = metrics
        self.stderrs = stderrs
        self.tasks = tasks
        self.results = results

    @property
    def accuracies(self) -> dict[str, float]:
        """``{task: accuracy}`` as a new plain dict."""
        return dict(self)

    @property
    def average(self) -> float | None:
        """Mean accuracy over the requested tasks (the papers' "Avg." column), ``None`` if none scored."""
        values = [self.accuracies[task] for task in self.tasks if task in self.accuracies]
        return sum(values) / len(values) if values else None

    def summary(self) -> dict[str, Any]:
        """JSON-safe summary for model cards: per-task metric, value and stderr, the average, and the setup."""
        config = self.results.get("config", {})
        return {
            "tasks": {
                task: {"metric": self.metrics[task], "value": value, "stderr": self.stderrs.get(task)}
                for task, value in self.accuracies.items()
            },
            "average": self.average,
            "num_fewshot": self.results.get("n-shot", {}),
            "limit": config.get("limit"),
            "lm_eval_version": self.results.get("lm_eval_version"),
        }

    def card_metrics(self) -> dict[str, float]:
        """``{"<task>_<metric>": value, ..., "zero_shot_average": mean}``, the form that
        :func:`optimum_binarymos.record_evaluation` stores for the model card."""
        metrics = {f"{task}_{self.metrics[task]}": value for task, value in self.accuracies.items()}
        if self.average is not None:
            metrics["zero_shot_average"] = self.average
        return metrics

    def table(self) -> str:
        """lm-eval's markdown table of every metric."""
        from lm_eval.utils import make_table

        return make_table(self.results)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{"summary": ..., "lm_eval": <results>}`` as JSON to ``path``; returns the path."""
        from lm_eval.utils import handle_non_serializable

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"summary": self.summary(), "lm_eval": self.results}
        path.write_text(json.dumps(document, indent=2, default=handle_non_serializable) + "\n")
        return path


def evaluate_zero_shot(
    model_or_path: str | os.PathLike[str] | nn.Module,
    tasks: Sequence[str] | str = DEFAULT_ZERO_SHOT_TASKS,
    *,
    tokenizer: Any = None,
    adapter: str | os.PathLike[str] | None = None,
    batch_size: int | str = 8,
    device: str | None = None,
    dtype: str = "auto",
    limit: int | float | None = None,
    num_fewshot: int = 0,
    max_length: int | None = None,
    include_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    include_defaults: bool = True,
    bootstrap_iters: int = 100_000,
    output_path: str | os.PathLike[str] | None = None,
) -> ZeroShotResults:
    """Zero-shot (by default) evaluation of a BinaryMoS model with lm-eval-harness.

    Args:
        model_or_path: a model folder or Hub id (loaded with ``AutoModelForCausalLM``; packed checkpoints load
            packed), or a model object (a ``PreTrainedModel`` or a peft ``PeftModel``), used as is.
        tasks: lm-eval task or group names, as a sequence or a comma-separated string.
        tokenizer: a tokenizer object or a folder/Hub id; default: the model's own folder.
        adapter: a LoRA adapter folder to apply on top (:func:`~optimum_binarymos.integrations.peft.load_lora_adapter`, which injects the
            adapter into a model object in place).
        batch_size: requests per forward, or ``"auto"``.
        device: ``"cuda"``, ``"cpu"``, ...; default: CUDA when available. A model object is moved only when
            this is given.
        dtype: dtype to load a model folder in (``"auto"``: the checkpoint's; or ``"bfloat16"``, ...).
        limit: examples per task (an int) or a fraction of them; for quick checks only.
        num_fewshot: in-context examples per question; 0 is the papers' protocol.
        max_length: context length; default: the model config's.
        include_path: folder(s) of extra task YAML files (for example tasks on local data).
        include_defaults: also index lm-eval's built-in tasks (set ``False`` to skip that scan when only local
            tasks are used).
        bootstrap_iters: bootstrap iterations for the stderr of metrics that need it; 0 skips every stderr.
        output_path: when given, :meth:`ZeroShotResults.save` writes the results there as JSON.

    Returns:
        :class:`ZeroShotResults`: ``.accuracies`` (``{task: acc}``), ``.average``, ``.results`` (lm-eval's dict).

    Raises:
        ImportError: when lm-eval is not installed.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ImportError("Zero-shot evaluation needs lm-eval-harness: pip install lm-eval") from error

    task_names = _task_list(tasks)
    model, tokenizer = _load(model_or_path, tokenizer, adapter, device, dtype)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    task_manager = TaskManager(include_path=_path_list(include_path), include_defaults=include_defaults)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=task_names,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=task_manager,
        bootstrap_iters=bootstrap_iters,
        log_samples=False,
    )
    evaluation = _summarize(results, task_names)
    if output_path is not None:
        evaluation.save(output_path)
    return evaluation


def _task_list(tasks: Sequence[str] | str) -> list[str]:
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise ValueError("No task to evaluate: pass lm-eval task names, e.g. tasks=['piqa', 'arc_easy'].")
    return names


def _path_list(paths) -> list[str] | None:
    if paths is None:
        return None
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(path) for path in paths]


def _load(model_or_path, tokenizer, adapter, device: str | None, dtype: str):
    """The model (on its device, in eval mode, adapter applied) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model_or_path, (str, os.PathLike)):
        source = os.fspath(model_or_path)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    elif isinstance(model_or_path, nn.Module):
        model = model_or_path
        source = getattr(getattr(model, "config", None), "_name_or_path", None)
    else:
        raise TypeError(
            f"model_or_path must be a path, a Hub id or a model, got {type(model_or_path).__name__}"
        )
    if device is not None:
        model = model.to(device)
    if adapter is not None:
        from .peft import load_lora_adapter

        model = load_lora_adapter(model, adapter)
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer_source = os.fspath(tokenizer) if tokenizer is not None else source
        if not tokenizer_source:
            raise ValueError("This model object does not say where it was loaded from: pass tokenizer=.")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    return model.eval(), tokenizer


def _summarize(results: dict[str, Any], task_names: list[str]) -> ZeroShotResults:
    accuracies: dict[str, float] = {}
    metrics: dict[str, str] = {}
    stderrs: dict[str, float] = {}
    for task, values in results.get("results", {}).items():
        metric, key = _reported_metric(task, values)
        if metric is None:
            continue
        accuracies[task] = float(values[key])
        metrics[task] = metric
        stderr = values.get(key.replace(",", "_stderr,", 1))
        if isinstance(stderr, (int, float)):
            stderrs[task] = float(stderr)
    return ZeroShotResults(accuracies, metrics, stderrs, task_names, results)


def _reported_metric(task: str, values: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(metric, key)`` of the metric to report, e.g. ``("acc_norm", "acc_norm,none")``; lm-eval keys are
    ``"<metric>,<filter>"``."""
    preferred = [REPORTED_METRICS[task]] if task in REPORTED_METRICS else []
    for metric in [*preferred, *_FALLBACK_METRICS]:
        for key, value in values.items():
            if key.split(",", 1)[0] == metric and isinstance(value, (int, float)):
                return metric, key
    return None, None


def main() -> None:
    """``lm-eval-binarymos``: lm-eval's own command line, with BinaryMoS and ternary checkpoints loadable.

    lm-eval loads ``--model hf`` checkpoints with ``AutoModelForCausalLM.from_pretrained`` and imports no plugin;
    this entry point imports ``optimum_binarymos`` (which registers its quantization methods with transformers)
    and then hands the arguments to lm-eval unchanged::

        lm-eval-binarymos run --model hf --model_args pretrained=user/model-binarymos --tasks piqa
    """
    import optimum_binarymos  # noqa: F401  registers the quantization methods before lm-eval loads the model

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as error:
        raise SystemExit(f"lm-eval-binarymos needs lm-eval-harness: pip install lm-eval ({error})") from error
    cli_evaluate()


if __name__ == "__main__":
    main()
