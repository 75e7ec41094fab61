"""The transformers ``HfQuantizer``s: lifecycle hooks only.

:class:`PackingHfQuantizer` holds the lifecycle every method of this package shares (BinaryMoS here, ternary in
:mod:`optimum_binarymos.ternary_quantizer`); for BinaryMoS:

* Float checkpoint + ``BinaryMoSConfig``: decoder linears become latent :class:`BinaryMoSLinear` skeletons on the
  meta device; each float weight is turned into latent weight + SVID scales + router the moment it is read
  (:class:`SvidInitialize`), so the float model never exists twice in memory.
* Packed checkpoint (``config.json`` says ``quant_method: binarymos``): linears become
  :class:`PackedBinaryMoSLinear` skeletons and the packed tensors fill them directly; no float weight is built.
* ``save_pretrained``: latent weights are packed on the way out (:meth:`get_state_dict_and_metadata`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer, register_quantizer

from .config import QUANT_METHOD, BinaryMoSConfig
from .convert import (
    LATENT_LAYER_TYPES,
    PACKED_LAYER_TYPES,
    modules_to_convert,
    replace_modules,
    skeleton_layer,
)
from .hub import prepare_for_sharing
from .nn.binarymos import BinaryMoSLinear, PackedBinaryMoSLinear
from .nn.svid import svid_rank1
from .packing import FORMAT_VERSION, pack_signs

logger = logging.getLogger(__name__)

#: safetensors metadata key carrying the packed layout version.
FORMAT_METADATA_KEY = "binarymos_format_version"


class SvidInitialize(ConversionOps):
    """Turns a float checkpoint weight into the tensors of a latent BinaryMoS layer.

    Input: ``{"<module>.weight": tensor}``. Output: ``<module>.weight`` (``(out, in)``; GPT-2 ``Conv1D`` weights
    are transposed), ``<module>.scale_in``, ``<module>.scale_out`` and, with several experts,
    ``<module>.router_weight``.
    """

    def __init__(self, hf_quantizer: BinaryMoSHfQuantizer) -> None:
        self.hf_quantizer = hf_quantizer

    def convert(
        self, input_dict: dict[str, Any], model: nn.Module | None = None, **kwargs
    ) -> dict[str, torch.Tensor]:
        config = self.hf_quantizer.quantization_config
        result: dict[str, torch.Tensor] = {}
        for key, value in input_dict.items():
            weight = value[0] if isinstance(value, list) else value
            prefix = key.removesuffix(".weight")
            layer = model.get_submodule(prefix)
            if getattr(layer, "source_is_conv1d", False):
                weight = weight.t()
            weight = weight.contiguous()
            expected = (layer.out_features, layer.in_features)
            if tuple(weight.shape) != expected:
                raise ValueError(
                    f"Checkpoint tensor {key} has shape {tuple(weight.shape)} but {prefix} expects {expected}"
                )
            out_scale, in_scale = svid_rank1(weight, config.svid_iterations)
            experts = config.num_experts
            result[key] = weight
            result[f"{prefix}.scale_in"] = in_scale.to(weight.dtype).expand(experts, -1).contiguous()
            result[f"{prefix}.scale_out"] = out_scale.to(weight.dtype).expand(experts, -1).contiguous()
            if experts > 1:
                router = torch.empty(experts, layer.in_features, dtype=weight.dtype, device=weight.device)
                nn.init.kaiming_uniform_(router, a=5**0.5)  # nn.Linear's default: random, never zero
                result[f"{prefix}.router_weight"] = router
        return result


class PackingHfQuantizer(HfQuantizer):
    """Lifecycle shared by this package's methods: decoder linears become latent or packed skeletons before
    loading, packed checkpoints' headers are checked, incomplete loads are refused, saving packs.

    Subclasses set :attr:`method_name`, :attr:`latent_layer_type`, :attr:`packed_layer_type`,
    :attr:`format_metadata_key` and :attr:`format_version`, and implement ``get_quantize_ops`` (float weight ->
    latent tensors), :meth:`skeleton`, :meth:`packed_state_dict` and :meth:`describe_config`.
    """

    requires_calibration = False
    #: Name of the method in messages.
    method_name = ""
    latent_layer_type: type[nn.Module] = nn.Module
    packed_layer_type: type[nn.Module] = nn.Module
    #: safetensors metadata key carrying the packed layout version, and that version.
    format_metadata_key = ""
    format_version = 1

    def __init__(self, quantization_config, **kwargs) -> None:
        super().__init__(quantization_config, **kwargs)
        self.converted_modules: list[str] = []
        # Whether the model's layers are packed (inference only) or latent (trainable).
        self.holds_packed_layers = False

    @property
    def loads_packed(self) -> bool:
        """True when the checkpoint being loaded holds packed layers (not float or latent weights)."""
        return self.pre_quantized and self.quantization_config.checkpoint_form == "packed"

    def skeleton(self, module: nn.Module, packed: bool, dtype: torch.dtype | None) -> nn.Module:
        """An uninitialized latent or packed layer shaped like the float ``module``."""
        return skeleton_layer(module, self.quantization_config, packed, dtype)

    def packed_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model.state_dict()`` with every latent layer's tensors in their packed form."""
        raise NotImplementedError

    def describe_config(self) -> str:
        """The config fields that decide packed shapes, for messages (``"num_experts=4"``)."""
        raise NotImplementedError

    def validate_environment(self, *args, **kwargs) -> None:
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError(
                f"{self.method_name} models cannot be offloaded to disk; drop 'disk' from device_map."
            )

    def _process_model_before_weight_loading(self, model, **kwargs) -> None:
        self.converted_modules = modules_to_convert(model, self.quantization_config.modules_to_not_convert)
        self.holds_packed_layers = self.loads_packed
        dtype = kwargs.get("dtype")
        replace_modules(
            model,
            self.converted_modules,
            lambda _name, module: self.skeleton(module, self.loads_packed, dtype),
        )
        if self.loads_packed:
            check_packed_checkpoint(model, kwargs.get("checkpoint_files") or [], self)

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized or not param_name.endswith(".weight"):
            return False
        module_name = param_name.removesuffix(".weight")
        try:
            return isinstance(model.get_submodule(module_name), self.latent_layer_type)
        except AttributeError:
            return False

    def _process_model_after_weight_loading(self, model, **kwargs):
        _check_fully_loaded(model, (self.latent_layer_type, self.packed_layer_type), self.method_name)
        # Whatever was loaded, the next save_pretrained writes packed layers unless asked otherwise.
        self.quantization_config.checkpoint_form = "packed"
        kind = "packed" if self.holds_packed_layers else "latent (trainable)"
        logger.info("%s: %d layers in %s form", self.method_name, len(self.converted_modules), kind)
        # optimum_binarymos.hub: save_pretrained/push_to_hub write the model card; a conversion records its source.
        prepare_for_sharing(model, converted=not self.pre_quantized)
        return model

    def get_state_dict_and_metadata(self, model):
        metadata = {self.format_metadata_key: str(self.format_version)}
        if self.quantization_config.checkpoint_form == "latent":
            return model.state_dict(), metadata
        return self.packed_state_dict(model), metadata

    def is_serializable(self, safe_serialization=None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        # The latent form trains directly; a packed model trains only through adapters.
        return not self.holds_packed_layers


@register_quantizer(QUANT_METHOD)
class BinaryMoSHfQuantizer(PackingHfQuantizer):
    """Converts float checkpoints to BinaryMoS on load, loads packed ones, packs on save."""

    quantization_config: BinaryMoSConfig
    method_name = "BinaryMoS"
    latent_layer_type = BinaryMoSLinear
    packed_layer_type = PackedBinaryMoSLinear
    format_metadata_key = FORMAT_METADATA_KEY
    format_version = FORMAT_VERSION

    def get_quantize_ops(self) -> SvidInitialize:
        return SvidInitialize(self)

    def packed_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return packed_state_dict(model)

    def describe_config(self) -> str:
        return f"num_experts={self.quantization_config.num_experts}"


def packed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every latent ``<module>.weight`` replaced by its packed ``uint8`` signs."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, BinaryMoSLinear):
            state[f"{name}.weight"] = pack_signs(state[f"{name}.weight"])
    return state


def check_packed_checkpoint(
    model: nn.Module, checkpoint_files: list[str], quantizer: PackingHfQuantizer
) -> None:
    """Compare the safetensors headers (no data is read) with the packed skeleton before anything loads.

    Raises:
        ValueError: naming every tensor of ``quantizer``'s packed layers that is missing, mis-shaped or of the
            wrong dtype.
    """
    headers: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in checkpoint_files:
        if str(path).endswith(".safetensors"):
            with safe_open(path, framework="pt") as checkpoint:
                for key in checkpoint.keys():
                    tensor = checkpoint.get_slice(key)
                    headers[key] = (tuple(tensor.get_shape()), tensor.get_dtype())
    if not headers:
        return  # not safetensors: the post-load check still catches missing tensors
    problems = []
    for module_name, module in model.named_modules():
        if not isinstance(module, quantizer.packed_layer_type):
            continue
        weight_dtype = headers.get(f"{module_name}.weight", (None, "U8"))[1]
        if weight_dtype != "U8":
            problems.append(
                f"{module_name}.weight is a float weight ({weight_dtype}): the checkpoint is not packed"
            )
            continue
        for tensor_name, tensor in [
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ]:
            key = f"{module_name}.{tensor_name}"
            if key not in headers:
                problems.append(f"{key} is missing")
                continue
            shape, dtype = headers[key]
            if shape != tuple(tensor.shape):
                problems.append(f"{key} has shape {list(shape)}, expected {list(tensor.shape)}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(
            f"This {quantizer.method_name} checkpoint does not fit {type(model).__name__} with "
            f"{quantizer.describe_config()}: {shown}"
        )


def _check_fully_loaded(model: nn.Module, layer_types: tuple[type[nn.Module], ...], method_name: str) -> None:
    """Refuse a model whose quantized layers' tensors were not all in the checkpoint (they would hold garbage)."""
    missing = [
        f"{module_name}.{tensor_name}"
        for module_name, module in model.named_modules()
        if isinstance(module, layer_types)
        for tensor_name, tensor in [
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ]
        if not getattr(tensor, "_is_hf_initialized", False)
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"The checkpoint is missing {method_name} tensors: {shown}. It was not written by this version of "
            "optimum-binarymos for this architecture, or it is incomplete."
        )


@contextmanager
def latent_saving(model: nn.Module) -> Iterator[None]:
    """Inside this block ``model.save_pretrained`` writes the latent float weights instead of packed bits.

    Such a checkpoint reloads with ``from_pretrained`` as a trainable latent model (its config says
    ``checkpoint_form: "latent"``); use it for intermediate training checkpoints. Outside the block saving packs.

    Example::

        with latent_saving(model):
            model.save_pretrained("checkpoint-100")
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if not isinstance(quantizer, PackingHfQuantizer):
        raise ValueError(
            f"{type(model).__name__} is not a BinaryMoS or ternary model (it has no optimum-binarymos quantizer)."
        )
    if any(isinstance(module, quantizer.packed_layer_type) for module in model.modules()):
        raise ValueError(f"A packed {quantizer.method_name} model has no latent weights to save.")
    config = quantizer.quantization_config
    previous = config.checkpoint_form
    config.checkpoint_form = "latent"
    try:
        yield
    finally:
        config.checkpoint_form = previous


def attach_quantizer(model: nn.Module, config, pre_quantized: bool) -> PackingHfQuantizer:
    """Give a model converted outside ``from_pretrained`` what ``from_pretrained`` would have: the quantizer of
    ``config``'s method (so ``save_pretrained`` packs and ``Trainer`` accepts it) and
    ``config.quantization_config``."""
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    quantizer = AUTO_QUANTIZER_MAPPING[config.quant_method](config, pre_quantized=pre_quantized)
    quantizer.holds_packed_layers = any(isinstance(module, PACKED_LAYER_TYPES) for module in model.modules())
    quantizer.converted_modules = [
        name
        for name, module in model.named_modules()
        if isinstance(module, LATENT_LAYER_TYPES + PACKED_LAYER_TYPES)
    ]
    model.is_quantized = True
    model.quantization_method = config.quant_method
    model.hf_quantizer = quantizer
    if hasattr(model, "config"):
        model.config.quantization_config = config
        model.config._is_quantized = True
    prepare_for_sharing(model, converted=not pre_quantized)  # optimum_binarymos.hub: model card, float source
    return quantizer
