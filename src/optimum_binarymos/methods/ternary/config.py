"""``TernaryConfig``: the ``quantization_config`` for 1.58-bit ternary models (TernaryLLM's DLT)."""

from __future__ import annotations

import math
from typing import Any

from transformers.quantizers import register_quantization_config

from ...kernels.ternary import TRITON_GROUP_MULTIPLE
from ...nn.ternary import DEFAULT_GROUP_SIZE, DEFAULT_INIT_THRESHOLD, SHIFT_INITS
from ...packing import CODE_PACKINGS, FIRST_FORMAT_VERSION, TERNARY_FORMAT_VERSION
from ..config_base import DEFAULT_CALIBRATION_TOKENS, MethodConfig, is_int

#: Name under which the method is registered with transformers (``quant_method`` in ``config.json``).
TERNARY_QUANT_METHOD = "binarymos_ternary"

#: Group sizes must be multiples of this, so the Triton kernel can tile every group for ``tl.dot``.
GROUP_SIZE_MULTIPLE = TRITON_GROUP_MULTIPLE


@register_quantization_config(TERNARY_QUANT_METHOD)
class TernaryConfig(MethodConfig):
    """Configuration of ternary (1.58-bit) quantization with Dual Learnable Ternarization.

    Every ``nn.Linear`` (and GPT-2 style ``Conv1D``) inside the model's repeated decoder blocks becomes
    ``W_q = alpha * T + gamma`` with trits ``T`` in {-1, 0, +1} and a learnable scale ``alpha`` and shift
    ``gamma`` per group of ``group_size`` input columns. Embeddings, ``lm_head`` and norms are never converted.

    Args:
        group_size: input columns per group (the paper leaves it open; 128 by default). A multiple of 16.
        code_packing: how trits are stored: ``"2bit"`` (4 per byte; simple to decode, the default) or
            ``"base3"`` (5 per byte, 1.6 bits per weight, about 20 % smaller codes).
        init_threshold: TWN initialization (the paper leaves it open): weights whose ``|W - gamma|`` exceeds
            ``init_threshold * mean|W - gamma|`` of their group start as +-1, the others as 0, and ``alpha``
            starts as the mean ``|W - gamma|`` above the threshold. 0.7 by default.
        shift_init: initial ``gamma``: ``"mean"`` (the group mean, the default) or ``"zero"`` (symmetric TWN).
        modules_to_not_convert: extra modules to keep in float, as dotted names or name pieces matched on
            whole components (``"mlp.down_proj"``, ``"layers.0"``).
        embedding_bits: ``None`` (the default) keeps the input embeddings and the output head (``lm_head``) in
            the model's float dtype; ``8`` stores both as int8 codes with one float scale per row
            (:class:`~optimum_binarymos.nn.int8.Int8Embedding`, :class:`~optimum_binarymos.nn.int8.Int8Linear`),
            4x smaller than float32 where they dominate a small model, and decoding reads 4x fewer bytes for the
            head; ``4`` stores 4-bit codes with one float scale per 32 columns
            (:class:`~optimum_binarymos.nn.int4.Int4Embedding`, :class:`~optimum_binarymos.nn.int4.Int4Linear`),
            half that again. Applied when the model is converted, so distillation trains against the quantized
            values.
        format_version: version of the packed ternary layout; set when saving, checked when loading.
        checkpoint_form: ``"packed"`` (trits, for inference; the default) or ``"latent"`` (float latent weights
            for resuming training; written inside :func:`optimum_binarymos.latent_saving`). Set by the library.
        dataset: calibration data for a data-aware initialization when ``from_pretrained`` converts a float
            model (:func:`optimum_binarymos.calibrate_model`): each output row's weight, scales and shifts are
            multiplied by one factor so the row's output matches the float layer's magnitude on this data (the
            trits stay TWN's). The forms of ``BinaryMoSConfig(dataset=...)``; ``None`` (the default): TWN only.
            Not saved in ``config.json``.
        tokenizer: the model's tokenizer, needed when ``dataset`` is text. Not saved.
        calibration_tokens: calibration tokens read from ``dataset``.

    Example::

        >>> from optimum_binarymos import TernaryConfig
        >>> TernaryConfig(group_size=64, code_packing="base3").group_size
        64
    """

    method_fields = ("group_size", "code_packing", "init_threshold", "shift_init")
    format_layout = "ternary packed"
    latest_format_version = TERNARY_FORMAT_VERSION

    def __init__(
        self,
        group_size: int = DEFAULT_GROUP_SIZE,
        code_packing: str = CODE_PACKINGS[0],
        init_threshold: float = DEFAULT_INIT_THRESHOLD,
        shift_init: str = SHIFT_INITS[0],
        modules_to_not_convert: list[str] | None = None,
        embedding_bits: int | None = None,
        format_version: int = FIRST_FORMAT_VERSION,
        checkpoint_form: str = "packed",
        dataset: Any = None,
        tokenizer: Any = None,
        calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS,
        **kwargs: Any,
    ) -> None:
        self.group_size = group_size
        self.code_packing = code_packing
        self.init_threshold = init_threshold
        self.shift_init = shift_init
        self._set_common_fields(
            TERNARY_QUANT_METHOD,
            modules_to_not_convert,
            format_version,
            checkpoint_form,
            dataset,
            tokenizer,
            calibration_tokens,
            kwargs,
            embedding_bits=embedding_bits,
        )
        self.post_init()

    def post_init(self) -> None:
        """Validate every field, with a message that says what to change."""
        if not is_int(self.group_size) or self.group_size < 1 or self.group_size % GROUP_SIZE_MULTIPLE:
            raise ValueError(
                f"group_size must be a positive multiple of {GROUP_SIZE_MULTIPLE} (e.g. 64, 128 or 256; 128 is the "
                f"default); got {self.group_size!r}"
            )
        if self.code_packing not in CODE_PACKINGS:
            raise ValueError(
                f"code_packing must be one of {list(CODE_PACKINGS)} ('2bit': 4 trits per byte, 'base3': 5 per "
                f"byte); got {self.code_packing!r}"
            )
        if (
            isinstance(self.init_threshold, bool)
            or not isinstance(self.init_threshold, (int, float))
            or not math.isfinite(self.init_threshold)
            or self.init_threshold < 0
        ):
            raise ValueError(
                f"init_threshold must be a finite number >= 0 (0.7 is TWN's choice); got {self.init_threshold!r}"
            )
        if self.shift_init not in SHIFT_INITS:
            raise ValueError(f"shift_init must be one of {list(SHIFT_INITS)}; got {self.shift_init!r}")
        self._check_common_fields()
