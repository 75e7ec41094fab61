"""What every method's quantization config shares: the common fields, their checks, and the saved form."""

from __future__ import annotations

import copy
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from ..calibration import DEFAULT_CALIBRATION_TOKENS, MIN_CALIBRATION_TOKENS
from .embeddings import check_embedding_bits, required_format_version

#: What a saved checkpoint can hold: packed layers, or latent float weights (to resume training).
CHECKPOINT_FORMS = ("packed", "latent")

#: Written into every saved quantization config: transformers' own error for a checkpoint whose method it does not
#: know lists mismatched shapes only, so the file itself says what to add.
LOADING_HINT = "import optimum_binarymos before from_pretrained (pip install optimum-binarymos)"
#: Keys that a saved quantization config holds but ``__init__`` does not take.
SAVED_ONLY_KEYS = ("quant_method", "loading")

#: Arguments every method's config takes, after its own.
COMMON_FIELDS = (
    "modules_to_not_convert",
    "embedding_bits",
    "format_version",
    "checkpoint_form",
    "dataset",
    "tokenizer",
    "calibration_tokens",
)

# Fields that feed the data-aware initialization at conversion and are never written to config.json.
_CALIBRATION_INPUTS = ("dataset", "tokenizer")


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


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_calibration_tokens(calibration_tokens: Any) -> None:
    """Refuse a ``calibration_tokens`` that is not an integer of at least ``MIN_CALIBRATION_TOKENS``."""
    if not is_int(calibration_tokens) or calibration_tokens < MIN_CALIBRATION_TOKENS:
        raise ValueError(
            f"calibration_tokens must be an integer >= {MIN_CALIBRATION_TOKENS}; got {calibration_tokens!r}"
        )


def config_dict_without_calibration(config: QuantizationConfigMixin) -> dict[str, Any]:
    """``config.__dict__`` deep-copied without the calibration inputs (they shape the initialization only, a
    checkpoint does not need them, and a tokenizer or a dataset is not JSON), with the loading hint."""
    saved = copy.deepcopy({key: value for key, value in config.__dict__.items() if key not in _CALIBRATION_INPUTS})
    if saved.get("embedding_bits") is None:
        # Float embeddings are what format version 1 describes: without the key, older readers load the file.
        saved.pop("embedding_bits", None)
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


class MethodConfig(QuantizationConfigMixin):
    """Base of every method's ``quantization_config``: the fields they share, checked the same way.

    Subclasses set :attr:`method_fields` (their own arguments, for messages), :attr:`format_layout` and
    :attr:`latest_format_version`, call :meth:`_set_common_fields` from ``__init__`` and
    :meth:`_check_common_fields` from ``post_init``.
    """

    #: The subclass's own ``__init__`` arguments, listed in the message for an unknown one.
    method_fields: tuple[str, ...] = ()
    #: The packed layout's name in messages (``"BinaryMoS packed"``) and the newest version this library reads.
    format_layout = ""
    latest_format_version = 1

    def _set_common_fields(
        self,
        quant_method: str,
        modules_to_not_convert: Any,
        format_version: Any,
        checkpoint_form: Any,
        dataset: Any,
        tokenizer: Any,
        calibration_tokens: Any,
        unknown: dict[str, Any],
        embedding_bits: Any = None,
    ) -> None:
        self.quant_method = quant_method
        self.modules_to_not_convert = module_name_list(modules_to_not_convert)
        self.embedding_bits = embedding_bits
        self.format_version = format_version
        self.checkpoint_form = checkpoint_form
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.calibration_tokens = calibration_tokens
        # Reloading passes back every saved key; drop the ones that are not arguments.
        unknown = {key: value for key, value in unknown.items() if key not in SAVED_ONLY_KEYS}
        if unknown:
            raise ValueError(
                f"{type(self).__name__} got unknown arguments: {', '.join(sorted(unknown))}. Known: "
                f"{', '.join((*self.method_fields, *COMMON_FIELDS))}."
            )

    def _check_common_fields(self, examples: str = "'mlp.down_proj'") -> None:
        if self.modules_to_not_convert is not None and not all(
            isinstance(name, str) and name for name in self.modules_to_not_convert
        ):
            raise ValueError(
                f"modules_to_not_convert must be a list of non-empty module names such as [{examples}]; "
                f"got {self.modules_to_not_convert!r}"
            )
        check_embedding_bits(self.embedding_bits)
        if not is_int(self.format_version) or self.format_version < 1:
            raise ValueError(f"format_version must be a positive integer; got {self.format_version!r}")
        # The version a save writes: the oldest that holds what the config asks for (8-bit embeddings need 2).
        self.format_version = max(self.format_version, required_format_version(self.embedding_bits))
        if self.format_version > self.latest_format_version:
            raise ValueError(
                newer_format_message(self.format_version, self.latest_format_version, self.format_layout)
            )
        check_checkpoint_form(self.checkpoint_form)
        check_calibration_tokens(self.calibration_tokens)

    def to_dict(self) -> dict[str, Any]:
        return config_dict_without_calibration(self)

    def __iter__(self):
        yield from self.to_dict().items()


__all__ = [
    "CHECKPOINT_FORMS",
    "COMMON_FIELDS",
    "DEFAULT_CALIBRATION_TOKENS",
    "LOADING_HINT",
    "SAVED_ONLY_KEYS",
    "MethodConfig",
    "check_calibration_tokens",
    "check_checkpoint_form",
    "config_dict_without_calibration",
    "is_int",
    "module_name_list",
    "newer_format_message",
]
