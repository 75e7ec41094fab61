"""What a ternary model card says about the method; the rest of the card is shared
(:mod:`optimum_binarymos.model_card`). The callables take the model's config and its
:class:`~optimum_binarymos.Footprint`."""

from __future__ import annotations

from typing import Any

from ...packing import TRITS_PER_BYTE
from ..registry import Row
from .config import TERNARY_QUANT_METHOD, TernaryConfig

#: Tags of every ternary model card.
TAGS = ("binarymos_ternary", "ternary", "1.58-bit", "quantized")

_FORMAT_DOC = "https://github.com/optimum-binarymos/optimum-binarymos/blob/main/docs/FORMAT_TERNARY.md"

LAYER_KIND = "ternary"
CONVERTED = "ternarized"
FLOAT_PARTS = "scales, shifts, float layers"
DESCRIPTION = """\
[TernaryLLM](https://arxiv.org/abs/2406.07177)'s Dual Learnable Ternarization (DLT) keeps one trit (-1, 0 or +1)
per weight of the linear layers inside the decoder blocks, 1.58 bits of information, with a learnable scale
`alpha` and a learnable shift `gamma` for every group of `group_size` consecutive input columns:

```
T   = clamp(round((W - gamma) / alpha), -1, 1)               # one trit per weight
W_q = alpha * T + gamma                                      # per group of input columns
y   = sum_g alpha_g * (x_g @ T_g^T) + gamma_g * sum(x_g) + bias
```"""
SIZE_BASIS = ", scales and shifts included"
CITATION = """\
@article{chen2024ternaryllm,
  title   = {TernaryLLM: Ternarized Large Language Model},
  author  = {Chen, Tianqi and Li, Zhe and Xu, Weixiang and Zhu, Zeyu and Li, Dong and Tian, Lu and
         Barsoum, Emad and Wang, Peisong and Cheng, Jian},
  journal = {arXiv preprint arXiv:2406.07177},
  year    = {2024}
}"""


def _codes(code_packing: str) -> str:
    """``"2bit"`` -> ``"2-bit codes (4 trits per byte)"``."""
    per_byte = TRITS_PER_BYTE[code_packing]
    kind = "2-bit" if code_packing == "2bit" else "base-3"
    return f"{kind} codes ({per_byte} trits per byte, {8 / per_byte:g} bits per weight)"


def summary(quantization: TernaryConfig, footprint: Any) -> str:
    return (
        "ternarized to 1.58 bits per weight (trits -1, 0, +1) with the Dual Learnable Ternarization of "
        f"[TernaryLLM](https://arxiv.org/abs/2406.07177) (a scale and a shift per group of "
        f"{footprint.group_size} input columns), stored as {_codes(footprint.code_packing)}"
    )


def note(quantization: TernaryConfig, footprint: Any) -> str:
    return (
        f"This checkpoint uses groups of {footprint.group_size} input columns and stores the trits as "
        f"{_codes(footprint.code_packing)}; [the ternary format]({_FORMAT_DOC}) specifies the layout for other "
        "runtimes."
    )


def settings(quantization: TernaryConfig, footprint: Any) -> tuple[list[Row], list[Row]]:
    shift = "the group mean" if quantization.shift_init == "mean" else "zero"
    head = [
        (
            "quantization method",
            f"`{TERNARY_QUANT_METHOD}`, packed ternary format version {quantization.format_version}",
        ),
        ("group size (`group_size`)", f"{footprint.group_size} input columns per scale and shift"),
        ("code packing (`code_packing`)", f"`{footprint.code_packing}`: {_codes(footprint.code_packing)}"),
    ]
    tail = [
        (
            "scale and shift initialization",
            f"TWN: shift = {shift}, threshold {quantization.init_threshold:g} x mean abs(W - shift), scale = "
            "mean abs(W - shift) above it; then quantization-aware training, if any, by its author",
        )
    ]
    return head, tail
