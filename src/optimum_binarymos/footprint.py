"""How big a model is in float16 and as a packed BinaryMoS checkpoint, from its shapes alone.

The accounting is the papers' (and ``docs/FORMAT.md``'s layout): everything that stays in float (embeddings,
``lm_head``, norms, layers kept in float) costs 2 bytes per value; a binarized weight costs 1 bit, each row rounded
up to whole bytes as the packed tensor ``(out, ceil(in / 8))`` is; the scales ``(E, in) + (E, out)``, the router
``(E, in)`` (only when ``E > 1``) and the bias of a converted layer cost 2 bytes per value.

* :func:`estimate_footprint` takes a transformers config: the model is built on the meta device, so no weight is
  allocated or downloaded.
* :func:`model_footprint` measures a model you hold (float, latent BinaryMoS or packed BinaryMoS).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .config import QUANT_METHOD, BinaryMoSConfig
from .convert import linear_dims, modules_to_convert
from .nn.binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from .packing import packed_columns

#: Bytes per value of everything kept in float, in the reference accounting (float16).
FLOAT16_BYTES = 2


@dataclass(frozen=True)
class Footprint:
    """Sizes of one model in float16 and as a packed BinaryMoS checkpoint, in bytes.

    Attributes:
        num_experts: scaling experts per converted layer (``1`` = OneBit).
        parameters: parameters of the float model (tied weights counted once).
        binarized_weights: weights stored at 1 bit (all weights of the converted linear layers).
        float16_bytes: the whole float model in float16.
        packed_bytes: the whole packed BinaryMoS model.
        linear_float16_bytes: the converted layers alone in float16 (weights and biases).
        linear_packed_bytes: the converted layers alone when packed (signs, scales, router, biases).
    """

    num_experts: int
    parameters: int
    binarized_weights: int
    float16_bytes: int
    packed_bytes: int
    linear_float16_bytes: int
    linear_packed_bytes: int

    @property
    def ratio(self) -> float:
        """How many times smaller the packed model is than the float16 one."""
        return self.float16_bytes / self.packed_bytes

    @property
    def linear_ratio(self) -> float:
        """The same ratio for the converted layers alone."""
        return self.linear_float16_bytes / self.linear_packed_bytes

    @property
    def bits_per_parameter(self) -> float:
        """Average bits per parameter of the whole packed model (float parts included)."""
        return 8 * self.packed_bytes / self.parameters

    @property
    def bits_per_binarized_weight(self) -> float:
        """Average bits per weight of the converted layers, scales and router included."""
        return 8 * self.linear_packed_bytes / self.binarized_weights

    def __str__(self) -> str:
        return (
            f"float16 {format_bytes(self.float16_bytes)} -> BinaryMoS (E={self.num_experts}) "
            f"{format_bytes(self.packed_bytes)}: {self.ratio:.2f}x smaller, "
            f"{self.bits_per_parameter:.2f} bits per parameter"
        )

    def to_markdown(self) -> str:
        """A markdown table: whole model and converted layers, float16 against packed."""
        return "\n".join(
            [
                "| | float16 | BinaryMoS (packed) | ratio |",
                "|---|---|---|---|",
                f"| whole model | {format_bytes(self.float16_bytes)} | {format_bytes(self.packed_bytes)} "
                f"| {self.ratio:.2f}x |",
                f"| binarized linear layers | {format_bytes(self.linear_float16_bytes)} "
                f"| {format_bytes(self.linear_packed_bytes)} | {self.linear_ratio:.2f}x |",
                f"| bits per parameter | 16 | {self.bits_per_parameter:.2f} | |",
                f"| bits per binarized weight | 16 | {self.bits_per_binarized_weight:.3f} | |",
            ]
        )


def format_bytes(size: int) -> str:
    """``1234567`` -> ``"1.23 MB"`` (decimal units, as the Hub shows file sizes)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def estimate_footprint(config, quantization_config: BinaryMoSConfig | None = None) -> Footprint:
    """Footprint of the causal LM that ``config`` describes, without weights and without downloading anything.

    Args:
        config: a transformers ``PretrainedConfig`` (e.g. ``AutoConfig.from_pretrained(model_id)`` or
            ``LlamaConfig(...)``). A packed checkpoint's config carries its own ``quantization_config``.
        quantization_config: the conversion to account for; by default the config's own BinaryMoS
            ``quantization_config`` if it has one, else ``BinaryMoSConfig()`` (4 experts).

    Example::

        >>> from transformers import LlamaConfig
        >>> llama_7b = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        ...                        num_attention_heads=32, vocab_size=32000)
        >>> round(estimate_footprint(llama_7b).ratio, 2)
        9.88
    """
    from transformers import AutoModelForCausalLM

    quantization_config = quantization_config or _config_quantization(config) or BinaryMoSConfig()
    float_config = copy.deepcopy(config)
    if hasattr(float_config, "quantization_config"):
        # Build the float architecture; the accounting applies the conversion.
        del float_config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(float_config)
    return model_footprint(model, quantization_config)


def model_footprint(
    model: nn.Module,
    quantization_config: BinaryMoSConfig | None = None,
    float_bytes: int = FLOAT16_BYTES,
) -> Footprint:
    """Footprint of a model you hold: a float model (what converting it would give), or a BinaryMoS model.

    Args:
        model: any module; its BinaryMoS layers (latent or packed) are the converted layers, or, for a float
            model, those :func:`~optimum_binarymos.modules_to_convert` selects.
        quantization_config: for a float model, the conversion to account for (default: 4 experts).
        float_bytes: bytes per float value; ``2`` is the reference accounting, the model's own element size
            gives the size of its checkpoint as saved.
    """
    converted = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (BinaryMoSLinear, PackedBinaryMoSLinear))
    }
    if converted:
        num_experts = next(iter(converted.values())).num_experts
    else:
        quantization_config = quantization_config or _config_quantization(getattr(model, "config", None))
        quantization_config = quantization_config or BinaryMoSConfig()
        num_experts = quantization_config.num_experts
        names = modules_to_convert(model, quantization_config.modules_to_not_convert)
        converted = {name: model.get_submodule(name) for name in names}

    parameters = binarized = linear_float = linear_packed = other_float = other_packed = 0
    for module in converted.values():
        in_features, out_features, has_bias = _dims(module)
        bias = out_features if has_bias else 0
        weights = in_features * out_features
        parameters += weights + bias
        binarized += weights
        linear_float += (weights + bias) * FLOAT16_BYTES
        scales = module.num_experts if isinstance(module, _LAYER_TYPES) else num_experts
        router = scales * in_features if scales > 1 else 0
        linear_packed += out_features * packed_columns(in_features)
        linear_packed += (scales * (in_features + out_features) + router + bias) * float_bytes

    prefixes = tuple(f"{name}." for name in converted)
    seen: set[int] = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if key.startswith(prefixes) or id(tensor) in seen:
            continue  # converted layers are counted above; tied weights once
        seen.add(id(tensor))
        parameters += tensor.numel()
        if tensor.is_floating_point():
            other_float += tensor.numel() * FLOAT16_BYTES
            other_packed += tensor.numel() * float_bytes
        else:
            other_float += tensor.numel() * tensor.element_size()
            other_packed += tensor.numel() * tensor.element_size()

    return Footprint(
        num_experts=num_experts,
        parameters=parameters,
        binarized_weights=binarized,
        float16_bytes=other_float + linear_float,
        packed_bytes=other_packed + linear_packed,
        linear_float16_bytes=linear_float,
        linear_packed_bytes=linear_packed,
    )


_LAYER_TYPES = (BinaryMoSLinear, PackedBinaryMoSLinear)


def _dims(module: nn.Module) -> tuple[int, int, bool]:
    if isinstance(module, _LAYER_TYPES):
        return module.in_features, module.out_features, module.bias is not None
    return linear_dims(module)


def _config_quantization(config) -> BinaryMoSConfig | None:
    """The BinaryMoS ``quantization_config`` of a model config (object or saved dict), if it has one."""
    found = getattr(config, "quantization_config", None)
    if isinstance(found, BinaryMoSConfig):
        return found
    if isinstance(found, dict) and found.get("quant_method") == QUANT_METHOD:
        return BinaryMoSConfig.from_dict(found)
    return None
