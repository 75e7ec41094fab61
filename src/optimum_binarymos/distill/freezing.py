"""Which parameters of a BinaryMoS student train, and in which dtype."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..methods import method_for_model
from ..methods.binarymos import BINARYMOS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainableCount:
    """Parameter counts after :func:`binarymos_trainable_parameters`."""

    trainable: int
    total: int
    layers: int

    def __str__(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return (
            f"{self.trainable:,} of {self.total:,} parameters train ({share:.2f} %) in {self.layers} quantized "
            "layers; embeddings, lm_head, norms and every other module are frozen"
        )


def _layer_types(model: nn.Module) -> tuple[type[nn.Module], type[nn.Module]]:
    """(latent, packed) layer classes of the model's quantization method: its quantizer's, else that of its
    layers, else BinaryMoS's (a float model is asked for BinaryMoS layers in messages)."""
    method = getattr(getattr(model, "hf_quantizer", None), "method", None) or method_for_model(model) or BINARYMOS
    return method.layer_types


def binarymos_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every latent (trainable) quantized layer of ``model``, in model order."""
    latent, _ = _layer_types(model)
    return [(name, module) for name, module in model.named_modules() if isinstance(module, latent)]


def latent_weights(model: nn.Module) -> list[nn.Parameter]:
    """The latent float ``weight`` of every latent quantized layer (only its quantized value is used forward);
    the layers' other parameters (scales, router, biases) are the quantizer parameters."""
    return [layer.weight for _, layer in binarymos_layers(model)]


def binarymos_trainable_parameters(model: nn.Module, train_latent_weights: bool = True) -> TrainableCount:
    """Make only the BinaryMoS layers' parameters trainable, in place, and log the counts.

    Trainable: each latent layer's ``weight`` (only its sign is used forward), ``scale_in``, ``scale_out``,
    ``router_weight`` and ``bias`` (for a model of another method of this package, such as ternary, every
    parameter of its latent layers). Frozen (``requires_grad=False``): everything else, i.e. embeddings,
    ``lm_head``, norms and any module kept in float. With ``train_latent_weights=False`` the latent weights are
    frozen too (the signs stay those of the float model; only quantizer parameters train, and backward skips
    every weight-gradient product).

    Raises:
        ValueError: when ``model`` has no latent BinaryMoS layer (a float model, or a packed one).
    """
    layers = binarymos_layers(model)
    if not layers:
        _, packed = _layer_types(model)
        if any(isinstance(module, packed) for module in model.modules()):
            raise ValueError(
                "The student is a packed BinaryMoS model (1-bit signs, no latent weights) and cannot be distilled. "
                "Load the float checkpoint with quantization_config=BinaryMoSConfig(), or a latent training "
                "checkpoint, instead."
            )
        raise ValueError(
            f"The student {type(model).__name__} has no BinaryMoS layer. Load it with "
            "AutoModelForCausalLM.from_pretrained(..., quantization_config=BinaryMoSConfig()) or convert it with "
            "optimum_binarymos.convert_model first."
        )
    model.requires_grad_(False)
    for _, layer in layers:
        layer.requires_grad_(True)
        if not train_latent_weights:
            layer.weight.requires_grad_(False)
    count = TrainableCount(
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total=sum(p.numel() for p in model.parameters()),
        layers=len(layers),
    )
    logger.info("BinaryMoS distillation: %s", count)
    return count


def upcast_trainable_parameters(
    model: nn.Module, dtype: torch.dtype = torch.float32
) -> dict[str, torch.dtype]:
    """Cast every trainable half-precision parameter to ``dtype`` in place (the ``Parameter`` objects stay).

    Returns:
        ``{parameter name: dtype it had}`` for the parameters that changed, for
        :func:`restore_parameter_dtypes`.
    """
    changed: dict[str, torch.dtype] = {}
    for name, param in model.named_parameters():
        if (
            param.requires_grad
            and param.is_floating_point()
            and param.dtype in (torch.float16, torch.bfloat16)
        ):
            changed[name] = param.dtype
            param.data = param.data.to(dtype)
    if changed:
        logger.info("Training %d half-precision parameters as %s master weights", len(changed), dtype)
    return changed


def restore_parameter_dtypes(model: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Undo :func:`upcast_trainable_parameters`: cast each named parameter back to the dtype it had."""
    params = dict(model.named_parameters())
    for name, dtype in dtypes.items():
        if name in params:
            params[name].data = params[name].data.to(dtype)
