"""``torch.compile`` of packed models: the kernels are torch operators in every mode, so a packed LLaMA
compiles into one graph (no graph break) whose logits are the eager ones, on every kernel backend; export and
FX tracing record the same operators.

Models are one-block random LLaMAs (hidden 64), converted with BinaryMoS (4 experts, made distinct so the
router matters) or ternary DLT (group size 32), then packed in memory or saved and reloaded. Without a GPU the
Triton backend runs in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from test_kernels import record_native_calls, record_triton_launches
from torch.fx.experimental.proxy_tensor import make_fx
from transformers import AutoModelForCausalLM

import optimum_binarymos
from optimum_binarymos import BinaryMoSConfig, PackedBinaryMoSLinear, PackedTernaryLinear, TernaryConfig
from optimum_binarymos.kernels import dispatch, set_kernel_backend

VOCAB = 64
HIDDEN, INTERMEDIATE = 64, 88

METHODS = {
    "binarymos": (lambda: BinaryMoSConfig(num_experts=4), PackedBinaryMoSLinear, "packed_linear"),
    "ternary": (lambda: TernaryConfig(group_size=32), PackedTernaryLinear, "ternary_matmul"),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def packed_llama(method: str, tmp_path=None) -> torch.nn.Module:
    """A tiny random LLaMA converted with ``method`` and packed (saved and reloaded when ``tmp_path`` is given)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    optimum_binarymos.convert_model(model, METHODS[method][0]())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "scale" in name or "shift" in name:
                # As after training: experts that differ (the router then matters), uneven groups.
                param.mul_(1 + 0.3 * torch.rand_like(param))
    model = optimum_binarymos.pack_model(model)
    if tmp_path is not None:
        model.save_pretrained(tmp_path)
        model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert packed_layers(model, method)
    return model


def packed_layers(model: torch.nn.Module, method: str) -> int:
    return sum(isinstance(module, METHODS[method][1]) for module in model.modules())


def input_ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def assert_compiled_matches_eager(compiled: torch.Tensor, eager: torch.Tensor) -> None:
    # A compiled graph may fuse and reorder float operations. Each logit comes through dot products of at most
    # INTERMEDIATE terms (the MLP's down projection is the longest), and reordering a sum of n terms changes
    # it by at most about n * eps of the sum of magnitudes: n * eps of the dtype, relative to the logits' scale.
    tolerance = INTERMEDIATE * torch.finfo(eager.dtype).eps
    assert compiled.dtype == eager.dtype and torch.isfinite(compiled).all()
    torch.testing.assert_close(compiled, eager, rtol=tolerance, atol=tolerance * eager.abs().max().item())


def kernel_nodes(graph_module: torch.fx.GraphModule, operator: str) -> int:
    targets = {getattr(torch.ops.optimum_binarymos, operator).default}
    if operator == "packed_linear" and optimum_binarymos.kernels.native_operator() is not None:
        # Few float32 tokens on CPU: the same kernel through its C++ operator.
        targets.add(torch.ops.optimum_binarymos_cpu.linear_f32.default)
    return sum(node.target in targets for node in graph_module.graph.nodes)


@pytest.mark.parametrize("reload", [False, True], ids=["pack_model", "reloaded"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_packed_model_compiles_whole_and_matches_eager(method, reload, tmp_path):
    model = packed_llama(method, tmp_path if reload else None)
    ids = input_ids()
    eager = logits(model, ids)
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(ids, use_cache=False)
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
    assert explanation.graph_count == 1
    # Each packed layer is one node: the kernel operator, traced through rather than around.
    assert kernel_nodes(explanation.graphs[0], METHODS[method][2]) == packed_layers(model, method)
    torch._dynamo.reset()
    # fullgraph=True raises at any graph break; aot_eager also traces the operators' fake implementations.
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert_compiled_matches_eager(logits(compiled, ids), eager)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_chosen_backend_runs_under_compile_and_a_change_recompiles(method, monkeypatch):
    pytest.importorskip("triton", reason="needs the triton package")
    model = packed_llama(method)
    ids = input_ids()
    layers = packed_layers(model, method)
    set_kernel_backend(model, "torch")
    eager = logits(model, ids)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    launches = record_triton_launches(monkeypatch)
    assert_compiled_matches_eager(logits(compiled, ids), eager)
    assert launches == {}
    # The backend is an argument of the operator and Dynamo guards on the layers' choice: changing it after
    # compiling recompiles (still whole) with the Triton kernels, instead of running the old choice.
    set_kernel_backend(model, "triton")
    triton_logits = logits(compiled, ids)
    expected = {"gemm": layers} if method == "binarymos" else {"ternary": layers}  # 14 tokens: the GEMM
    assert launches == expected
    torch.testing.assert_close(triton_logits, eager, rtol=1e-4, atol=1e-4)  # another kernel: other roundings


def test_first_use_under_compile_takes_the_variable_once(monkeypatch):
    model = packed_llama("binarymos")
    ids = input_ids()
    monkeypatch.setenv(dispatch.BACKEND_VARIABLE, "torch")
    calls = record_native_calls(monkeypatch)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # the layers' first use
    compiled_logits = logits(compiled, ids)
    assert calls == {"linear": packed_layers(model, "binarymos")}  # 14 tokens: the fused C kernel
    # The variable was read at that first use and kept: an invalid value set now is never read.
    monkeypatch.setenv(dispatch.BACKEND_VARIABLE, "cuda")
    assert {layer.kernel_backend for layer in model.modules() if isinstance(layer, PackedBinaryMoSLinear)} == {"torch"}
    assert_compiled_matches_eager(logits(compiled, ids), compiled_logits)
    assert_compiled_matches_eager(compiled_logits, logits(model, ids))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_export_and_fx_tracing_record_the_kernel_operators(method):
    """Not only torch.compile: torch.export and make_fx (which do not set torch.compiler.is_compiling) see the
    operator too, instead of tracing into the kernels' Python and ctypes code."""
    model = packed_llama(method)
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(3, INTERMEDIATE)
    with torch.no_grad():
        eager = layer(x)
        exported = torch.export.export(layer, (x,))
        traced = make_fx(layer)(x)
        for graph_module in (exported.graph_module, traced):
            assert kernel_nodes(graph_module, METHODS[method][2]) == 1
        torch.testing.assert_close(exported.module()(x), eager, rtol=0, atol=0)
        torch.testing.assert_close(traced(x), eager, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_inductor_compiles_packed_models(method):
    """The default backend (inductor): the kernel operators become calls from its generated code."""
    model = packed_llama(method)
    ids = input_ids()
    eager = logits(model, ids)
    compiled = torch.compile(model, fullgraph=True)
    assert_compiled_matches_eager(logits(compiled, ids), eager)


def test_static_cache_decode_with_8_bit_embeddings_compiles_whole_and_matches_eager():
    """The decode loop of generate() with a static cache, as compiled: one token per step, the int8 head and
    embeddings and the packed layers all operators of one graph, no recompilation from step to step."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    optimum_binarymos.convert_model(model, BinaryMoSConfig(num_experts=4, embedding_bits=8))
    model = optimum_binarymos.pack_model(model)
    prompt = input_ids()[:1]

    def decode(step, steps: int = 4) -> torch.Tensor:
        cache = transformers.StaticCache(config=model.config, max_cache_len=16)
        with torch.no_grad():
            positions = torch.arange(prompt.shape[1])
            out = model(prompt, past_key_values=cache, cache_position=positions, use_cache=True)
            token, collected = out.logits[:, -1:].argmax(-1), []
            for index in range(steps):
                position = torch.tensor([prompt.shape[1] + index])
                logits_ = step(input_ids=token, past_key_values=cache, cache_position=position, use_cache=True).logits
                collected.append(logits_)
                token = logits_[:, -1:].argmax(-1)
        return torch.cat(collected, dim=1)

    eager = decode(model.forward)
    with torch.no_grad():
        cache = transformers.StaticCache(config=model.config, max_cache_len=16)
        explanation = torch._dynamo.explain(model.forward)(
            input_ids=prompt[:, :1], past_key_values=cache, cache_position=torch.tensor([0]), use_cache=True
        )
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
    assert kernel_nodes(explanation.graphs[0], "int8_linear") == 1  # the head, once
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model.forward, backend=counter, fullgraph=True, dynamic=False)
    assert_compiled_matches_eager(decode(compiled), eager)
    assert counter.frame_count == 1  # every decode step reuses the one graph
