"""``BinaryMoSConfig``: what a user passes as ``quantization_config`` to ``from_pretrained``."""

from __future__ import annotations

import copy
from typing import Any

from transformers.quantizers import register_quantization_config
from transformers.utils.quantization_config import QuantizationConfigMixin

from .calibration import DEFAULT_CALIBRATION_TOKENS, MIN_CALIBRATION_TOKENS
from .nn.svid import DEFAULT_SVID_ITERATIONS
from .packing import FORMAT_VERSION

#: Name under which the method is registered with transformers (``quant_method`` in ``config.json``).
QUANT_METHOD = "binarymos"

#: What a saved checkpoint can hold: 1-bit packed layers, or latent float weights (to resume training).
CHECKPOINT_FORMS = ("packed", "latent")

#: Written into every saved quantization config: transformers' own error for a checkpoint whose method it does not
#: know lists mismatched shapes only, so the file itself says what to add.
LOADING_HINT = "import optimum_binarymos before from_pretrained (pip install optimum-binarymos)"
#: Keys that a saved quantization config holds but ``__init__`` does not take.
SAVED_ONLY_KEYS = ("quant_method", "loading")

# Fields that feed the data-aware initialization at conversion and are never written to config.json.
_CALIBRATION_INPUTS = ("dataset", "tokenizer")

#: Default number of scaling experts (the paper's best trade-off).
DEFAULT_NUM_EXPERTS = 4
#: More power iterations than this are a typo (30 converge; each costs two products with the weight).
MAX_SVID_ITERATIONS = 10_000


def newer_format_message(version: int, supported: int, layout: str, source: str = "This checkpoint") -> str:
    """The one message for a format version this library cannot read, whether found in ``config.json`` or in a
    safetensors file's metadata.

    Args:
        version: the version found.
        supported: the largest version this library reads.
        layout: the layout being versioned (``"BinaryMoS packed"``, ``"ternary packed"``).
        source: where it was found, starting the sentence.
    """
    return (
        f"{source} uses {layout} format version {version}, but the installed optimum-binarymos reads up to "
        f"version {supported}. Upgrade it: pip install -U optimum-binarymos"
    )


def module_name_list(names: Any) -> list[str] | None:
    """``modules_to_not_convert`` as a list: one name given as a string is one name, not its characters."""
    if names is None:
        return None
    if isinstance(names, str):
        return [names]
    return list(names)


def check_calibration_tokens(calibration_tokens: Any) -> None:
    """Refuse a ``calibration_tokens`` that is not an integer of at least ``MIN_CALIBRATION_TOKENS``."""
    if (
        isinstance(calibration_tokens, bool)
        or not isinstance(calibration_tokens, int)
        or calibration_tokens < MIN_CALIBRATION_TOKENS
    ):
        raise ValueError(
            f"calibration_tokens must be an integer >= {MIN_CALIBRATION_TOKENS}; got {calibration_tokens!r}"
        )


def config_dict_without_calibration(config: QuantizationConfigMixin) -> dict[str, Any]:
    """``config.__dict__`` deep-copied without the calibration inputs: they shape the initialization only, a
    checkpoint does not need them, and a tokenizer or a dataset is not JSON."""
    saved = copy.deepcopy({key: value for key, value in config.__dict__.items() if key not in _CALIBRATION_INPUTS})
    saved["loading"] = LOADING_HINT
    return saved


def check_checkpoint_form(checkpoint_form: Any) -> None:
    """Refuse a ``checkpoint_form`` other than those of :data:`CHECKPOINT_FORMS`; otherwise loading would pick
    packed or latent skeletons from a typo and fail later on tensor shapes."""
    if checkpoint_form not in CHECKPOINT_FORMS:
        raise ValueError(
            f"checkpoint_form must be one of {list(CHECKPOINT_FORMS)}; got {checkpoint_form!r}. Leave it to the "
            "library: use optimum_binarymos.latent_saving(model) to save latent weights."
        )


@register_quantization_config(QUANT_METHOD)
class BinaryMoSConfig(QuantizationConfigMixin):
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

    def __init__(
        self,
        num_experts: int = DEFAULT_NUM_EXPERTS,
        modules_to_not_convert: list[str] | None = None,
        svid_iterations: int = DEFAULT_SVID_ITERATIONS,
        format_version: int = FORMAT_VERSION,
        checkpoint_form: str = "packed",
        dataset: Any = None,
        tokenizer: Any = None,
        calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS,
        **kwargs: Any,
    ) -> None:
        self.quant_method = QUANT_METHOD
        self.num_experts = num_experts
        self.modules_to_not_convert = module_name_list(modules_to_not_convert)
        self.svid_iterations = svid_iterations
        self.format_version = format_version
        self.checkpoint_form = checkpoint_form
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.calibration_tokens = calibration_tokens
        # Reloading passes back every saved key; drop the ones transformers adds itself.
        for key in SAVED_ONLY_KEYS:
            kwargs.pop(key, None)
        if kwargs:
            unknown = ", ".join(sorted(kwargs))
            raise ValueError(
                f"BinaryMoSConfig got unknown arguments: {unknown}. Known: num_experts, modules_to_not_convert, "
                "svid_iterations, format_version, checkpoint_form, dataset, tokenizer, calibration_tokens."
            )
        self.post_init()

    def post_init(self) -> None:
        """Validate every field, with a message that says what to change."""
        if (
            isinstance(self.num_experts, bool)
            or not isinstance(self.num_experts, int)
            or self.num_experts < 1
        ):
            raise ValueError(
                f"num_experts must be an integer >= 1 (1 is the OneBit baseline, 4 the BinaryMoS default); "
                f"got {self.num_experts!r}"
            )
        if self.modules_to_not_convert is not None and not all(
            isinstance(name, str) and name for name in self.modules_to_not_convert
        ):
            raise ValueError(
                "modules_to_not_convert must be a list of non-empty module names such as ['lm_head', "
                f"'mlp.down_proj']; got {self.modules_to_not_convert!r}"
            )
        if (
            isinstance(self.svid_iterations, bool)
            or not isinstance(self.svid_iterations, int)
            or self.svid_iterations < 0
            or self.svid_iterations > MAX_SVID_ITERATIONS
        ):
            raise ValueError(
                f"svid_iterations must be an integer from 0 to {MAX_SVID_ITERATIONS} (0 = exact SVD, 30 is plenty); "
                f"got {self.svid_iterations!r}"
            )
        if (
            isinstance(self.format_version, bool)
            or not isinstance(self.format_version, int)
            or self.format_version < 1
        ):
            raise ValueError(f"format_version must be a positive integer; got {self.format_version!r}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(newer_format_message(self.format_version, FORMAT_VERSION, "BinaryMoS packed"))
        check_checkpoint_form(self.checkpoint_form)
        check_calibration_tokens(self.calibration_tokens)

    def to_dict(self) -> dict[str, Any]:
        return config_dict_without_calibration(self)

    def __iter__(self):
        yield from self.to_dict().items()
