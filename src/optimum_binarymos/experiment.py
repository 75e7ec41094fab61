"""Small-budget distillation runs on a real model: what ``make demo`` and ``benchmarks/quality.py`` share.

A run takes a float causal LM, builds a 1-bit or ternary student from it (:func:`build_student`), distills it for
a stated :class:`Budget` (:func:`distill`) and scores perplexity on held-out text. The demo and the benchmarks
run SmolLM2-135M-Instruct on the State of the Union addresses split by date (:func:`sotu_data`); the scripts
fetch both (``examples/demo_assets``) and pass them in: nothing here downloads anything.

Example::

    >>> from demo_assets import sotu_addresses                 # doctest: +SKIP
    >>> from optimum_binarymos.experiment import Budget, build_student, distill, sotu_data
    >>> budget = Budget(steps=30)                              # doctest: +SKIP
    >>> data = sotu_data(tokenizer, budget, sotu_addresses())  # doctest: +SKIP
    >>> student = build_student(model_dir, "binarymos")        # doctest: +SKIP
    >>> history = distill(student, teacher, data.train, budget, "out")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, default_data_collator

from .calibration import DEFAULT_CALIBRATION_TOKENS
from .distill.data import TokenBlocks, text_blocks
from .eval import perplexity
from .methods.binarymos import BinaryMoSConfig
from .methods.ternary import TernaryConfig
from .nn.binarymos import BinaryMoSLinear, PackedBinaryMoSLinear

__all__ = [
    "DEFAULT_EVAL_FROM_YEAR",
    "METHODS",
    "Budget",
    "SotuData",
    "build_student",
    "distill",
    "evaluate_perplexity",
    "median_scale_spread",
    "quantization_config",
    "sotu_data",
    "spread_experts",
    "token_scale_samples",
    "token_spread",
]

#: The compared methods: OneBit is BinaryMoS with one scaling expert; ternary is TernaryLLM's DLT.
METHODS = ("onebit", "binarymos", "ternary")

#: First year of the evaluation addresses: 22 State of the Union addresses (2000-2021), 161k SmolLM2 tokens.
DEFAULT_EVAL_FROM_YEAR = 2000

#: Years before the evaluation addresses held out as the validation split.
VALIDATION_YEARS = 10

# English averages about 4.5 characters per SmolLM2 token; reading 6 per token leaves a margin.
_CHARS_PER_TOKEN = 6


@dataclass(frozen=True)
class Budget:
    """What a distillation run may spend, and how it spends it.

    The defaults suit a 135M-parameter model on a couple of CPU cores (about 10 s per step): a learning rate
    50x the authors' 2e-5 (they train 3 epochs of 2048-token blocks on GPUs; a few dozen steps need bigger
    ones), the KL term averaged per token, and OneBit's normalized hidden-state distance, which the massive
    activations of small models cannot dominate (plain MSE summed over layers reaches ~1e6 on SmolLM2).

    Attributes:
        steps: optimizer steps.
        block_size: tokens per training sequence.
        batch_size: sequences per step.
        learning_rate: AdamW peak learning rate (cosine decay, ``warmup`` fraction of linear warmup).
        kd_hidden_loss / kd_hidden_weight: the hidden-state term of :class:`~optimum_binarymos.distill.DistillationConfig`.
        kd_logits_reduction: ``"token_mean"`` keeps the KL term's size independent of ``block_size``.
        warmup: warmup fraction of the steps.
        seed: seeds the router initialization, the data order and the trainer.
        calibration_tokens: tokens of older text that initialize BinaryMoS experts, routers and output scales, or
            ternary rows' magnitudes (:func:`~optimum_binarymos.calibrate_model`); 0 = the paper's data-free
            initialization (SVID scales and a random router; TWN).
        scales_learning_rate: learning rate of scales and routers (``None``: ``learning_rate``).
    """

    steps: int = 30
    block_size: int = 128
    batch_size: int = 4
    learning_rate: float = 1e-3
    kd_hidden_loss: str = "normalized_mse"
    kd_hidden_weight: float = 1.0
    kd_logits_reduction: str = "token_mean"
    warmup: float = 0.05
    seed: int = 0
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS
    scales_learning_rate: float | None = 5e-3

    def __post_init__(self) -> None:
        for name in ("steps", "block_size", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Budget.{name} must be an integer >= 1, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"Budget.learning_rate must be > 0, got {self.learning_rate!r}")

    @property
    def tokens(self) -> int:
        """Training tokens the budget reads: ``steps * batch_size * block_size``."""
        return self.steps * self.batch_size * self.block_size

    def describe(self) -> str:
        scales = "" if self.scales_learning_rate is None else f" (scales {self.scales_learning_rate:g})"
        init = f"calibrated on {self.calibration_tokens:,} tokens" if self.calibration_tokens else "SVID init"
        return (
            f"{self.steps} steps x {self.batch_size} x {self.block_size} tokens = {self.tokens:,} tokens, "
            f"lr {self.learning_rate:g}{scales} cosine, KL ({self.kd_logits_reduction}) + "
            f"{self.kd_hidden_weight:g} x {self.kd_hidden_loss} over every layer, {init}"
        )

    @classmethod
    def paper_init(cls, **kwargs: Any) -> Budget:
        """The budget with the paper's initialization and one learning rate: SVID scales, random router."""
        return cls(**{"calibration_tokens": 0, "scales_learning_rate": None, **kwargs})

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens": self.tokens}


def quantization_config(
    method: str, num_experts: int = 4, group_size: int = 128, calibration: torch.Tensor | None = None
):
    """The quantization config of ``method`` (one of :data:`METHODS`).

    ``"onebit"`` is ``BinaryMoSConfig(num_experts=1)``, ``"binarymos"`` ``BinaryMoSConfig(num_experts)``,
    ``"ternary"`` ``TernaryConfig(group_size)``. ``calibration`` token ids, when given, calibrate the student
    (:func:`~optimum_binarymos.calibrate_model`).
    """
    data = {} if calibration is None else {"dataset": calibration, "calibration_tokens": calibration.numel()}
    if method == "onebit":
        return BinaryMoSConfig(num_experts=1, **data)
    if method == "binarymos":
        return BinaryMoSConfig(num_experts=num_experts, **data)
    if method == "ternary":
        return TernaryConfig(group_size=group_size, **data)
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def build_student(
    model_dir: str | os.PathLike[str],
    method: str,
    *,
    num_experts: int = 4,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    expert_spread: float = 0.0,
    calibration: torch.Tensor | None = None,
) -> nn.Module:
    """Load the float checkpoint ``model_dir`` converted on the fly into a trainable ``method`` student.

    ``seed`` fixes the random router initialization, so runs repeat; ``expert_spread > 0`` applies
    :func:`spread_experts` to a BinaryMoS student; ``calibration`` token ids (``SotuData.calibration``)
    calibrate the student while it converts.
    """
    torch.manual_seed(seed)
    config = quantization_config(method, num_experts, calibration=calibration)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config, dtype=dtype)
    if expert_spread:
        spread_experts(model, expert_spread, seed)
    return model


@torch.no_grad()
def spread_experts(model: nn.Module, spread: float, seed: int = 0) -> int:
    """Make the scaling experts of every BinaryMoS layer differ, keeping their mean at the SVID scales.

    SVID starts all experts equal, and AdamW then moves them almost equally (its update barely depends on the
    gradient's size, and each expert's gradient is the same signal weighted by its gate), so at small budgets
    the experts stay nearly identical and BinaryMoS behaves like OneBit. This multiplies expert ``e`` of each
    scale by ``1 + spread * z[e]`` with ``z`` standard normal per channel and centered over the experts: a
    uniform mix of the experts still gives the SVID scales. Not part of the paper's recipe.

    Returns:
        The number of layers changed (layers with one expert are left alone).
    """
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread!r}")
    generator = torch.Generator().manual_seed(seed)
    changed = 0
    for module in model.modules():
        if isinstance(module, BinaryMoSLinear) and module.num_experts > 1:
            for scale in (module.scale_in, module.scale_out):
                noise = torch.randn(scale.shape, generator=generator)
                noise -= noise.mean(dim=0, keepdim=True)
                scale.mul_((1 + spread * noise).to(scale.dtype))
            changed += 1
    return changed


@dataclass
class SotuData:
    """Training blocks from the older addresses and the evaluation token stream from the newer ones.

    Attributes:
        train: :class:`~optimum_binarymos.distill.TokenBlocks` ``(steps * batch_size, block_size)``.
        eval_ids: ``LongTensor (num_tokens,)``, the evaluation addresses tokenized once.
        eval_from_year: first year of the evaluation addresses.
        calibration: ``LongTensor (budget.calibration_tokens,)`` from the addresses just before the training
            stretch (disjoint from it), or ``None`` when the budget calibrates nothing.
    """

    train: TokenBlocks
    eval_ids: torch.Tensor
    eval_from_year: int
    calibration: torch.Tensor | None = None


def sotu_data(
    tokenizer: Any,
    budget: Budget,
    addresses: Iterable[Any],
    eval_from_year: int = DEFAULT_EVAL_FROM_YEAR,
    split: str = "evaluation",
) -> SotuData:
    """Cut the addresses before ``eval_from_year`` into exactly the blocks ``budget`` trains on.

    ``addresses`` are dated texts, in any order: objects with ``year`` and ``text`` attributes (the
    ``SotuAddress`` items of ``demo_assets.sotu_addresses()`` in ``examples/``) or ``(year, text)`` pairs. They
    are sorted by year (texts of one year keep their order), stripped and joined with ``"\\n\\n"``.

    The training text is the most recent stretch before ``eval_from_year`` long enough for the budget (the
    closest in style to the evaluation addresses); only that stretch is tokenized.

    ``split="validation"`` is for choosing hyper-parameters without looking at the evaluation addresses: the
    held-out text is then the decade before ``eval_from_year`` (:data:`VALIDATION_YEARS`) and training and
    calibration text come from before it.

    Raises:
        ValueError: when ``eval_from_year`` leaves no address on one side, or when all the older addresses
            together are too short for the budget.
    """
    dated = _dated_texts(addresses)
    if split == "validation":
        train_text, _ = _split_by_year(dated, eval_from_year - VALIDATION_YEARS)
        before_evaluation, _ = _split_by_year(dated, eval_from_year)
        eval_text = before_evaluation[len(train_text) :].lstrip()  # the addresses of the held-out decade
        eval_from_year -= VALIDATION_YEARS
    elif split == "evaluation":
        train_text, eval_text = _split_by_year(dated, eval_from_year)
    else:
        raise ValueError(f"split must be 'evaluation' or 'validation', got {split!r}")
    needed_blocks = budget.steps * budget.batch_size
    chars = needed_blocks * budget.block_size * _CHARS_PER_TOKEN
    train = text_blocks([train_text[-chars:]], tokenizer, budget.block_size)
    calibration = None
    if budget.calibration_tokens:
        older = train_text[:-chars][-budget.calibration_tokens * _CHARS_PER_TOKEN :]
        ids = tokenizer(older, add_special_tokens=False)["input_ids"]
        calibration = torch.tensor(ids[-budget.calibration_tokens :], dtype=torch.long)
    if len(train) < needed_blocks:
        raise ValueError(
            f"The addresses before {eval_from_year} give {len(train)} blocks of {budget.block_size} tokens, "
            f"the budget needs {needed_blocks}: lower steps, batch_size or block_size"
        )
    train = TokenBlocks(train.blocks[-needed_blocks:])
    eval_ids = torch.tensor(tokenizer(eval_text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    return SotuData(train=train, eval_ids=eval_ids, eval_from_year=eval_from_year, calibration=calibration)


def _dated_texts(addresses: Iterable[Any]) -> list[tuple[int, str]]:
    """``(year, stripped text)`` of each address, oldest first (a stable sort: one year keeps its order)."""
    dated = []
    for address in addresses:
        if isinstance(address, tuple):
            year, text = address
        else:
            year, text = address.year, address.text
        dated.append((int(year), text.strip()))
    if not dated:
        raise ValueError("sotu_data needs at least one address, got none")
    return sorted(dated, key=lambda pair: pair[0])


def _split_by_year(dated: list[tuple[int, str]], eval_from_year: int) -> tuple[str, str]:
    """The texts before ``eval_from_year`` and from it on, each joined with ``"\\n\\n"``; neither may be empty."""
    train = [text for year, text in dated if year < eval_from_year]
    evaluation = [text for year, text in dated if year >= eval_from_year]
    if not train or not evaluation:
        first, last = dated[0][0], dated[-1][0]
        raise ValueError(
            f"eval_from_year={eval_from_year} leaves an empty split: the addresses span {first} to {last}, "
            f"pick a year in {first + 1}..{last}"
        )
    return "\n\n".join(train), "\n\n".join(evaluation)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train: TokenBlocks,
    budget: Budget,
    output_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    callbacks: list[Any] | None = None,
    **overrides: Any,
) -> list[dict[str, float]]:
    """Distill ``teacher`` into ``student`` (modified in place) on ``train`` for ``budget``.

    ``overrides`` go to :class:`~optimum_binarymos.distill.DistillationConfig`, ``callbacks``
    (``transformers.TrainerCallback``) to the trainer. Runs on CPU unless a GPU is present. Returns the trainer's log history: one dict per logged step with ``loss``, ``kd_logits``,
    ``kd_hidden``, ``learning_rate`` and ``step``.
    """
    from .distill import DistillationConfig, DistillationTrainer

    arguments = dict(
        output_dir=str(output_dir),
        max_steps=budget.steps,
        per_device_train_batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        warmup_steps=budget.warmup,
        kd_hidden_loss=budget.kd_hidden_loss,
        kd_hidden_weight=budget.kd_hidden_weight,
        kd_logits_reduction=budget.kd_logits_reduction,
        scales_learning_rate=budget.scales_learning_rate,
        seed=budget.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
    )
    arguments.update(overrides)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillationConfig(**arguments),
        train_dataset=train,
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
    trainer.train()
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def evaluate_perplexity(
    model: nn.Module, eval_ids: torch.Tensor, seq_len: int = 512, max_windows: int | None = None
) -> float:
    """Perplexity by the GPTQ protocol on the first ``max_windows`` windows of ``eval_ids`` (inf when broken)."""
    result = perplexity(model, token_ids=eval_ids, seq_len=seq_len, max_windows=max_windows)
    return result.ppl if math.isfinite(result.ppl) else math.inf


@torch.no_grad()
def token_scale_samples(
    model: nn.Module, input_ids: torch.Tensor, layer_name: str
) -> dict[str, torch.Tensor]:
    """The effective input and output scales one BinaryMoS layer applies to each token.

    Runs ``model`` on ``input_ids`` ``(batch, seq)`` and records, for the layer named ``layer_name``, the scale of
    every channel for every token: with one expert (OneBit) each column is constant, with several the router
    mixes the experts per token.

    Returns:
        ``{"scale_in": FloatTensor (batch * seq, in_features), "scale_out": FloatTensor (batch * seq, out_features)}``.
    """
    layer = model.get_submodule(layer_name)
    if not isinstance(layer, (BinaryMoSLinear, PackedBinaryMoSLinear)):
        raise TypeError(f"{layer_name} is a {type(layer).__name__}, not a BinaryMoS layer")
    captured: dict[str, torch.Tensor] = {}

    def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].reshape(-1, args[0].shape[-1])
        scale_in, scale_out = layer.token_scales(x)
        tokens = x.shape[0]
        captured["scale_in"] = scale_in.float().expand(tokens, layer.in_features).clone()
        captured["scale_out"] = scale_out.float().expand(tokens, layer.out_features).clone()

    handle = layer.register_forward_pre_hook(record)
    was_training = model.training
    model.eval()
    try:
        model(input_ids=input_ids, use_cache=False)
    finally:
        handle.remove()
        model.train(was_training)
    return captured


@torch.no_grad()
def median_scale_spread(model: nn.Module, input_ids: torch.Tensor) -> float:
    """Median over every BinaryMoS layer and output channel of :func:`token_spread` of the output scales.

    One forward of ``model`` on ``input_ids`` ``(batch, seq)``; 0.0 for OneBit (static scales) or a model with
    no BinaryMoS layer.
    """
    spreads: list[torch.Tensor] = []

    def record(layer: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if layer.num_experts > 1:
            _, scale_out = layer.token_scales(args[0].reshape(-1, args[0].shape[-1]))
            spreads.append(token_spread(scale_out.float()))

    layers = [m for m in model.modules() if isinstance(m, (BinaryMoSLinear, PackedBinaryMoSLinear))]
    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return torch.cat(spreads).median().item() if spreads else 0.0


def token_spread(scales: torch.Tensor) -> torch.Tensor:
    """Per channel, the standard deviation over tokens relative to the mean: ``(tokens, channels) -> (channels,)``.

    Zero for OneBit's static scales; how far BinaryMoS's router makes each channel's scale vary across tokens.
    """
    return scales.std(dim=0, unbiased=False) / scales.mean(dim=0).abs().clamp_min(1e-12)
