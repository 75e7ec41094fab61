"""``BinaryMoSConfig``: what a user passes as ``quantization_config`` to ``from_pretrained``."""

from __future__ import annotations

from typing import Any

from transformers.quantizers import register_quantization_config

from ...nn.svid import DEFAULT_SVID_ITERATIONS
from ...packing import FIRST_FORMAT_VERSION, FORMAT_VERSION
from ..config_base import DEFAULT_CALIBRATION_TOKENS, MethodConfig, is_int

#: Name under which the method is registered with transformers (``quant_method`` in ``config.json``).
QUANT_METHOD = "binarymos"

#: Default number of scaling experts (the paper's best trade-off).
DEFAULT_NUM_EXPERTS = 4
#: More power iterations than this are a typo (30 converge; each costs two products with the weight).
MAX_SVID_ITERATIONS = 10_000


@register_quantization_config(QUANT_METHOD)
class BinaryMoSConfig(MethodConfig):
    """Configuration of BinaryMoS 1-bit quantization.

    Every ``nn.Linear`` (and GPT-2 style ``Conv1D``) inside the model's repeated decoder blocks becomes
    ``sign(W)`` scaled by token-adaptive input/output scales mixed from ``num_experts`` scaling experts.
    Embeddings, ``lm_head`` and norms are never converted.

    Args:
        num_experts: scaling experts per layer. ``1`` is the OneBit baseline (static dual scales, no router).
        modules_to_not_convert: extra modules to keep in float, as dotted names or name pieces matched on
            whole components (``"mlp.down_proj"`` keeps every block's ``down_proj`` in its ``mlp``,
            ``"layers.0"`` keeps the first block, ``"vision_tower"`` a whole sub-model).
        svid_iterations: power iterations for the rank-1 SVID initialization of the scales; ``0`` uses an
            exact SVD (much slower on large matrices, same result to ~1e-6).
        embedding_bits: ``None`` (the default) keeps the input embeddings and the output head (``lm_head``) in
            the model's float dtype; ``8`` stores both as int8 codes with one float scale per row
            (:class:`~optimum_binarymos.nn.int8.Int8Embedding`, :class:`~optimum_binarymos.nn.int8.Int8Linear`),
            4x smaller than float32 where they dominate a small model, and decoding reads 4x fewer bytes for the
            head; ``4`` stores 4-bit codes with one float scale per 32 columns
            (:class:`~optimum_binarymos.nn.int4.Int4Embedding`, :class:`~optimum_binarymos.nn.int4.Int4Linear`),
            half that again. Applied when the model is converted, so distillation trains against the quantized
            values.
        format_version: version of the packed layout; set when saving, checked when loading.
        checkpoint_form: what a saved checkpoint holds: ``"packed"`` (1-bit, for inference; the default) or
            ``"latent"`` (float latent weights, for resuming training; written inside
            :func:`optimum_binarymos.latent_saving`). Set by the library, not by users.
        dataset: calibration data for a data-aware initialization when ``from_pretrained`` converts a float
            model (:func:`optimum_binarymos.calibrate_model`): local text files or a folder of them, a list of
            texts, a ``datasets.Dataset`` with a ``"text"`` column, or token ids. ``None`` (the default): SVID
            scales and a random router only. Not saved in ``config.json``.
        tokenizer: the model's tokenizer, needed when ``dataset`` is text. Not saved.
        calibration_tokens: calibration tokens read from ``dataset``.

    Example::

        >>> from optimum_binarymos import BinaryMoSConfig
        >>> BinaryMoSConfig(num_experts=1).num_experts
        1
    """

    method_fields = ("num_experts", "svid_iterations")
    format_layout = "BinaryMoS packed"
    latest_format_version = FORMAT_VERSION

    def __init__(
        self,
        num_experts: int = DEFAULT_NUM_EXPERTS,
        modules_to_not_convert: list[str] | None = None,
        svid_iterations: int = DEFAULT_SVID_ITERATIONS,
        embedding_bits: int | None = None,
        format_version: int = FIRST_FORMAT_VERSION,
        checkpoint_form: str = "packed",
        dataset: Any = None,
        tokenizer: Any = None,
        calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS,
        **kwargs: Any,
    ) -> None:
        self.num_experts = num_experts
        self.svid_iterations = svid_iterations
        self._set_common_fields(
            QUANT_METHOD,
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
        if not is_int(self.num_experts) or self.num_experts < 1:
            raise ValueError(
                f"num_experts must be an integer >= 1 (1 is the OneBit baseline, 4 the BinaryMoS default); "
                f"got {self.num_experts!r}"
            )
        if not is_int(self.svid_iterations) or not 0 <= self.svid_iterations <= MAX_SVID_ITERATIONS:
            raise ValueError(
                f"svid_iterations must be an integer from 0 to {MAX_SVID_ITERATIONS} (0 = exact SVD, 30 is plenty); "
                f"got {self.svid_iterations!r}"
            )
        self._check_common_fields("'lm_head', 'mlp.down_proj'")
