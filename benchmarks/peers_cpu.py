"""Prefill and decode speed on CPU: packed models against llama.cpp and transformers, one run, alternating rounds.

The model is SmolLM2-135M-Instruct, the demo's: llama.cpp runs the Q4_1 GGUF file the demo starts from (what a
CPU user would download and run), transformers runs the folder dequantized from it, in float32 and in bfloat16,
and the packed models are that folder converted on load (``from_pretrained(..., quantization_config=...)``) and
packed in memory: OneBit (1 expert), BinaryMoS (4 experts), BinaryMoS with 8-bit embeddings and ``lm_head``
(``embedding_bits=8``, and ``4`` compiled) and ternary, their float parts in float32. Rows marked "compiled" decode through
``torch.compile(model.forward, dynamic=False)`` with a ``StaticCache`` (the recipe transformers documents for
static-cache generation; the packed kernels are torch operators, so the graph holds them); their compilation runs
in an untimed warm-up, reported apart. The packed models run ``attn_implementation="binarymos_sdpa"``
(:mod:`optimum_binarymos.integrations.attention`, which a compiled decode step needs to avoid copying the cache). The
packed models are not distilled: speed does not depend on the values of the weights (a distilled model runs the same
kernels on the same shapes).

Every model gets the same token ids. Per model, thread count and round:

* prefill: one forward over a ``--prompt-tokens`` prompt into an empty cache, only the last position's logits
  computed (transformers: ``logits_to_keep=1``, as ``generate`` does; llama.cpp computes the last row only), then
  the greedy next token;
* decode: ``--new-tokens`` one-token forwards, each followed by a greedy argmax, from that token on (no
  ``generate()`` around either side, so both measure the model, not the sampling loop).

Rounds alternate: each round runs every model at every thread count, so a slow minute of a shared machine lands
on all of them. Figures are medians over ``--rounds``; the ratio column divides by llama.cpp's median of the same
thread count in the same run. "Weights" is the bytes of the tensors each runtime holds: the unique storages of a
torch model's parameters and buffers, ``llama_model_size`` for llama.cpp.

llama.cpp runs in a worker process under its own Python (``--peer-python``, by default ``.venv-peers/bin/python``
as ``make bench-peers`` builds it from the pinned source distribution), timed inside the worker, one worker per
thread count (``n_threads`` and ``n_threads_batch`` both set).

Run from the repository root::

    make bench-peers                      # builds .venv-peers, then the line below
    python benchmarks/peers_cpu.py --output benchmarks/results/peers_cpu-cpu.md --plot docs/peers_cpu.png
    python benchmarks/peers_cpu.py --tiny  # smoke run: random 2-layer model, no llama.cpp
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache

import optimum_binarymos
from optimum_binarymos import BinaryMoSConfig, TernaryConfig, convert_model, pack_model
from optimum_binarymos.hardware import cpu_info
from optimum_binarymos.integrations.attention import ATTENTION_NAME
from optimum_binarymos.kernels import set_activation_bits
from optimum_binarymos.kernels.native import native_kernels

REPOSITORY = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "peers" / "llama_cpp_worker.py"
DEFAULT_PEER_PYTHON = REPOSITORY / ".venv-peers" / "bin" / "python"
#: What ``make bench-peers`` records about the peer's build, in the peer's virtualenv.
PEER_BUILD_NOTE = "build-flags.txt"

LLAMA_CPP = "llama.cpp Q4_1 (GGUF)"

#: name -> (dtype of the float parts, quantization config or None for the float model, compiled); names saying
#: "int8 activations" run their packed layers with ``activation_bits=8``.
TORCH_MODELS = {
    "transformers float32": (torch.float32, None, False),
    "transformers float32, compiled": (torch.float32, None, True),
    "transformers bfloat16": (torch.bfloat16, None, False),
    "packed OneBit": (torch.float32, lambda: BinaryMoSConfig(num_experts=1), False),
    "packed BinaryMoS E=4": (torch.float32, lambda: BinaryMoSConfig(num_experts=4), False),
    "packed BinaryMoS E=4, 8-bit embeddings": (
        torch.float32, lambda: BinaryMoSConfig(num_experts=4, embedding_bits=8), False,
    ),
    "packed BinaryMoS E=4, 8-bit embeddings, compiled": (
        torch.float32, lambda: BinaryMoSConfig(num_experts=4, embedding_bits=8), True,
    ),
    "packed BinaryMoS E=4, 4-bit embeddings, compiled": (
        torch.float32, lambda: BinaryMoSConfig(num_experts=4, embedding_bits=4), True,
    ),
    "packed BinaryMoS E=4, 8-bit embeddings, int8 activations": (
        torch.float32, lambda: BinaryMoSConfig(num_experts=4, embedding_bits=8), False,
    ),
    "packed BinaryMoS E=4, 8-bit embeddings, int8 activations, compiled": (
        torch.float32, lambda: BinaryMoSConfig(num_experts=4, embedding_bits=8), True,
    ),
    "packed ternary": (torch.float32, lambda: TernaryConfig(), False),
}  # fmt: skip

#: SmolLM2-135M's shapes, for the random fallback and ``--tiny``.
SMOLLM2_CONFIG = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "max_position_embeddings": 2048,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=None, help=f"subset of: {LLAMA_CPP!r}, {', '.join(map(repr, TORCH_MODELS))}")
    parser.add_argument("--model-dir", type=Path, default=None, help="float HF folder (default: the demo's SmolLM2)")
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF for llama.cpp (default: the demo's Q4_1 file)")
    parser.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--n-batch", type=int, default=None, help="llama.cpp batch size (default: the prompt length)")
    parser.add_argument(
        "--no-repack", action="store_true", help="load llama.cpp's weights as stored (no extra buffer types)"
    )
    parser.add_argument("--tiny", action="store_true", help="random 2-layer SmolLM2 shapes, no llama.cpp (smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="markdown results file")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of tokens/s by model and threads")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------------ models


def model_source(args: argparse.Namespace) -> tuple[Path | None, Path | None, str]:
    """(float folder or None for random weights, GGUF file or None, what the model is)."""
    if args.tiny:
        return None, args.gguf, "random LLaMA with SmolLM2-135M's shapes but 2 layers (smoke run)"
    folder, gguf = args.model_dir, args.gguf
    if folder is None or gguf is None:
        sys.path.insert(0, str(REPOSITORY / "examples"))
        from demo_assets import smollm2_gguf, smollm2_path

        folder = folder or smollm2_path()
        gguf = gguf or smollm2_gguf()
    return folder, gguf, f"SmolLM2-135M-Instruct (`{gguf.name}`; the folder dequantized from it for transformers)"


def load_torch_model(name: str, folder: Path | None, seed: int) -> nn.Module:
    dtype, make_config, _ = TORCH_MODELS[name]
    if folder is None:
        torch.manual_seed(seed)
        config = transformers.LlamaConfig(**{**SMOLLM2_CONFIG, "num_hidden_layers": 2})
        model = AutoModelForCausalLM.from_config(config).to(dtype)
        if make_config is not None:
            convert_model(model, make_config())
    else:
        kwargs = {"dtype": dtype}
        if make_config is not None:
            kwargs["quantization_config"] = make_config()
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if make_config is not None:
        pack_model(model)
        model.set_attn_implementation(ATTENTION_NAME)
    if "int8 activations" in name:
        set_activation_bits(model, 8)
    return model.eval().requires_grad_(False)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the unique storages of a model's parameters and buffers (tied tensors once)."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class TorchRunner:
    """Prefill and greedy decode of one transformers model, timed with ``perf_counter``.

    ``compiled``: a ``StaticCache`` and the decode step through ``torch.compile(model.forward, dynamic=False)``
    (the prefill stays eager, as ``generate`` does with a static cache); :meth:`warm_up` compiles before timing.
    """

    def __init__(self, model: nn.Module, compiled: bool = False, max_cache_len: int = 256) -> None:
        self.model = model
        self.compiled = compiled
        self.max_cache_len = max_cache_len
        self.step = torch.compile(model.forward, dynamic=False) if compiled else model.forward
        self.cache = None
        self.position = 0

    def _new_cache(self):
        if self.compiled:
            # One static cache, emptied between runs: a new cache object would fail the compiled graph's guards
            # and recompile.
            if self.cache is None:
                return StaticCache(config=self.model.config, max_cache_len=self.max_cache_len)
            self.cache.reset()
            return self.cache
        return DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def prefill(self, prompt: list[int]) -> tuple[float, int]:
        ids = torch.tensor([prompt])
        start = time.perf_counter()
        self.cache = self._new_cache()
        logits = self.model(
            input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1,
            cache_position=torch.arange(len(prompt)),
        ).logits  # fmt: skip
        token = int(logits[0, -1].argmax())
        self.position = len(prompt)
        return time.perf_counter() - start, token

    @torch.inference_mode()
    def decode(self, token: int, steps: int) -> float:
        current = torch.tensor([[token]])
        start = time.perf_counter()
        for _ in range(steps):
            position = torch.tensor([self.position])
            logits = self.step(
                input_ids=current, past_key_values=self.cache, use_cache=True, cache_position=position
            ).logits
            current = logits[:, -1:].argmax(-1)
            self.position += 1
        return time.perf_counter() - start

    def warm_up(self, prompt: list[int]) -> float:
        """Seconds of one untimed prefill and two decode steps (the compilation, when compiled)."""
        start = time.perf_counter()
        _, token = self.prefill(prompt)
        self.decode(token, 2)
        return time.perf_counter() - start


class LlamaCppRunner:
    """The llama.cpp worker of one thread count (``benchmarks/peers/llama_cpp_worker.py``)."""

    def __init__(self, python: Path, gguf: Path, threads: int, n_ctx: int, n_batch: int, repack: bool) -> None:
        command = [str(python), str(WORKER), str(gguf), str(threads), str(n_ctx), str(n_batch), "1" if repack else "0"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._ask({"op": "info"})

    def _ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"the llama.cpp worker exited with code {code} during {request['op']!r}")
        return json.loads(line)

    def prefill(self, prompt: list[int]) -> tuple[float, int]:
        reply = self._ask({"op": "prefill", "tokens": prompt})
        return reply["seconds"], reply["next"]

    def decode(self, token: int, steps: int) -> float:
        return self._ask({"op": "decode", "token": token, "steps": steps})["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


# ------------------------------------------------------------------------------------------------------ running


def prompt_ids(folder: Path | None, length: int, seed: int) -> list[int]:
    """``length`` token ids: the tokenized demo prompt repeated, or random ids without a tokenizer."""
    if folder is not None:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        text = "The history of the printing press begins in the fifteenth century, when "
        ids = tokenizer(text * (length // 8 + 1))["input_ids"]
        if len(ids) >= length:
            return ids[:length]
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(100, 10_000, (length,), generator=generator).tolist()


def run(args: argparse.Namespace) -> dict:
    folder, gguf, what = model_source(args)
    names = args.models or ([LLAMA_CPP] if gguf is not None else []) + list(TORCH_MODELS)
    unknown = [name for name in names if name != LLAMA_CPP and name not in TORCH_MODELS]
    if unknown:
        raise SystemExit(f"unknown model names {unknown}")
    prompt = prompt_ids(folder, args.prompt_tokens, args.seed)
    runners: dict[tuple[str, int], object] = {}
    weights: dict[str, int] = {}
    warm_up: dict[str, float] = {}
    peer: dict = {}
    for name in names:
        if name == LLAMA_CPP:
            if not args.peer_python.exists():
                raise SystemExit(f"{args.peer_python} not found: build the peer with `make bench-peers`")
            for threads in args.threads:
                runner = LlamaCppRunner(
                    args.peer_python, gguf, threads, args.prompt_tokens + args.new_tokens + 8,
                    args.n_batch or args.prompt_tokens, not args.no_repack,
                )  # fmt: skip
                runners[(name, threads)] = runner
                peer = runner.info
            weights[name] = peer["tensor_bytes"]
        else:
            print(f"loading {name}", file=sys.stderr, flush=True)
            model = load_torch_model(name, folder, args.seed)
            weights[name] = weight_bytes(model)
            runner = TorchRunner(model, compiled=TORCH_MODELS[name][2], max_cache_len=args.prompt_tokens + args.new_tokens + 8)
            # Warm up at every thread count: a compiled graph may be specialized to the thread count it ran at.
            for threads in args.threads:
                torch.set_num_threads(threads)
                warm_up[name] = warm_up.get(name, 0.0) + runner.warm_up(prompt)
            for threads in args.threads:
                runners[(name, threads)] = runner

    samples = {key: {"prefill": [], "decode": []} for key in runners}
    for round_index in range(args.rounds):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name in names:
                runner = runners[(name, threads)]
                prefill_seconds, token = runner.prefill(prompt)
                decode_seconds = runner.decode(token, args.new_tokens)
                samples[(name, threads)]["prefill"].append(args.prompt_tokens / prefill_seconds)
                samples[(name, threads)]["decode"].append(args.new_tokens / decode_seconds)
                print(
                    f"round {round_index + 1}/{args.rounds} threads {threads} {name}: prefill "
                    f"{samples[(name, threads)]['prefill'][-1]:.1f} tok/s, decode {samples[(name, threads)]['decode'][-1]:.1f} tok/s",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
    for runner in runners.values():
        if isinstance(runner, LlamaCppRunner):
            runner.close()
    return {
        "what": what,
        "names": names,
        "threads": args.threads,
        "weights": weights,
        "warm_up_seconds": warm_up,
        "samples": {f"{name}|{threads}": value for (name, threads), value in samples.items()},
        "peer": peer,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(["python", "benchmarks/peers_cpu.py", *sys.argv[1:]]),
        "versions": versions(peer, args.peer_python),
        "settings": {
            "rounds": args.rounds, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
            "n_batch": args.n_batch or args.prompt_tokens, "repack": not args.no_repack,
        },  # fmt: skip
    }


def machine() -> str:
    kernels = native_kernels()
    native = f"native kernel {kernels.simd}" if kernels is not None else "no native kernel"
    return f"`lscpu` {cpu_info()}, {os.cpu_count()} cores, {native}, load average {os.getloadavg()[0]:.1f} at the end"


def versions(peer: dict, peer_python: Path) -> str:
    parts = [
        f"Python {sys.version.split()[0]}",
        f"torch {torch.__version__}",
        f"transformers {transformers.__version__}",
        f"optimum-binarymos {optimum_binarymos.__version__}",
    ]
    if peer:
        note = peer_python.parent.parent / PEER_BUILD_NOTE
        build = note.read_text().strip() if note.exists() else "build flags not recorded"
        parts.append(f"llama-cpp-python {peer['llama_cpp_python']} ({build})")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------------ report


def render(result: dict) -> str:
    names, threads = result["names"], result["threads"]
    median = {key: {kind: statistics.median(values) for kind, values in value.items()} for key, value in result["samples"].items()}
    has_peer = LLAMA_CPP in names
    header = ["model", "weights (MiB)"]
    for count in threads:
        header += [f"prefill tok/s, {count} thr", f"decode tok/s, {count} thr"]
        if has_peer:
            header.append(f"decode vs llama.cpp, {count} thr")
    lines = [
        "# Prefill and decode speed on CPU against llama.cpp and transformers (`benchmarks/peers_cpu.py`)",
        "",
        f"- Model: {result['what']}.",
        f"- Machine: {result['machine']}.",
        f"- Versions: {result['versions']}.",
        f"- Date: {result['date']}. Command: `{result['command']}`.",
        f"- Settings: {json.dumps(result['settings'])}; batch 1, greedy; medians of {result['settings']['rounds']} "
        "rounds alternating over every model and thread count.",
    ]
    if result["peer"]:
        lines.append(f"- llama.cpp system info: `{result['peer']['system_info'].strip()}`")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name in names:
        row = [name, f"{result['weights'][name] / 2**20:.1f}"]
        for count in threads:
            figures = median[f"{name}|{count}"]
            row += [f"{figures['prefill']:.1f}", f"{figures['decode']:.1f}"]
            if has_peer:
                row.append(f"{figures['decode'] / median[f'{LLAMA_CPP}|{count}']['decode']:.2f}x")
        lines.append("| " + " | ".join(row) + " |")
    compiled = {name: seconds for name, seconds in result.get("warm_up_seconds", {}).items() if "compiled" in name}
    if compiled:
        lines += ["", "Untimed warm-up (one prefill and two decode steps per thread count, the compilation included): " + ", ".join(
            f"{name} {seconds:.0f} s" for name, seconds in compiled.items()
        ) + "."]
    lines += ["", "Ratios to transformers float32 at the same thread count (decode / prefill):", ""]
    reference = "transformers float32"
    if reference in names:
        for name in names:
            cells = [
                f"{count} thr: {median[f'{name}|{count}']['decode'] / median[f'{reference}|{count}']['decode']:.2f}x"
                f" / {median[f'{name}|{count}']['prefill'] / median[f'{reference}|{count}']['prefill']:.2f}x"
                for count in threads
            ]
            lines.append(f"- {name}: " + ", ".join(cells))
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, threads = result["names"], result["threads"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, kind in zip(axes, ("decode", "prefill"), strict=True):
        width = 0.8 / len(threads)
        for index, count in enumerate(threads):
            values = [statistics.median(result["samples"][f"{name}|{count}"][kind]) for name in names]
            axis.barh([i + index * width for i in range(len(names))], values, height=width, label=f"{count} thread{'s' if count > 1 else ''}")
        axis.set_yticks([i + width * (len(threads) - 1) / 2 for i in range(len(names))], names)
        axis.invert_yaxis()
        axis.set_xlabel(f"{kind} tokens/s (batch 1)")
        axis.legend()
    figure.suptitle(f"SmolLM2-135M on {cpu_info().model}, {result['date']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    report = render(result)
    print(report)
    if args.output is not None:
        args.output.write_text(report)
        args.output.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    if args.plot is not None:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
