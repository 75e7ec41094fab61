"""What every quantized layer checks of its input before computing."""

from __future__ import annotations

import torch
from torch import nn


def require_float_input(x: torch.Tensor, layer: nn.Module) -> None:
    """Refuse integer or boolean activations: the kernels would cast the float scales to the input's dtype and
    compute on truncated values (token ids fed to a layer instead of embeddings, say).

    Raises:
        TypeError: naming the layer and the dtype.
    """
    if not x.is_floating_point():
        raise TypeError(
            f"{type(layer).__name__} takes float activations (float32, float16 or bfloat16), got {x.dtype}; "
            "feed token ids to the model, not to its layers, or cast the input with .float()"
        )
