"""Autotuning choices of the BinaryMoS Triton kernels, and whether they run in Triton's interpreter.

On a GPU each kernel is tuned once per shape bucket (tokens rounded up to a power of two, ``N``, ``K`` and the
dtypes). The interpreter cannot benchmark (no driver), so it gets one configuration per kernel, with tiles
that keep the number of programs low (each program runs in Python there) while still crossing tile and split
boundaries at test shapes.
"""

from __future__ import annotations

import os

import triton


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4 reads its settings through knobs
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


#: Read once, like ``triton.jit`` does when it decorates the kernels: setting ``TRITON_INTERPRET`` later has
#: no effect on kernels already imported.
INTERPRETING = _interpreting()

#: Largest number of tokens handled by the split-K GEMV; more tokens go to the ``tl.dot`` GEMM.
GEMV_MAX_TOKENS = 8

#: Tokens buckets stop here: larger batches share one tuning.
MAX_TOKENS_BUCKET = 4096


def tokens_bucket(tokens: int) -> int:
    """Autotuning key for the number of tokens: the next power of two, capped at :data:`MAX_TOKENS_BUCKET`."""
    return min(triton.next_power_of_2(max(tokens, 1)), MAX_TOKENS_BUCKET)


def zero_partial_sums(arguments: dict) -> None:
    """Pre-hook of the GEMV configurations with K splits: their programs add into ``partial_ptr``."""
    arguments["partial_ptr"].zero_()


def gemv_config(block_n: int, block_k: int, split_k: int, num_warps: int = 4) -> triton.Config:
    """One configuration of :func:`~.gemv.binarymos_gemv_kernel`; with ``split_k > 1`` it zeroes the partial
    sums before each launch."""
    return triton.Config(
        {"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split_k},
        num_warps=num_warps,
        pre_hook=zero_partial_sums if split_k > 1 else None,
    )


def gemv_configs() -> list[triton.Config]:
    """Configurations of :func:`~.gemv.binarymos_gemv_kernel`: output tile, K tile and K splits."""
    if INTERPRETING:
        return [gemv_config(128, 128, 2)]
    return [
        gemv_config(block_n, block_k, split_k, warps)
        for block_n, block_k, warps in ((32, 256, 4), (64, 256, 4), (64, 512, 8), (128, 128, 4), (128, 256, 8))
        for split_k in (1, 2, 4, 8)
    ]


def prune_gemv_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop configurations with more K splits than K tiles (their extra programs would do nothing)."""
    k = named_args["K"]
    kept = [c for c in configs if c.kwargs["SPLIT_K"] <= triton.cdiv(k, c.kwargs["BLOCK_K"])]
    return kept or configs[:1]


def gemm_configs() -> list[triton.Config]:
    """Configurations of :func:`~.gemm.binarymos_gemm_kernel`: ``(BLOCK_M, BLOCK_N, BLOCK_K)`` tiles."""
    if INTERPRETING:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 4})]
    shapes = (
        # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
        (16, 64, 128, 4, 4),
        (16, 128, 128, 4, 4),
        (32, 64, 128, 4, 4),
        (32, 128, 64, 4, 4),
        (64, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 64, 64, 4, 4),
        (64, 256, 64, 8, 3),
        (128, 128, 64, 8, 3),
        (128, 256, 64, 8, 3),
    )
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in shapes
    ]


def prune_gemm_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop row tiles far taller than the batch (up to one step above the tokens' power of two)."""
    tokens = named_args["TOKENS_BUCKET"]
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, 2 * tokens)]
    return kept or configs[:1]
