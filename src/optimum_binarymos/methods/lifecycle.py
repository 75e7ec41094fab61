"""What every method's transformers ``HfQuantizer`` shares: the conversion and loading lifecycle.

:class:`PackingHfQuantizer` is the base of each method's quantizer (``BinaryMoSHfQuantizer``,
``TernaryHfQuantizer``); the method itself (:class:`~optimum_binarymos.methods.registry.QuantizationMethod`) says
how its layers are built, initialized and packed:

* Float checkpoint + a method's config: decoder linears become latent skeletons on the meta device; each float
  weight is turned into the latent layer's tensors the moment it is read (:class:`LatentInitialize`), so the float
  model never exists twice in memory.
* Packed checkpoint (``config.json`` names the method): linears become packed skeletons and the packed tensors fill
  them directly, after their safetensors headers are checked against the skeletons; no float weight is built.
* ``save_pretrained``: latent weights are packed on the way out (:meth:`PackingHfQuantizer.get_state_dict_and_metadata`).
* ``model.dequantize()``: back to float layers where the method has a single float weight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.pytorch_utils import Conv1D
from transformers.quantizers import AutoHfQuantizer, HfQuantizer

from ..card_record import remember_float_source
from ..replacement import float_weight, linear_dims, modules_to_convert, replace_modules
from .config_base import newer_format_message
from .dequantization import float_layer
from .embeddings import (
    ROW_LAYER_TYPES,
    dequantize_embeddings,
    embedding_skeletons,
    quantize_embeddings,
    row_quantized_modules,
)
from .registry import QuantizationMethod, method_for_config, quantized_layers

logger = logging.getLogger(__name__)


def skeleton_layer(
    module: nn.Module, config: Any, packed: bool, dtype: torch.dtype | None = None
) -> nn.Module:
    """An uninitialized layer of ``config``'s method shaped like the float ``module`` (an ``nn.Linear`` or a
    GPT-2 ``Conv1D``), on ``module``'s device (meta while loading)."""
    in_features, out_features, has_bias = linear_dims(module)
    factory = {"device": module.weight.device, "dtype": dtype or module.weight.dtype}
    layer = method_for_config(config).skeleton(in_features, out_features, has_bias, config, packed, **factory)
    # Conv1D checkpoints store (in, out); the loader transposes them into the (out, in) latent weight.
    layer.source_is_conv1d = is_conv1d(module)
    return layer


def latent_from_float(module: nn.Module, config: Any) -> nn.Module:
    """The trainable layer of ``config``'s method initialized from a float ``nn.Linear`` or ``Conv1D``."""
    layer = method_for_config(config).from_float(float_weight(module).detach(), module.bias, config)
    layer.source_is_conv1d = is_conv1d(module)  # so that dequantizing gives the architecture's type back
    return layer


def is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, Conv1D)


def share_as_quantized(model: nn.Module, method: QuantizationMethod, converted: bool) -> None:
    """What the quantizers do for every model they return: tag it with its method (transformers'
    ``model.add_model_tags``, which a plain ``model.push_to_hub`` writes into the repo's card) and, after a
    conversion (``converted``), record the float model it came from."""
    if converted:
        remember_float_source(model)
    if hasattr(model, "add_model_tags"):
        model.add_model_tags(list(method.tags))


class LatentInitialize(ConversionOps):
    """Turns a float checkpoint weight into the tensors of a latent layer, the moment it is read.

    Input: ``{"<module>.weight": tensor}``. Output: ``<module>.weight`` (``(out, in)``; GPT-2 ``Conv1D`` weights
    are transposed, the shape is checked) followed by the tensors :meth:`init_tensors` derives from it: the
    method's per-layer initialization (:meth:`QuantizationMethod.init_tensors`).
    """

    def __init__(self, hf_quantizer: PackingHfQuantizer) -> None:
        self.hf_quantizer = hf_quantizer

    def init_tensors(self, weight: torch.Tensor, layer: nn.Module, config: Any) -> dict[str, torch.Tensor]:
        """The layer's tensors other than ``weight``, by name within the layer (``"scale_in"``)."""
        return self.hf_quantizer.method.init_tensors(weight, layer, config)

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
            result[key] = weight
            for name, tensor in self.init_tensors(weight, layer, config).items():
                result[f"{prefix}.{name}"] = tensor
        return result


class PackingHfQuantizer(HfQuantizer):
    """Lifecycle shared by this package's methods: decoder linears become latent or packed skeletons before
    loading, packed checkpoints' headers are checked, incomplete loads are refused, saving packs.

    Subclasses set :attr:`method`; everything method-specific is asked of it.
    """

    requires_calibration = False
    #: The quantization method this quantizer loads and saves.
    method: QuantizationMethod = QuantizationMethod()

    @property
    def method_name(self) -> str:
        """Name of the method in messages."""
        return self.method.name

    @property
    def latent_layer_type(self) -> type[nn.Module]:
        return self.method.latent_layer

    @property
    def packed_layer_type(self) -> type[nn.Module]:
        return self.method.packed_layer

    @property
    def format_metadata_key(self) -> str:
        """safetensors metadata key carrying the packed layout version."""
        return self.method.format_metadata_key

    @property
    def format_version(self) -> int:
        return self.method.format_version

    def get_quantize_ops(self) -> LatentInitialize:
        return LatentInitialize(self)

    def __init__(self, quantization_config, **kwargs) -> None:
        super().__init__(quantization_config, **kwargs)
        self.converted_modules: list[str] = []
        # Whether the model's layers are packed (inference only) or latent (trainable).
        self.holds_packed_layers = False
        # A full state dict to save instead of the model's own (see saving_state_dict).
        self.state_dict_to_save: dict[str, torch.Tensor] | None = None

    @property
    def loads_packed(self) -> bool:
        """True when the checkpoint being loaded holds packed layers (not float or latent weights)."""
        return self.pre_quantized and self.quantization_config.checkpoint_form == "packed"

    def skeleton(self, module: nn.Module, packed: bool, dtype: torch.dtype | None) -> nn.Module:
        """An uninitialized latent or packed layer shaped like the float ``module``."""
        return skeleton_layer(module, self.quantization_config, packed, dtype)

    def pack_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """``state`` (a full state dict of ``model``: its own, or one gathered from shards) with every latent
        layer's tensors in their packed form. ``model`` only tells which names belong to which layer type."""
        return self.method.pack_state_dict(state, model, self.quantization_config)

    def packed_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model.state_dict()`` with every latent layer's tensors in their packed form."""
        return self.pack_state_dict(model.state_dict(), model)

    @contextmanager
    def saving_state_dict(self, state_dict: dict[str, torch.Tensor]) -> Iterator[None]:
        """Inside this block ``save_pretrained`` writes ``state_dict`` (packed unless saving latent) instead of
        the model's own.

        For trainers that gather a full state dict from shards (FSDP, DeepSpeed ZeRO-3) and pass it to
        ``save_pretrained``: transformers asks the quantizer for the tensors to write
        (:meth:`get_state_dict_and_metadata`), which would otherwise read the model's sharded ones.
        """
        previous, self.state_dict_to_save = self.state_dict_to_save, state_dict
        try:
            yield
        finally:
            self.state_dict_to_save = previous

    def describe_config(self) -> str:
        """The config fields that decide packed shapes, for messages (``"num_experts=4"``)."""
        return self.method.describe(self.quantization_config)

    def validate_environment(self, *args, **kwargs) -> None:
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError(
                f"{self.method_name} models cannot be offloaded to disk; drop 'disk' from device_map."
            )

    def _process_model_before_weight_loading(self, model, **kwargs) -> None:
        # The config's exclusions plus the modules the architecture keeps in float32 (transformers' convention).
        kept = self.get_modules_to_not_convert(
            model,
            list(self.quantization_config.modules_to_not_convert or []),
            getattr(model, "_keep_in_fp32_modules", None),
        )
        self.converted_modules = modules_to_convert(model, kept)
        self.holds_packed_layers = self.loads_packed
        dtype = kwargs.get("dtype")
        replace_modules(
            model,
            self.converted_modules,
            lambda _name, module: self.skeleton(module, self.loads_packed, dtype),
        )
        if self.pre_quantized and self.quantization_config.embedding_bits is not None:
            # A saved model's embeddings are quantized in either form.
            embedding_skeletons(model, self.quantization_config.embedding_bits, dtype)
        checkpoint_files = kwargs.get("checkpoint_files") or []
        if self.pre_quantized:
            check_one_model_per_folder(checkpoint_files)
        if self.loads_packed:
            check_packed_checkpoint(model, checkpoint_files, self)
        elif self.pre_quantized:
            # Latent checkpoints carry the same metadata; the config's version is checked for them too.
            check_checkpoint_format_version(checkpoint_files, self)

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized or not param_name.endswith(".weight"):
            return False
        module_name = param_name.removesuffix(".weight")
        try:
            return isinstance(model.get_submodule(module_name), self.latent_layer_type)
        except AttributeError:
            return False

    def _process_model_after_weight_loading(self, model, **kwargs):
        _check_fully_loaded(
            model, (self.latent_layer_type, self.packed_layer_type), self.method_name, whole_model=self.pre_quantized
        )
        if self.pre_quantized:
            _check_finite(model, (self.latent_layer_type, self.packed_layer_type, *ROW_LAYER_TYPES), self.method_name)
        elif self.quantization_config.embedding_bits is not None:
            quantize_embeddings(model, self.quantization_config.embedding_bits)
        for layer in row_quantized_modules(model).values():
            layer.requires_grad_(False)  # loading makes float tensors trainable; quantized rows never train
        # Whatever was loaded, the next save_pretrained writes packed layers unless asked otherwise.
        self.quantization_config.checkpoint_form = "packed"
        self._calibrate(model)
        if self.holds_packed_layers:
            # A packed model is an inference model: frozen, so a forward outside torch.no_grad() still runs the
            # packed kernels. Adapters (peft) or requires_grad_(True) on chosen parts make it train, explicitly.
            model.requires_grad_(False)
        kind = "packed (frozen)" if self.holds_packed_layers else "latent (trainable)"
        logger.info("%s: %d layers in %s form", self.method_name, len(self.converted_modules), kind)
        share_as_quantized(model, self.method, converted=not self.pre_quantized)
        return model

    def _calibrate(self, model: nn.Module) -> None:
        """Data-aware initialization after an on-the-fly conversion, when the config carries a ``dataset``."""
        config = self.quantization_config
        if self.pre_quantized or getattr(config, "dataset", None) is None:
            return
        from ..calibration import calibrate_model

        report = calibrate_model(
            model, config.dataset, config.tokenizer, num_tokens=config.calibration_tokens
        )
        logger.info(
            "%s: %d layers calibrated on %d tokens in %.1f s",
            self.method_name,
            report.layers,
            report.tokens,
            report.seconds,
        )

    def _dequantize(self, model: nn.Module, dtype=None) -> nn.Module:
        """``model.dequantize()``: every quantized layer becomes the float layer computing the same function
        (:func:`optimum_binarymos.methods.dequantization.float_layer`); transformers then drops the quantization config.

        Raises:
            ValueError: for BinaryMoS with several experts (no single float weight), before anything changes.
        """
        names = [
            name
            for name, module in model.named_modules()
            if isinstance(module, (self.latent_layer_type, self.packed_layer_type))
        ]
        if names:
            self.method.dense_weight(model.get_submodule(names[0]))  # refuses a token-dependent weight up front
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        replace_modules(model, names, lambda _name, layer: float_layer(layer, dtype))
        dequantize_embeddings(model, dtype)
        self.converted_modules = []
        return model

    def get_state_dict_and_metadata(self, model):
        metadata = {self.format_metadata_key: str(self.quantization_config.format_version)}
        state = self.state_dict_to_save if self.state_dict_to_save is not None else model.state_dict()
        if self.quantization_config.checkpoint_form == "latent":
            return state, metadata
        return self.pack_state_dict(state, model), metadata

    def is_serializable(self, safe_serialization=None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        # The packed kernels are torch operators with fake implementations: generate() may compile the forward
        # (with a static cache) as it does for float models.
        return True

    @property
    def is_qat_trainable(self) -> bool:
        # The latent form trains directly; a packed model trains only through adapters.
        return not self.holds_packed_layers


#: safetensors header dtype names in torch's words.
_SAFETENSORS_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _torch_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_name(header_dtype: str) -> str:
    """A safetensors header dtype (``"U8"``) in torch's words (``"uint8"``)."""
    dtype = _SAFETENSORS_DTYPES.get(header_dtype)
    return _torch_name(dtype) if dtype is not None else header_dtype


def _read_headers(
    checkpoint_files: list[str],
) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, dict[str, str]]]:
    """``({tensor name: (shape, dtype)}, {file: metadata})`` of the safetensors files among ``checkpoint_files``,
    from their headers only (no tensor data is read)."""
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    metadata: dict[str, dict[str, str]] = {}
    for path in checkpoint_files:
        if str(path).endswith(".safetensors"):
            with safe_open(path, framework="pt") as checkpoint:
                metadata[str(path)] = checkpoint.metadata() or {}
                for key in checkpoint.keys():
                    tensor = checkpoint.get_slice(key)
                    tensors[key] = (tuple(tensor.get_shape()), tensor.get_dtype())
    return tensors, metadata


def _check_file_format_versions(metadata: dict[str, dict[str, str]], quantizer: PackingHfQuantizer) -> None:
    """Refuse a file whose metadata holds a format version newer than ``quantizer`` reads, even when
    ``config.json`` (checked by the config itself) says otherwise. Files without the key (written by other tools)
    pass."""
    key = quantizer.format_metadata_key
    for path, values in metadata.items():
        if key not in values:
            continue
        raw = values[key]
        version = int(raw) if raw.strip().isdigit() else 0
        if version < 1:
            raise ValueError(
                f"{path} has an invalid {key} metadata value {raw!r}; expected a positive integer such as "
                f"'{quantizer.format_version}'. The file is damaged or was not written by optimum-binarymos."
            )
        if version > quantizer.format_version:
            raise ValueError(
                newer_format_message(
                    version,
                    quantizer.format_version,
                    f"{quantizer.method_name} packed",
                    source=f"{path} (safetensors metadata {key})",
                )
            )


def check_one_model_per_folder(checkpoint_files: list[str]) -> None:
    """Refuse a folder holding both a single-file model and a sharded one.

    transformers' ``save_pretrained`` leaves the other layout in place (a sharded save beside an older
    ``model.safetensors``, say) and loading then reads the single file, whichever is newer: a silently wrong model.

    Raises:
        ValueError: naming both files, which one is older, and what to delete.
    """
    for folder in sorted({Path(path).parent for path in checkpoint_files}):
        single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
        if not (single.is_file() and index.is_file()):
            continue
        older = min((single, index), key=lambda path: path.stat().st_mtime)
        raise ValueError(
            f"{folder} holds two models, {single.name} and the shards of {index.name}; one is left over from an "
            f"earlier save into the same folder. The older is {older.name}: delete it (with its shards, for the "
            "index), or save with optimum_binarymos.save_pretrained(model, folder), which removes what it replaces."
        )


def check_checkpoint_format_version(checkpoint_files: list[str], quantizer: PackingHfQuantizer) -> None:
    """Check the format version in the safetensors metadata of ``checkpoint_files`` (headers only).

    Raises:
        ValueError: for a version newer than ``quantizer`` reads (telling to upgrade) or one that is not a
            positive integer.
    """
    _check_file_format_versions(_read_headers(checkpoint_files)[1], quantizer)


def check_packed_checkpoint(
    model: nn.Module, checkpoint_files: list[str], quantizer: PackingHfQuantizer
) -> None:
    """Compare the safetensors headers (no data is read) with the packed skeleton before anything loads.

    Raises:
        ValueError: for a newer format version in a file's metadata (as
            :func:`check_checkpoint_format_version`), and naming every tensor of ``quantizer``'s packed layers
            that is missing, mis-shaped or of the wrong dtype.
    """
    headers, metadata = _read_headers(checkpoint_files)
    _check_file_format_versions(metadata, quantizer)
    if not headers:
        return  # not safetensors: the post-load check still catches missing tensors
    problems = []
    # A head tied to the input embeddings is not stored (transformers ties it again after loading).
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    for module_name, module in model.named_modules():
        if not isinstance(module, (quantizer.packed_layer_type, *ROW_LAYER_TYPES)):
            continue
        weight_dtype = headers.get(f"{module_name}.weight", ((), ""))[1]
        if _is_float(weight_dtype):
            # A whole float layer: one line says it, its missing scales would only drown it.
            problems.append(
                f"{module_name}.weight is a float weight (dtype {_dtype_name(weight_dtype)}, expected "
                f"{_torch_name(module.weight.dtype)}): the checkpoint is not packed"
            )
            continue
        for tensor_name, tensor in [
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ]:
            key = f"{module_name}.{tensor_name}"
            if key in tied and key not in headers:
                continue
            if key not in headers:
                problems.append(f"{key} is missing")
                continue
            shape, dtype = headers[key]
            if not _dtype_fits(dtype, tensor.dtype):
                expected = "a float dtype" if tensor.dtype.is_floating_point else _torch_name(tensor.dtype)
                problems.append(f"{key} has dtype {_dtype_name(dtype)}, expected {expected}")
            if shape != tuple(tensor.shape):
                problems.append(f"{key} has shape {list(shape)}, expected {list(tensor.shape)}")
    if problems:
        shown = _listed(problems, 8, separator="; ", before_rest="; and ")
        raise ValueError(
            f"This {quantizer.method_name} checkpoint does not fit {type(model).__name__} with "
            f"{quantizer.describe_config()}: {shown}"
        )


def _listed(items: list[str], limit: int, separator: str = ", ", before_rest: str = " and ") -> str:
    """The first ``limit`` items joined, and how many more there are: ``"a, b and 3 more"``."""
    rest = len(items) - limit
    return separator.join(items[:limit]) + (f"{before_rest}{rest} more" if rest > 0 else "")


def _is_float(header_dtype: str) -> bool:
    """Whether a safetensors header dtype is a float one (``F16``, ``BF16``, ``F8_E4M3``, ...)."""
    return header_dtype.startswith(("F", "BF"))


def _dtype_fits(header_dtype: str, expected: torch.dtype) -> bool:
    """Packed codes must be stored exactly as ``expected`` (their bytes are used as they are); float tensors may
    be stored in any float dtype, since loading casts them to the model's."""
    if expected.is_floating_point:
        return _is_float(header_dtype)
    return _SAFETENSORS_DTYPES.get(header_dtype) == expected


def _check_fully_loaded(
    model: nn.Module, layer_types: tuple[type[nn.Module], ...], method_name: str, whole_model: bool = False
) -> None:
    """Refuse a model whose quantized layers' tensors were not all in the checkpoint (they would hold garbage).

    With ``whole_model`` (a quantized checkpoint, which this package writes whole) every tensor of the state dict
    must have been loaded: a missing embedding or norm would otherwise be initialized at random.
    """
    layers = {name for name, module in model.named_modules() if isinstance(module, layer_types)}
    missing = [
        name
        for name, tensor in model.state_dict(keep_vars=True).items()
        if (whole_model or name.rpartition(".")[0] in layers) and not getattr(tensor, "_is_hf_initialized", False)
    ]
    if missing:
        shown = _listed(missing, 5)
        raise ValueError(
            f"The checkpoint is missing {method_name} model tensors: {shown}. It was not written by this version "
            "of optimum-binarymos for this architecture, or it is incomplete."
        )


def _check_finite(model: nn.Module, layer_types: tuple[type[nn.Module], ...], method_name: str) -> None:
    """Refuse loaded scales, routers or biases holding NaN or Inf: every logit of the model would be NaN."""
    broken = [
        f"{module_name}.{tensor_name}"
        for module_name, module in model.named_modules()
        if isinstance(module, layer_types)
        for tensor_name, tensor in module.named_parameters(recurse=False)
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all()
    ]
    if broken:
        shown = _listed(broken, 5)
        raise ValueError(
            f"The checkpoint's {method_name} tensors {shown} hold NaN or Inf; the model would only output NaN. "
            "The file is damaged, or the model diverged before it was saved."
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
    quantizer = AutoHfQuantizer.from_config(config, pre_quantized=pre_quantized)
    layers = quantized_layers(model)
    quantizer.holds_packed_layers = any(isinstance(module, quantizer.packed_layer_type) for module in layers.values())
    quantizer.converted_modules = list(layers)
    model.is_quantized = True
    model.quantization_method = config.quant_method
    model.hf_quantizer = quantizer
    if hasattr(model, "config"):
        model.config.quantization_config = config
    share_as_quantized(model, quantizer.method, converted=not pre_quantized)
    return quantizer
