"""Peak memory of loading a packed checkpoint, with float, 8-bit and 4-bit embeddings, over the import baseline.

Builds a random LLaMA with the shapes of a linear-heavy 1.1B-parameter model (24 layers, hidden 2048,
intermediate 5632, 32 heads with 4 key/value heads, vocabulary 32000, untied head), converts it with
BinaryMoS (4 experts, bfloat16), packs it and saves it three times: as it is, with ``embedding_bits=8`` and with
``embedding_bits=4`` (the same model with its embeddings and head replaced by 8-bit rows or 4-bit groups). Each checkpoint is then loaded with
``AutoModelForCausalLM.from_pretrained`` in a fresh process, which reports its peak resident memory
(the high-water mark ``VmHWM``, reset after ``import optimum_binarymos`` and transformers' LLaMA modeling code,
minus the resident size then) over
loading and reading every page of every tensor once
(loaded tensors can still be pages of the memory-mapped file); the figure is the difference, next to the
checkpoint's size on disk. The default vocabulary (320) keeps the model linear-heavy; ``--vocab-size 32000``
shows the embeddings' share.

Run from the repository root::

    python benchmarks/load_memory.py --output benchmarks/results/load_memory-cpu.md
    python benchmarks/load_memory.py --vocab-size 32000 --output benchmarks/results/load_memory-cpu.md --append
    python benchmarks/load_memory.py --layers 2 --hidden-size 256 --intermediate-size 704 --vocab-size 1000  # smoke
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

import optimum_binarymos
from optimum_binarymos import BinaryMoSConfig, convert_model, pack_model
from optimum_binarymos.footprint import format_bytes
from optimum_binarymos.hardware import cpu_info
from optimum_binarymos.methods.embeddings import quantize_embeddings

LOADER = """
import json, sys
import optimum_binarymos  # noqa: F401
import transformers.modeling_utils  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401
from transformers import AutoModelForCausalLM

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # KiB

# transformers imports its modeling code (and with it torch._dynamo, scipy and triton, about 155 MB resident) lazily,
# at the first from_pretrained: imported above, it is part of the baseline, not of what loading a checkpoint costs.
# The import's own peak is not the baseline: reset the high-water mark (Linux) and start from the resident size now.
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS")
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
# Tensors may still be pages of the memory-mapped file: read every page once, so that all of them are resident.
for tensor in model.state_dict().values():
    if tensor.numel():
        tensor.reshape(-1)[::1024].float().sum()
print(json.dumps({"before_kib": before, "after_kib": status("VmHWM")}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden-size", type=int, default=2048)
    parser.add_argument("--intermediate-size", type=int, default=5632)
    parser.add_argument("--vocab-size", type=int, default=320)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--append", action="store_true", help="add this run's section to --output")
    return parser.parse_args(argv)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))


def load_peak(folder: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder)], capture_output=True, text=True, check=True, timeout=1800
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = transformers.LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers, num_attention_heads=32 if args.hidden_size >= 2048 else 4,
        num_key_value_heads=4 if args.hidden_size >= 2048 else 2, tie_word_embeddings=False,
    )  # fmt: skip
    start = time.perf_counter()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    convert_model(model, BinaryMoSConfig(num_experts=4))
    pack_model(model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="load-memory-") as scratch:
        folders = {
            "float (bfloat16) embeddings": Path(scratch) / "float-embeddings",
            "8-bit embeddings": Path(scratch) / "int8-embeddings",
            "4-bit embeddings": Path(scratch) / "int4-embeddings",
        }
        model.save_pretrained(folders["float (bfloat16) embeddings"])
        for bits, label in ((8, "8-bit embeddings"), (4, "4-bit embeddings")):
            quantized = copy.deepcopy(model)
            quantize_embeddings(quantized, bits=bits)
            quantized.config.quantization_config.embedding_bits = bits
            quantized.config.quantization_config.post_init()  # format version 2 or 3
            quantized.save_pretrained(folders[label])
            del quantized
        del model
        prepared = time.perf_counter() - start
        for label, folder in folders.items():
            peak = load_peak(folder)
            size = folder_bytes(folder)
            delta = (peak["after_kib"] - peak["before_kib"]) * 1024
            rows.append((label, size, delta))
    lines = [
        "# Peak memory of loading a packed checkpoint (`benchmarks/load_memory.py`)",
        "",
        f"- Model: random LLaMA, {args.layers} layers, hidden {args.hidden_size}, intermediate "
        f"{args.intermediate_size}, vocabulary {args.vocab_size}, untied head; BinaryMoS E=4, bfloat16, packed.",
        f"- Machine: `lscpu` {cpu_info()}. Python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, optimum-binarymos {optimum_binarymos.__version__}.",
        f"- Date: {datetime.date.today().isoformat()}. Command: `python benchmarks/load_memory.py "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}`. Building and saving all took {prepared:.0f} s.",
        "- Peak: in a fresh process, the resident high-water mark (`VmHWM`, reset after `import optimum_binarymos` and "
        "transformers' LLaMA modeling code, which transformers otherwise imports lazily during the first load) "
        "over `from_pretrained` and one read of every page of every tensor, minus the resident size after the import.",
        "",
        "| checkpoint | safetensors on disk | peak over the import baseline | peak / file | peak - file |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {format_bytes(size)} | {format_bytes(delta)} | {delta / size:.2f}x | {format_bytes(delta - size)} |"
            for label, size, delta in rows
        ),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.output is not None:
        mode = "a" if args.append else "w"
        with args.output.open(mode) as handle:
            handle.write(("\n" if args.append else "") + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
