"""What a BinaryMoS model card says about the method; the rest of the card is shared
(:mod:`optimum_binarymos.model_card`). The callables take the model's config and its
:class:`~optimum_binarymos.Footprint`."""

from __future__ import annotations

from typing import Any

from ..registry import Row
from .config import QUANT_METHOD, BinaryMoSConfig

#: Tags of every BinaryMoS model card (the Hub lists models by tag).
TAGS = ("binarymos", "1-bit", "quantized")

LAYER_KIND = "1-bit"
CONVERTED = "binarized"
FLOAT_PARTS = "scales, router, float layers"
DESCRIPTION = """\
[BinaryMoS](https://arxiv.org/abs/2406.12311) (Mixture of Scales) keeps only the sign of every weight of the
linear layers inside the decoder blocks, 1 bit per weight, and restores their scale with token-adaptive input
and output scales that a small router mixes from a few scaling experts:

```
g     = softmax(x @ W_R^T)            # (tokens, E) router
s_in  = g @ S_in ;  s_out = g @ S_out # token-adaptive scales
y     = ((x * s_in) @ sign(W)^T) * s_out + bias
```"""
SIZE_BASIS = " as the BinaryMoS paper does"
CITATION = """\
@article{jo2024binarymos,
  title   = {Mixture of Scales: Memory-Efficient Token-Adaptive Binarization for Large Language Models},
  author  = {Jo, Dongwon and Kim, Taesu and Kim, Yulhwa and Kim, Jae-Joon},
  journal = {arXiv preprint arXiv:2406.12311},
  year    = {2024}
}"""


def summary(quantization: BinaryMoSConfig, footprint: Any) -> str:
    experts = footprint.num_experts
    method = (
        "BinaryMoS with a single scaling expert (the OneBit baseline)"
        if experts == 1
        else f"[BinaryMoS](https://arxiv.org/abs/2406.12311) ({experts} scaling experts)"
    )
    return f"binarized to 1 bit per weight with {method}"


def note(quantization: BinaryMoSConfig, footprint: Any) -> str:
    if footprint.num_experts == 1:
        return (
            "This checkpoint uses one scaling expert and no router: the OneBit baseline (static dual scales)."
        )
    return f"This checkpoint uses E = {footprint.num_experts} scaling experts per layer."


def settings(quantization: BinaryMoSConfig, footprint: Any) -> tuple[list[Row], list[Row]]:
    experts = footprint.num_experts
    iterations = quantization.svid_iterations
    head = [
        ("quantization method", f"`{QUANT_METHOD}`, packed format version {quantization.format_version}"),
        ("scaling experts (`num_experts`)", f"{experts}" + (" (OneBit)" if experts == 1 else "")),
    ]
    tail = [
        (
            "scale initialization",
            "rank-1 SVID of abs(W), "
            + (f"{iterations} power iterations" if iterations else "exact SVD")
            + "; then quantization-aware distillation, if any, by its author",
        )
    ]
    return head, tail
