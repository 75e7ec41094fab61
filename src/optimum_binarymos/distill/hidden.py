"""Taking chosen decoder layers' output hidden states out of a forward pass with hooks.

``output_hidden_states=True`` would give the same tensors, but every one of them, and under mixed precision
accelerate converts a model's outputs to float32: float32 copies of each hidden state would then be what the
loss keeps for backward. Hooks hand over the tensors as the layers produce them, in the compute dtype, and
only for the layers asked for.

Indexing follows ``hidden_states``: decoder layer ``i`` (from 0) is ``hidden_states[i + 1]``, and the last
layer's entry is the model's final *normalized* hidden state (``last_hidden_state``), as transformers returns
it and as the BinaryMoS recipe (``hidden_states[1:]``) uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def num_decoder_layers(model: nn.Module) -> int:
    """Number of decoder layers, from the model's (text) config."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(
            f"{type(model).__name__} has no config.num_hidden_layers: cannot find its decoder layers"
        )
    return layers


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module that runs the decoder layers and returns ``last_hidden_state`` (``LlamaModel``, ``OPTDecoder``)."""
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError):
            decoder = None
        if isinstance(decoder, nn.Module):
            return decoder
    return getattr(model, "base_model", model)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder layers: the first one in the decoder with ``num_hidden_layers`` items."""
    count = num_decoder_layers(model)
    for module in decoder_stack(model).modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(model).__name__}: no list of {count} decoder layers found")


def resolve_layers(layers: Sequence[int] | str, count: int) -> list[int]:
    """Decoder layer indices in ``[0, count)`` from ``"all"`` or indices that may count from the end."""
    if layers == "all":
        return list(range(count))
    resolved = []
    for layer in layers:
        if not -count <= layer < count:
            raise ValueError(
                f"kd_hidden_layers has layer {layer} but the model has {count} decoder layers: use indices "
                f"0..{count - 1}, or -{count}..-1 from the end"
            )
        resolved.append(layer % count)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"kd_hidden_layers names the same layer twice: {list(layers)} with {count} layers")
    return resolved


class HiddenStateTap:
    """Context manager collecting chosen decoder layers' output hidden states during the forwards inside it.

    Example::

        with HiddenStateTap(model, [0, 1]) as tap:
            model(input_ids)
        first, last = tap.states()   # each (batch, seq, hidden)

    Args:
        model: the (unwrapped) causal LM; the hooks sit on its modules, so calling a DDP/accelerate wrapper of
            it inside the block works too.
        layers: decoder layer indices in ``[0, num_hidden_layers)`` (see :func:`resolve_layers`).
        detach: store detached tensors (for a teacher).

    Hooks fire only inside the block, so a recomputation during backward (activation checkpointing that
    wraps the layer's hooks) records nothing.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int], detach: bool = False) -> None:
        self.model = model
        self.layers = list(layers)
        self.detach = detach
        self._collected: dict[int, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> HiddenStateTap:
        self._collected = {}
        modules = decoder_layers(self.model)
        last = len(modules) - 1
        for index in self.layers:
            if index == last:
                # The last entry of hidden_states is the final normalized state: the decoder's output.
                target = decoder_stack(self.model)
            else:
                target = modules[index]
            self._handles.append(target.register_forward_hook(self._hook(index)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, index: int):
        def record(_module: nn.Module, _args, output) -> None:
            if hasattr(output, "last_hidden_state"):
                state = output.last_hidden_state
            elif isinstance(output, (tuple, list)):
                state = output[0]
            else:
                state = output
            self._collected[index] = state.detach() if self.detach else state

        return record

    def states(self) -> list[torch.Tensor]:
        """The collected ``(batch, seq, hidden)`` states in the order of ``layers``; the tap forgets them."""
        missing = [index for index in self.layers if index not in self._collected]
        if missing:
            raise RuntimeError(f"No hidden state was produced by decoder layers {missing} during the forward")
        collected, self._collected = self._collected, {}
        return [collected[index] for index in self.layers]
