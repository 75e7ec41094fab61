"""Data-aware initialization of BinaryMoS layers from calibration activations.

SVID starts every scaling expert of a layer at the same rank-1 factors of ``|W|``. Then the mixture
``s = sum_e g_e S_e`` equals ``S`` whatever the router says: the loss does not depend on the router, its gradient
is exactly zero, and the experts only drift apart through second-order effects. :func:`calibrate_model` runs the
float model (the latent weights used as they are) on a few thousand calibration tokens and, layer by layer, from
the inputs ``X`` ``(tokens, in)`` that the float layer sees:

1. clusters the tokens into ``E`` groups by direction (spherical k-means, seeded), and sets the router's rows to
   the centroids, scaled so that a token's logits differ by about ``route_temperature`` between a matching and an
   orthogonal centroid: the gates are token-adaptive from step 0;
2. keeps SVID's input scale and sets each expert's output scale so that, over the tokens its gate weighs, every
   output channel has the float layer's root-mean-square value::

       S_out[e, i] = sqrt( sum_n g_ne (X W^T)_ni^2 / sum_n g_ne ((X * s_in) sign(W)^T)_ni^2 )

   A least-squares fit of the same scales lowers each layer's own error further but shrinks every output by the
   correlation of the 1-bit product with the float one, and the shrinkage compounds through the layers;
   matching the magnitude does not.

With one expert (OneBit) only step 2 runs, on all tokens. Ternary (DLT) layers get step 2's magnitude match too:
row ``i`` of the latent weight, of its scales ``alpha`` and of its shifts ``gamma`` is multiplied by the same
factor, so the trits ``T = round((W - gamma) / alpha)`` stay as TWN chose them and only the row's output grows or
shrinks to the float layer's root-mean-square value. The hook fits each layer as the forward reaches it and lets
the float output through, so only one layer's activations are held at a time.

Example::

    >>> from optimum_binarymos import calibrate_model                             # doctest: +SKIP
    >>> report = calibrate_model(model, ["old_addresses.txt"], tokenizer)           # doctest: +SKIP
    >>> report.layers, report.tokens                                              # doctest: +SKIP
    (210, 2048)
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .packing import sign_with_ties

__all__ = [
    "DEFAULT_CALIBRATION_TOKENS",
    "DEFAULT_ROUTE_TEMPERATURE",
    "CalibrationReport",
    "calibrate_model",
    "calibration_token_ids",
]

#: Calibration tokens used by default: enough for stable per-channel statistics of 4 clusters.
DEFAULT_CALIBRATION_TOKENS = 2048
#: Fewest tokens accepted: fewer make the per-expert statistics noise.
MIN_CALIBRATION_TOKENS = 256
#: Logit gap between a token's own centroid and an orthogonal one.
DEFAULT_ROUTE_TEMPERATURE = 16.0
DEFAULT_SEQUENCE_LENGTH = 256
_KMEANS_ITERATIONS = 25

CalibrationData = Any  # token ids, text, local text files, or a `datasets.Dataset` with a "text" column


@dataclass(frozen=True)
class CalibrationReport:
    """What :func:`calibrate_model` did.

    Attributes:
        layers: latent layers initialized.
        tokens: calibration tokens each layer saw.
        seconds: wall-clock time of the whole calibration.
    """

    layers: int
    tokens: int
    seconds: float


def calibration_token_ids(
    data: CalibrationData,
    tokenizer: Any = None,
    num_tokens: int = DEFAULT_CALIBRATION_TOKENS,
    sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
) -> torch.Tensor:
    """Turn calibration ``data`` into ``LongTensor (num_tokens // sequence_length, sequence_length)``.

    Args:
        data: a ``LongTensor`` of token ids (any shape), a local text file or a folder of ``*.txt`` files (``str``
            or ``Path``), a list of such paths or of texts, or a ``datasets.Dataset`` with a ``"text"`` column.
        tokenizer: needed for everything but token ids.
        num_tokens: calibration tokens wanted; the first ones of the text are taken.
        sequence_length: length of each calibration sequence.

    Raises:
        ValueError: when ``data`` holds fewer tokens than asked for, ``num_tokens`` is below 256, or text
            comes without a tokenizer.
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < MIN_CALIBRATION_TOKENS:
        raise ValueError(f"num_tokens must be an integer >= {MIN_CALIBRATION_TOKENS}, got {num_tokens!r}")
    if isinstance(data, torch.Tensor):
        ids = data.reshape(-1).long()
    else:
        if tokenizer is None:
            raise ValueError(
                "Calibration text needs its tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(model_id) "
                "(or give token ids as a LongTensor)."
            )
        texts = _calibration_texts(data)
        ids_list: list[int] = []
        for text in texts:
            ids_list.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(ids_list) >= num_tokens:
                break
        ids = torch.tensor(ids_list, dtype=torch.long)
    if ids.numel() < num_tokens:
        raise ValueError(
            f"The calibration data gives {ids.numel():,} tokens; {num_tokens:,} are needed. Give more text, or "
            f"lower num_tokens (at least {MIN_CALIBRATION_TOKENS})."
        )
    sequence_length = min(sequence_length, num_tokens)
    rows = num_tokens // sequence_length
    needed = rows * sequence_length
    return ids[:needed].reshape(rows, sequence_length)


def _calibration_texts(data: CalibrationData) -> list[str]:
    if isinstance(data, (str, os.PathLike)):
        return _texts_of_path(Path(data))
    if isinstance(data, Sequence) and not isinstance(data, (bytes, bytearray)):
        texts: list[str] = []
        for item in data:
            if isinstance(item, os.PathLike) or (isinstance(item, str) and _looks_like_path(item)):
                texts.extend(_texts_of_path(Path(item)))
            elif isinstance(item, str):
                texts.append(item)
            else:
                raise TypeError(f"Calibration data items must be texts or paths, got {type(item).__name__}")
        return texts
    column_names = getattr(data, "column_names", None)
    if column_names is not None:  # a datasets.Dataset
        if "text" not in column_names:
            raise ValueError(f"The calibration dataset needs a 'text' column; it has {list(column_names)}")
        return [text for text in data["text"] if text]
    raise TypeError(
        "Calibration data must be token ids (LongTensor), a text file or folder, a list of texts or paths, or a "
        f"datasets.Dataset with a 'text' column; got {type(data).__name__}"
    )


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and len(text) < 4096 and Path(text).exists()


def _texts_of_path(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"The calibration folder {path} holds no *.txt file")
        return [file.read_text(encoding="utf-8") for file in files]
    if not path.is_file():
        raise FileNotFoundError(f"No calibration text at {path}")
    return [path.read_text(encoding="utf-8")]


@torch.no_grad()
def calibrate_model(
    model: nn.Module,
    data: CalibrationData,
    tokenizer: Any = None,
    *,
    num_tokens: int = DEFAULT_CALIBRATION_TOKENS,
    sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
    route_temperature: float = DEFAULT_ROUTE_TEMPERATURE,
    seed: int = 0,
    scale_fit: str = "rms",
    progress: bool = True,
) -> CalibrationReport:
    """Initialize the experts, output scales and routers of ``model``'s latent BinaryMoS layers (or the row
    magnitudes of its latent ternary layers) from data, in place.

    See the module docstring for what is fitted. ``model`` is a latent BinaryMoS model right after conversion
    (its latent weights are still the float weights); the same ``data`` and ``seed`` give the same model.

    Args:
        model: a latent BinaryMoS or ternary model (``from_pretrained(..., quantization_config=BinaryMoSConfig())``,
            ``TernaryConfig()``, or :func:`~optimum_binarymos.convert_model`).
        data, tokenizer, num_tokens, sequence_length: the calibration text, as :func:`calibration_token_ids` takes it.
        route_temperature: logit gap between a matching and an orthogonal centroid in the initial router.
        seed: seeds the k-means starts.
        progress: show a progress bar over the layers.

    Raises:
        ValueError: when ``model`` has no latent BinaryMoS or ternary layer, or the data is too short.
    """
    from .nn.binarymos import BinaryMoSLinear
    from .nn.ternary import TernaryLinear

    if not route_temperature > 0:
        raise ValueError(f"route_temperature must be > 0, got {route_temperature!r}")
    layers = [module for module in model.modules() if isinstance(module, (BinaryMoSLinear, TernaryLinear))]
    if not layers:
        raise ValueError(
            "calibrate_model needs a latent BinaryMoS or ternary model (converted with BinaryMoSConfig or "
            "TernaryConfig, not packed); this one has no BinaryMoSLinear or TernaryLinear layer."
        )
    started = time.perf_counter()
    input_ids = calibration_token_ids(data, tokenizer, num_tokens, sequence_length)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=len(layers), desc="calibrating", unit="layer", disable=not progress)

    def fit_and_pass_float(layer: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor):
        x = args[0]
        float_output = F.linear(x, layer.weight.to(x.dtype), None if layer.bias is None else layer.bias.to(x.dtype))
        if isinstance(layer, TernaryLinear):
            fit_ternary_layer(layer, x.reshape(-1, x.shape[-1]))
        else:
            fit_layer(layer, x.reshape(-1, x.shape[-1]), route_temperature, generator, scale_fit)
        bar.update(1)
        return float_output

    handles = [layer.register_forward_hook(fit_and_pass_float) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        model(input_ids=input_ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        bar.close()
    return CalibrationReport(layers=len(layers), tokens=input_ids.numel(), seconds=time.perf_counter() - started)


@torch.no_grad()
def fit_layer(
    layer: nn.Module,
    x: torch.Tensor,
    route_temperature: float,
    generator: torch.Generator,
    scale_fit: str = "rms",
) -> None:
    """Fit one latent BinaryMoS layer's router and output scales to its float inputs ``x`` ``(tokens, in)``."""
    x = x.float()
    weight = layer.weight.float()
    target = x @ weight.T  # (tokens, out): the float layer's output, bias left out like the scales
    scale_in = layer.scale_in.float().mean(dim=0)  # SVID's input scale (all experts equal after conversion)
    one_bit = (x * scale_in) @ sign_with_ties(weight).T
    if layer.num_experts > 1:
        centroids = spherical_kmeans(x, layer.num_experts, generator)
        layer.router_weight.copy_(centroids * (route_temperature / x.norm(dim=1).mean().clamp_min(1e-12)))
        gates = torch.softmax(x @ layer.router_weight.float().T, dim=-1)  # (tokens, E)
    else:
        gates = x.new_ones(x.shape[0], 1)
    target_power = gates.T @ target.square()  # (E, out)
    one_bit_power = gates.T @ one_bit.square()
    scale_out = (target_power / one_bit_power.clamp_min(1e-30)).sqrt()
    if scale_fit == "relative":
        # Keep SVID's scale on average over the experts; only their ratios come from the data.
        scale_out = layer.scale_out.float() * scale_out / scale_out.mean(dim=0, keepdim=True).clamp_min(1e-30)
    # A channel the calibration tokens never reach keeps its SVID scale.
    scale_out = torch.where(one_bit_power > 0, scale_out, layer.scale_out.float())
    layer.scale_in.copy_(scale_in.expand_as(layer.scale_in))
    layer.scale_out.copy_(scale_out)


@torch.no_grad()
def fit_ternary_layer(layer: nn.Module, x: torch.Tensor) -> None:
    """Scale each output row of a latent ternary layer so its output over ``x`` ``(tokens, in)`` has the float
    layer's root-mean-square value; the trits do not change (weight, scale and shift move together)."""
    x = x.float()
    target_power = (x @ layer.weight.float().T).square().sum(dim=0)  # (out,)
    ternary_power = (x @ layer.quantized_weight().float().T).square().sum(dim=0)
    factor = (target_power / ternary_power.clamp_min(1e-30)).sqrt()
    # Rows the calibration tokens never reach stay as they are.
    factor = torch.where(ternary_power > 0, factor, torch.ones_like(factor))
    for parameter in (layer.weight, layer.weight_scale, layer.weight_shift):
        parameter.mul_(factor[:, None].to(parameter.dtype))


def spherical_kmeans(x: torch.Tensor, clusters: int, generator: torch.Generator) -> torch.Tensor:
    """Unit centroids ``(clusters, dim)`` of the directions of ``x`` ``(tokens, dim)`` (cosine k-means)."""
    directions = F.normalize(x, dim=1)
    start = torch.randperm(directions.shape[0], generator=generator)[:clusters]
    centroids = directions[start].clone()
    for _ in range(_KMEANS_ITERATIONS):
        members = F.one_hot((directions @ centroids.T).argmax(dim=1), clusters).to(directions.dtype)
        sums = members.T @ directions
        empty = members.sum(dim=0) == 0
        centroids = torch.where(empty[:, None], centroids, F.normalize(sums, dim=1))
    return centroids
