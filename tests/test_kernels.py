"""Kernels of the packed BinaryMoS linear against the formula, on every backend.

Without a GPU the Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest), one
program at a time in Python: shapes here are small but cross tile and split boundaries of the interpreter's
configuration (128 x 128 tiles, 2 K splits), and ``K`` is not a multiple of 8. Activations are views into
buffers padded with NaN, so a read past a row or a column poisons the result; packed signs are views into a
wider buffer of 0xFF bytes, so a kernel that ignores their row stride reads the wrong bits.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
import torch
from conftest import tiny_llama_config
from transformers import AutoModelForCausalLM

import optimum_binarymos
from optimum_binarymos import (
    BinaryMoSConfig,
    BinaryMoSLinear,
    PackedBinaryMoSLinear,
    pack_signs,
    unpack_signs,
)
from optimum_binarymos.kernels import binarymos_linear, dispatch, native, set_kernel_backend, torch_backend
from optimum_binarymos.kernels.native import (
    NativeBuildError,
    NativeKernels,
    build,
    build_library,
    digest_path,
    native_kernels,
)
from optimum_binarymos.packing import dequantize_groups4, quantize_groups4, quantize_rows

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# K is not a multiple of 8 (padding bits) and crosses two 128-wide K tiles; N crosses two 128-wide N tiles.
K, N = 203, 150


def nan_padded(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (2-D) as a view with a row stride and an offset, inside a buffer of NaN."""
    rows, cols = tensor.shape
    buffer = torch.full((rows + 2, cols + 13), float("nan"), dtype=tensor.dtype)
    view = buffer[1 : rows + 1, 5 : cols + 5]
    view.copy_(tensor)
    return view


def garbage_padded(packed: torch.Tensor) -> torch.Tensor:
    """Packed signs as a view inside a buffer of 0xFF bytes (all +1), with a row stride wider than a row."""
    rows, cols = packed.shape
    buffer = torch.full((rows + 1, cols + 7), 0xFF, dtype=torch.uint8)
    view = buffer[:rows, 3 : cols + 3]
    view.copy_(packed)
    return view


def make_case(
    tokens: int, experts: int, bias: bool, dtype=torch.float32, seed: int = 0, k: int = K, n: int = N
):
    """Keyword arguments of ``binarymos_linear`` with NaN-padded activations, and the float32 reference."""
    generator = torch.Generator().manual_seed(seed)
    packed = pack_signs(torch.randn(n, k, generator=generator))
    x = torch.randn(tokens, k, generator=generator).to(dtype)
    scale_in = (0.5 + torch.rand(experts, k, generator=generator)).to(dtype)
    scale_out = (0.01 + 0.02 * torch.rand(experts, n, generator=generator)).to(dtype)
    gates = torch.softmax(torch.randn(tokens, experts, generator=generator), dim=-1) if experts > 1 else None
    bias_ = torch.randn(n, generator=generator).to(dtype) if bias else None
    expected = reference(x, packed, k, scale_in, scale_out, gates, bias_)
    case = dict(
        x=nan_padded(x),
        packed=garbage_padded(packed),
        in_features=k,
        scale_in=scale_in,
        scale_out=scale_out,
        gates=gates,
        bias=bias_,
    )
    return case, expected


def reference(x, packed, in_features, scale_in, scale_out, gates, bias):
    """The formula in float32, with the signs from :func:`unpack_signs` (the layout's reference)."""
    if gates is None:
        s_in, s_out = scale_in[0].float(), scale_out[0].float()
    else:
        s_in, s_out = gates @ scale_in.float(), gates @ scale_out.float()
    y = ((x.float() * s_in) @ unpack_signs(packed, in_features).T) * s_out
    return y + bias.float() if bias is not None else y


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == dtype and actual.shape == expected.shape
    assert torch.isfinite(actual).all(), "a NaN from the padding leaked in: an out-of-bounds read"
    # Tolerance relative to the output's scale: signed sums cancel, so single outputs may be near zero.
    scale = expected.abs().max().item()
    tolerance = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(actual.float(), expected, rtol=tolerance, atol=tolerance * scale)


# --- Triton (interpreter on CPU) ----------------------------------------------------------------------------


@pytest.fixture
def triton_linear():
    """The Triton backend's entry module (imports triton; the tests that use it skip without it)."""
    pytest.importorskip("triton", reason="needs the triton package")
    from optimum_binarymos.kernels.triton import linear

    return linear


def record_triton_launches(monkeypatch) -> collections.Counter:
    """Count the launches of the three Triton kernels (``"gemv"``, ``"gemm"``, ``"ternary"``) from here on.

    A test-only wrapper around each kernel object's ``run``, which ``kernel[grid](...)`` calls once per launch
    (an autotuner's benchmarking runs go to the inner function and are not counted): nothing counts in the
    library. Triton must be installed (use the ``triton_linear`` fixture first).
    """
    from optimum_binarymos.kernels.triton import gemm, gemv, ternary

    calls: collections.Counter = collections.Counter()
    kernels = {
        "gemv": gemv.binarymos_gemv_kernel,
        "gemm": gemm.binarymos_gemm_kernel,
        "ternary": ternary._kernel,
    }
    for name, kernel in kernels.items():

        def recording(*args, _run=kernel.run, _name=name, **kwargs):
            calls[_name] += 1
            return _run(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", recording)
    return calls


@pytest.mark.parametrize("tokens", [1, 3, 17])
@pytest.mark.parametrize("strategy", ["gemv", "gemm"])
def test_triton_strategies_match_the_formula(triton_linear, monkeypatch, strategy, tokens):
    case, expected = make_case(tokens, experts=4, bias=True, seed=tokens)
    launches = record_triton_launches(monkeypatch)
    y = triton_linear.packed_linear(**case, strategy=strategy)
    assert launches == {strategy: 1}
    assert_matches(y, expected, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("strategy", ["gemv", "gemm"])
def test_triton_half_precision_single_expert_without_bias(triton_linear, strategy, dtype):
    case, expected = make_case(3, experts=1, bias=False, dtype=dtype, seed=7)
    assert_matches(triton_linear.packed_linear(**case, strategy=strategy), expected, dtype)


@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gemv_without_splits_stores_directly_and_with_splits_adds_into_zeroed_sums(
    triton_linear, monkeypatch, split_k, dtype
):
    """One split: the kernel writes the result in the activations' dtype (a single launch). Several: the
    configuration's pre-hook zeroes the float32 sums before the splits add into them, call after call."""
    from optimum_binarymos.kernels.triton import configs, gemv

    config = configs.gemv_config(64, 64, split_k)
    zeroed = []
    if config.pre_hook is not None:
        config.pre_hook = lambda arguments: zeroed.append(1) or configs.zero_partial_sums(arguments)
    monkeypatch.setattr(gemv.binarymos_gemv_kernel, "configs", [config])
    for seed in (1, 2):  # a second call must not see the first call's sums
        case, expected = make_case(3, experts=4, bias=True, dtype=dtype, seed=seed)
        assert_matches(triton_linear.packed_linear(**case, strategy="gemv"), expected, dtype)
    assert gemv.binarymos_gemv_kernel.best_config.kwargs["SPLIT_K"] == split_k
    assert len(zeroed) == (2 if split_k > 1 else 0)


def test_triton_half_precision_mixture_with_bias(triton_linear):
    case, expected = make_case(2, experts=4, bias=True, dtype=torch.float16, seed=8)
    assert_matches(triton_linear.packed_linear(**case, strategy="gemm"), expected, torch.float16)


def test_dispatcher_sends_few_tokens_to_gemv_and_many_to_gemm(triton_linear, monkeypatch):
    for tokens, strategy in [(2, "gemv"), (12, "gemm")]:
        case, expected = make_case(tokens, experts=2, bias=False, k=40, n=24, seed=tokens)
        launches = record_triton_launches(monkeypatch)
        y = binarymos_linear(**case, backend="triton")
        assert launches == {strategy: 1}
        assert_matches(y, expected, torch.float32)
        launches.clear()
        # Without a backend argument the function reads BINARYMOS_BACKEND at the call.
        monkeypatch.setenv(dispatch.BACKEND_VARIABLE, "triton")
        assert_matches(binarymos_linear(**case), expected, torch.float32)
        monkeypatch.delenv(dispatch.BACKEND_VARIABLE)
        assert launches == {strategy: 1}


def tiny_packed_llama(num_experts: int) -> torch.nn.Module:
    """A one-block random LLaMA (hidden 64), converted with ``num_experts`` experts and packed."""
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=64, num_hidden_layers=1)
    model = AutoModelForCausalLM.from_config(config).eval()
    optimum_binarymos.convert_model(model, BinaryMoSConfig(num_experts=num_experts))
    return optimum_binarymos.pack_model(model)


def prefill_then_decode_logits(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a prefill of ``tokens[:, :-1]`` and of one decoding step on ``tokens[:, -1:]``."""
    with torch.no_grad():
        prefill = model(tokens[:, :-1], use_cache=True)
        decode = model(tokens[:, -1:], past_key_values=prefill.past_key_values, use_cache=True)
    return prefill.logits, decode.logits


def test_whole_packed_model_gives_the_same_logits_on_triton_and_torch(triton_linear, monkeypatch):
    model = tiny_packed_llama(num_experts=4)
    tokens = torch.randint(1, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    layers = sum(isinstance(module, PackedBinaryMoSLinear) for module in model.modules())
    assert set_kernel_backend(model, "torch") == layers
    launches = record_triton_launches(monkeypatch)
    expected = prefill_then_decode_logits(model, tokens)
    assert launches == {}
    assert set_kernel_backend(model, "triton") == layers
    actual = prefill_then_decode_logits(model, tokens)
    # Prefill: 2 x 7 tokens through each layer (GEMM); decoding: 2 tokens (GEMV).
    assert launches == {"gemm": layers, "gemv": layers}
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_ternary_layer_launches_the_triton_kernel_only_when_chosen(triton_linear, monkeypatch):
    from optimum_binarymos.nn.ternary import PackedTernaryLinear, TernaryLinear

    torch.manual_seed(0)
    layer = PackedTernaryLinear.from_latent(TernaryLinear.from_float(torch.randn(N, K), group_size=32))
    x = torch.randn(2, 3, K)
    launches = record_triton_launches(monkeypatch)
    with torch.no_grad():
        expected = layer(x)  # auto on CPU: the torch path
        assert launches == {} and layer.kernel_backend == "auto"
        layer.kernel_backend = "triton"
        actual = layer(x)
    assert launches == {"ternary": 1}
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


# --- torch backend and native CPU kernel --------------------------------------------------------------------


def record_native_calls(monkeypatch) -> collections.Counter:
    """Count the native kernels' entry points from here on (a test-only wrapper; nothing counts in the library)."""
    kernels = native_kernels()
    assert kernels is not None, "the C kernels did not build: packed layers on CPU fall back to the slow path"
    calls: collections.Counter = collections.Counter()
    for name in ("linear", "unpack"):
        method = getattr(kernels, name)

        def recording(*args, _method=method, _name=name, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(kernels, name, recording)
    # Few float32 tokens reach the same C function through its C++ operator (no Python on the way): counted as
    # "linear" too, by wrapping the operator the layers resolve.
    operator = optimum_binarymos.kernels.native_operator()
    if operator is not None:

        def recording_operator(*args):
            calls["linear"] += 1
            return operator(*args)

        monkeypatch.setitem(optimum_binarymos.kernels._native_operators, None, recording_operator)
    return calls


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "pure-torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 3, 17, 40])
def test_torch_backend_matches_the_formula(monkeypatch, tokens, dtype, use_native):
    # Small unpacked blocks, so that the blocked strategy (40 tokens) crosses block boundaries too.
    monkeypatch.setattr(torch_backend, "UNPACK_BLOCK_ELEMENTS", 8 * K)
    calls = record_native_calls(monkeypatch)
    for experts, bias in [(4, True), (1, False)]:
        case, expected = make_case(tokens, experts, bias, dtype=dtype, seed=tokens + experts)
        y = torch_backend.packed_linear(**case, use_native=use_native)
        assert_matches(y, expected, dtype)
    # The path that ran: the fused C linear up to NATIVE_MAX_TOKENS, C-unpacked blocks and a matmul above it
    # (8 rows per block, N rows, two cases), nothing native without use_native.
    blocks = 2 * -(-N // 8)
    if not use_native:
        assert calls == {}
    elif tokens <= torch_backend.NATIVE_MAX_TOKENS:
        assert calls == {"linear": 2}
    else:
        assert calls == {"unpack": blocks}


def test_native_kernels_are_built_and_used_on_this_machine():
    kernels = native_kernels()
    assert kernels is not None, "the C kernels did not build: packed layers on CPU fall back to the slow path"
    if sys.platform.startswith("linux"):
        flags = f" {build.cpu_signature()} "
        expected = "avx512" if " avx512f" in flags else "avx2" if " avx2" in flags else "portable"
        assert kernels.simd == expected

def test_a_packed_layer_on_cpu_runs_the_native_kernel(monkeypatch):
    calls = record_native_calls(monkeypatch)
    layer = PackedBinaryMoSLinear(K, N, num_experts=4, bias=True).requires_grad_(False)
    with torch.no_grad():
        layer(torch.randn(1, K))
    assert calls == {"linear": 1}


def router_case(tokens: int, dtype=torch.float32, seed: int = 0):
    """A mixture case given by its router weight, with the gates written here: softmax of the logits in the
    activations' dtype, in float32 (the layers' definition)."""
    case, _ = make_case(tokens, experts=4, bias=True, dtype=dtype, seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    router = (0.05 * torch.randn(4, K, generator=generator)).to(dtype)
    x = case["x"][:, :K]
    logits = (x.double() @ router.double().T).to(dtype).float()
    gates = torch.exp(logits - logits.amax(-1, keepdim=True))
    gates = gates / gates.sum(-1, keepdim=True)
    expected = reference(x, case["packed"][:, : -(-K // 8)].contiguous(), K, case["scale_in"], case["scale_out"], gates, case["bias"])
    return {**case, "gates": None, "router_weight": router}, expected


@pytest.mark.parametrize("tokens", [1, 3, 40])
def test_router_weight_instead_of_gates_matches_the_formula(monkeypatch, tokens):
    """Few tokens: the native kernel computes the gates itself (one call, no gate tensor built); more tokens:
    the torch path computes them first."""
    calls = record_native_calls(monkeypatch)
    case, expected = router_case(tokens, seed=tokens)
    assert_matches(binarymos_linear(**case, backend="torch"), expected, torch.float32)
    assert calls["linear"] == (1 if tokens <= torch_backend.NATIVE_MAX_TOKENS else 0)


def test_native_kernel_computes_the_gates_from_the_router():
    kernels = native_kernels()
    case, expected = router_case(2, seed=5)
    x = case["x"][:, :K].contiguous()
    arguments = dict(packed=case["packed"], in_features=K, scale_in=case["scale_in"], scale_out=case["scale_out"])
    y = kernels.linear(x, **arguments, gates=None, bias=case["bias"], router=case["router_weight"])
    assert_matches(y, expected, torch.float32)
    with pytest.raises(ValueError, match="the gates or the router weight, not both"):
        kernels.linear(x, **arguments, gates=torch.ones(2, 4) / 4, bias=None, router=case["router_weight"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_router_weight_in_half_precision_matches_the_formula(dtype):
    case, expected = router_case(3, dtype=dtype, seed=9)
    assert_matches(binarymos_linear(**case, backend="torch"), expected, dtype)


def test_router_weight_on_triton_matches_the_formula(triton_linear):
    case, expected = router_case(3, seed=11)
    assert_matches(binarymos_linear(**case, backend="triton"), expected, torch.float32)


@pytest.mark.parametrize("in_features", [5, 8, 16, 69, 72, 130])
def test_native_kernel_handles_every_tail_of_a_row(in_features):
    """Rows of 1, 2, 9 and 17 bytes of signs: the 64-weight steps, the byte pairs and a last lone byte (read with a
    masked load on AVX-512, never past the row), with NaN activations and garbage bits beyond the row."""
    kernels = native_kernels()
    for tokens in (1, 3):
        case, expected = make_case(tokens, experts=4, bias=False, k=in_features, seed=in_features)
        case = {**case, "scale_in": case["scale_in"].contiguous()}
        assert_matches(kernels.linear(**case), expected, torch.float32)


def _check_row_products(kernels: NativeKernels) -> None:
    """The int8 and int4 head products of one build against float64, with a partial last 4-bit group."""
    torch.manual_seed(0)
    x = torch.randn(3, 77)
    codes, scale = quantize_rows(torch.randn(70, 77))
    reference = x.double() @ (codes.double() * scale.double()[:, None]).T
    torch.testing.assert_close(kernels.int8_linear(x, codes, scale, None).double(), reference, rtol=0, atol=2e-5)
    codes4, scale4 = quantize_groups4(torch.randn(70, 77))
    reference = x.double() @ dequantize_groups4(codes4, scale4, 77, torch.float64).T
    torch.testing.assert_close(kernels.int4_linear(x, codes4, scale4, None).double(), reference, rtol=0, atol=2e-5)


def test_build_without_avx512_matches_the_formula(tmp_path):
    """Built with the AVX-512 loops turned off, the library runs the AVX2 ones on any AVX2 CPU (what AVX2-only CPUs
    run by default; on an AVX-512 machine this is their only test) or the portable loop on an older one; checked
    for the 1-bit, int8 and int4 products."""
    default = native_kernels()
    if default is None:
        pytest.fail("the native kernels did not build with the system C compiler")
    kernels = NativeKernels(build_library(cache_dir=tmp_path, extra_flags=("-DBINARYMOS_NO_AVX512",)))
    assert kernels.simd == ("avx2" if default.simd in ("avx512", "avx2") else "portable")
    for tokens in (1, 5, 11):
        case, expected = make_case(tokens, experts=4, bias=True, seed=tokens)
        case = {**case, "scale_in": case["scale_in"].contiguous()}
        assert_matches(kernels.linear(**case), expected, torch.float32)
    _check_row_products(kernels)


def test_portable_c_loop_matches_the_formula(tmp_path):
    kernels = NativeKernels(build_library(cache_dir=tmp_path, extra_flags=("-DBINARYMOS_PORTABLE",)))
    assert kernels.simd == "portable"
    for tokens in (1, 5, 11):
        case, expected = make_case(tokens, experts=4, bias=True, seed=tokens)
        case = {**case, "scale_in": case["scale_in"].contiguous()}
        assert_matches(kernels.linear(**case), expected, torch.float32)
    packed = case["packed"]
    assert torch.equal(kernels.unpack(packed, K), unpack_signs(packed.contiguous(), K))
    _check_row_products(kernels)


def _native_case(seed: int):
    # Large enough (tokens x N x K above the C library's threshold) for the work to be shared with helpers.
    case, expected = make_case(2, experts=4, bias=True, k=1000, n=600, seed=seed)
    return {**case, "x": case["x"].contiguous()}, expected


def test_native_kernel_from_several_threads_at_once():
    kernels = native_kernels()
    cases = [_native_case(seed) for seed in range(4)]
    errors = []

    def work(index: int) -> None:
        case, expected = cases[index % len(cases)]
        for _ in range(20):
            try:
                assert_matches(kernels.linear(**case), expected, torch.float32)
            except AssertionError as error:
                errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]


_FORK_CASE: dict = {}


def _linear_in_child(queue) -> None:
    # Only the native kernel runs here: torch's own OpenMP pool does not survive fork() (its next parallel
    # region would hang), so the inputs and the reference come from the parent.
    y = native_kernels().linear(**_FORK_CASE["case"])
    queue.put(float((y - _FORK_CASE["expected"]).abs().max()))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_native_kernel_in_a_forked_child():
    case, expected = _native_case(0)
    assert_matches(native_kernels().linear(**case), expected, torch.float32)  # helpers started in the parent
    _FORK_CASE.update(case=case, expected=expected)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_linear_in_child, args=(queue,))
    child.start()
    try:
        error = queue.get(timeout=60)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0 and error < 1e-5 * expected.abs().max().item()


def test_native_build_reuses_the_cache_and_reports_a_missing_compiler(tmp_path, monkeypatch):
    first = build_library(cache_dir=tmp_path)
    assert build_library(cache_dir=tmp_path) == first
    assert sorted(path.name for path in tmp_path.iterdir()) == [first.name, digest_path(first).name]
    monkeypatch.setenv("CC", f"{build.find_compiler()} -O1")
    assert build_library(cache_dir=tmp_path / "with-flags").is_file()  # CC is a command line, as in make
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.raises(NativeBuildError, match="could not compile"):
        build_library(cache_dir=tmp_path / "empty")


@pytest.mark.reliability
@pytest.mark.parametrize("damage", ["truncated", "garbage", "no digest", "other library"])
def test_a_damaged_cached_library_is_rebuilt_not_loaded(tmp_path, damage):
    library = build_library(cache_dir=tmp_path)
    original = library.read_bytes()
    digest = digest_path(library)
    if damage == "truncated":
        library.write_bytes(original[: len(original) // 3])
    elif damage == "garbage":
        library.write_bytes(b"\x7fELF not a library" * 100)
    elif damage == "no digest":
        digest.unlink()
    else:  # a planted library under the cached name: its constructor must never run
        other = build_library(cache_dir=tmp_path / "other", extra_flags=("-DBINARYMOS_PORTABLE",))
        library.write_bytes(other.read_bytes())
    rebuilt = build_library(cache_dir=tmp_path)
    assert rebuilt == library and digest.is_file()
    assert digest.read_text().strip() == hashlib.sha256(rebuilt.read_bytes()).hexdigest()
    case, expected = make_case(3, experts=2, bias=False)
    assert_matches(NativeKernels(rebuilt).linear(**case), expected, torch.float32)


@pytest.fixture
def reset_native_kernels():
    native_kernels.cache_clear()
    yield
    native_kernels.cache_clear()


def test_failed_native_build_warns_once_and_falls_back_to_torch(monkeypatch, reset_native_kernels):
    def failing_build():
        raise NativeBuildError("no C compiler found")

    monkeypatch.setattr(native, "build_library", failing_build)
    case, expected = make_case(1, experts=4, bias=True)
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable") as record:
        y = torch_backend.packed_linear(**case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch_backend.packed_linear(**case)
    assert len(record) == 1
    assert_matches(y, expected, torch.float32)


# --- dispatch -----------------------------------------------------------------------------------------------


def test_select_backend_follows_the_request_or_the_variable(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(dispatch.BACKEND_VARIABLE, raising=False)
    assert dispatch.select_backend(cpu) == dispatch.select_backend(cpu, "auto") == "torch"
    assert dispatch.select_backend(cuda) == "triton"
    assert dispatch.select_backend(cpu, "triton") == "triton"  # the interpreter is on in this session
    assert dispatch.select_backend(cuda, " Torch ") == "torch"
    monkeypatch.setenv(dispatch.BACKEND_VARIABLE, "triton")
    assert dispatch.select_backend(cpu) == "triton"
    assert dispatch.select_backend(cpu, "torch") == "torch"  # an explicit request wins over the variable
    monkeypatch.setenv(dispatch.BACKEND_VARIABLE, "cuda")
    with pytest.raises(ValueError, match="BINARYMOS_BACKEND must be one of"):
        dispatch.select_backend(cpu)
    with pytest.raises(ValueError, match=r"kernel_backend must be one of \['auto', 'triton', 'torch'\]"):
        dispatch.select_backend(cpu, "cuda")


def test_the_variable_is_a_layers_default_read_once_at_its_first_use(monkeypatch):
    layer = PackedBinaryMoSLinear(K, N, num_experts=4).requires_grad_(False)
    x = torch.randn(1, K)
    calls = record_native_calls(monkeypatch)
    monkeypatch.setenv(dispatch.BACKEND_VARIABLE, "torch")
    with torch.no_grad():
        layer(x)
        assert layer.kernel_backend == "torch" and calls == {"linear": 1}  # the C kernel, under "torch" too
        # Not read again: an invalid value set after the first use changes nothing, and raises nowhere.
        monkeypatch.setenv(dispatch.BACKEND_VARIABLE, "cuda")
        layer(x)
        assert layer.kernel_backend == "torch" and calls == {"linear": 2}
        # Returning the layer to the default reads the variable again at its next use.
        layer.kernel_backend = None
        with pytest.raises(ValueError, match="BINARYMOS_BACKEND must be one of"):
            layer(x)


def test_backend_per_layer_and_per_model_with_clear_errors(triton_linear, monkeypatch):
    from optimum_binarymos.nn.ternary import PackedTernaryLinear

    monkeypatch.delenv(dispatch.BACKEND_VARIABLE, raising=False)
    binary = PackedBinaryMoSLinear(K, N, num_experts=2).requires_grad_(False)
    ternary = PackedTernaryLinear(N, N, group_size=32).requires_grad_(False)
    model = torch.nn.Sequential(torch.nn.Linear(K, K), binary, torch.nn.Sequential(torch.nn.ReLU(), ternary))
    assert binary.kernel_backend == ternary.kernel_backend == "auto"
    assert set_kernel_backend(model, "TRITON") == 2  # nothing else in the model has a kernel backend
    assert binary.kernel_backend == ternary.kernel_backend == "triton"
    ternary.kernel_backend = "torch"  # one layer alone
    assert (binary.kernel_backend, ternary.kernel_backend) == ("triton", "torch")
    names = r"kernel_backend must be one of \['auto', 'triton', 'torch'\], got 'cuda'"
    with pytest.raises(ValueError, match=names):
        set_kernel_backend(model, "cuda")
    assert (binary.kernel_backend, ternary.kernel_backend) == ("triton", "torch")  # nothing changed
    with pytest.raises(ValueError, match="kernel_backend must be one of"):
        binary.kernel_backend = "native"
    with pytest.raises(ValueError, match="kernel_backend must be one of"):
        ternary.kernel_backend = 1
    assert set_kernel_backend(torch.nn.Linear(2, 2), "torch") == 0
    # The choice is a plain attribute: not in the state dict, kept by deepcopy.
    assert not any("kernel_backend" in name for name in binary.state_dict())
    assert copy.deepcopy(binary).kernel_backend == "triton"
    launches = record_triton_launches(monkeypatch)
    with torch.no_grad():
        model(torch.randn(3, K))
    assert launches == {"gemv": 1}
    # A group size the Triton ternary kernel cannot tile: "auto" takes the torch path, "triton" says so.
    odd = PackedTernaryLinear(40, 8, group_size=8).requires_grad_(False)
    with torch.no_grad():
        odd.kernel_backend = "auto"
        odd(torch.randn(2, 40))
        odd.kernel_backend = "triton"
        with pytest.raises(RuntimeError, match="multiple of 16"):
            odd(torch.randn(2, 40))


def test_forcing_triton_where_it_cannot_run_says_what_to_change(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1.*set_kernel_backend"):
        dispatch.select_backend(torch.device("cpu"), "triton")
    monkeypatch.setattr(dispatch, "triton_installed", lambda: False)
    with pytest.raises(RuntimeError, match="pip install triton.*set_kernel_backend"):
        dispatch.select_backend(torch.device("cpu"), "triton")


def test_package_imports_and_runs_without_triton():
    script = textwrap.dedent(
        """
        import os, sys
        sys.modules["triton"] = None  # any `import triton` now fails
        import torch
        import optimum_binarymos
        from optimum_binarymos import PackedBinaryMoSLinear
        layer = PackedBinaryMoSLinear(20, 6, num_experts=2).requires_grad_(False)
        with torch.no_grad():
            assert layer(torch.randn(3, 20)).shape == (3, 6)
            for choose in ("attribute", "variable"):
                if choose == "attribute":
                    layer.kernel_backend = "triton"
                else:
                    os.environ["BINARYMOS_BACKEND"] = "triton"
                    layer = PackedBinaryMoSLinear(20, 6, num_experts=2).requires_grad_(False)
                try:
                    layer(torch.randn(3, 20))
                except RuntimeError as error:
                    assert "pip install triton" in str(error), error
                else:
                    raise AssertionError(f"the triton backend ({choose}) without triton did not raise")
        print("ok")
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "BINARYMOS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr


def test_packed_layer_keeps_autograd_through_the_reference_path():
    layer = PackedBinaryMoSLinear(K, N, num_experts=4).requires_grad_(False)
    x = torch.randn(2, K, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_empty_batch():
    case, _ = make_case(1, experts=4, bias=True)
    case["x"] = torch.empty(0, K)
    case["gates"] = torch.empty(0, 4)
    assert binarymos_linear(**case).shape == (0, N)


GPU_COMPILE_SCRIPT = """
import sys
from concurrent.futures import ProcessPoolExecutor

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from optimum_binarymos.kernels.triton import configs, gemm, gemv, ternary

HOPPER = GPUTarget("cuda", 90, 32)
SHARED_MEMORY_LIMIT = 227 * 1024  # per block on an H100


def pointer_types(dtype, out_dtype):
    return {
        "x_ptr": dtype, "w_ptr": "u8", "codes_ptr": "u8", "gates_ptr": "fp32", "scale_in_ptr": dtype,
        "scale_out_ptr": dtype, "scale_ptr": dtype, "shift_ptr": dtype, "bias_ptr": dtype, "y_ptr": out_dtype,
        "out_ptr": out_dtype, "partial_ptr": "fp32",
    }


def build(job):
    name, dtype, out_dtype, constexprs, warps, stages = job
    kernel = {"gemv": gemv.binarymos_gemv_kernel.fn, "gemm": gemm.binarymos_gemm_kernel.fn,
              "ternary": ternary._ternary_matmul_kernel}[name]
    types = pointer_types(dtype, out_dtype)
    signature = {
        arg: "constexpr" if arg in constexprs else (f"*{types[arg]}" if arg.endswith("_ptr") else "i32")
        for arg in kernel.arg_names
    }
    compiled = triton.compile(
        ASTSource(kernel, signature, constexprs=constexprs), target=HOPPER,
        options={"num_warps": warps, "num_stages": stages},
    )
    assert compiled.asm["cubin"], job
    return job, compiled.metadata.shared


def jobs():
    mixture = dict(NUM_EXPERTS=4, HAS_GATES=True, HAS_BIAS=True)
    dots = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32}
    for index, config in enumerate(configs.gemv_configs()):
        dtype = ["fp16", "bf16", "fp32"][index % 3]
        yield "gemv", dtype, dtype, dict(mixture, **config.kwargs), config.num_warps, config.num_stages
    for index, config in enumerate(configs.gemm_configs()):
        dtype = ["bf16", "fp16", "fp32"][index % 3]
        constexprs = dict(mixture, DOT_DTYPE=dots[dtype], **config.kwargs)
        yield "gemm", dtype, dtype, constexprs, config.num_warps, config.num_stages
    for index, config in enumerate(ternary._gpu_configs()):
        dtype = ["fp16", "bf16", "fp32"][index % 3]
        constexprs = dict(GROUP_SIZE=128, BASE3=bool(index % 2), DOT_FP32=dtype == "fp32", BLOCK_K=64, **config.kwargs)
        yield "ternary", dtype, dtype, constexprs, config.num_warps, config.num_stages


if __name__ == "__main__":
    assert not configs.INTERPRETING
    todo = list(jobs())
    built = 0
    with ProcessPoolExecutor(max_workers=2) as pool:
        for (name, dtype, _, constexprs, warps, stages), shared in pool.map(build, todo):
            assert shared <= SHARED_MEMORY_LIMIT, (name, dtype, constexprs, shared)
            built += 1
    print(f"built {built} of {len(todo)}")
    print("ok")
"""


@pytest.mark.slow
def test_every_triton_configuration_compiles_for_a_gpu_without_one(triton_linear, tmp_path):
    """The interpreter neither type-checks like the compiler nor lowers ``tl.dot`` to tensor cores: build every
    autotuning configuration of the three kernels to a Hopper cubin (needs no device, only the ptxas shipped
    with triton) in processes where they are not interpreted, with fp16, bf16 and fp32 activations spread over
    the configurations, and check each fits an H100's shared memory."""
    script = tmp_path / "compile_for_hopper.py"
    script.write_text(GPU_COMPILE_SCRIPT)
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    # The script sees the GPU configuration lists (under pytest they are the interpreter's single ones).
    built, _, expected = result.stdout.split("built ")[1].split()[:3]
    assert int(built) == int(expected)
    assert int(built) > 30


# --- on a GPU -----------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 4, 16, 128])
def test_cuda_triton_matches_the_formula(triton_linear, tokens, dtype):
    case, expected = make_case(tokens, experts=4, bias=True, dtype=dtype, k=4096 + 24, n=1000)
    case = {key: value.cuda() if isinstance(value, torch.Tensor) else value for key, value in case.items()}
    for strategy in ("gemv", "gemm"):
        y = triton_linear.packed_linear(**case, strategy=strategy)
        assert_matches(y.cpu(), expected, dtype)


@needs_cuda
def test_cuda_auto_backend_is_triton(triton_linear, monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_VARIABLE, raising=False)
    case, expected = make_case(2, experts=4, bias=True, dtype=torch.float16)
    case = {key: value.cuda() if isinstance(value, torch.Tensor) else value for key, value in case.items()}
    launches = record_triton_launches(monkeypatch)
    assert_matches(binarymos_linear(**case).cpu(), expected, torch.float16)
    assert launches == {"gemv": 1}


# --- torch operators: torch.compile traces packed layers whole ---------------------------------------------------


def test_packed_layers_compile_without_graph_breaks_and_match_eager():
    from optimum_binarymos.nn.ternary import PackedTernaryLinear, TernaryLinear

    torch.manual_seed(0)
    binary = PackedBinaryMoSLinear.from_latent(BinaryMoSLinear(K, N, num_experts=4, bias=True))
    ternary = PackedTernaryLinear.from_latent(TernaryLinear(K, N, group_size=32, bias=True), "base3")
    x = torch.randn(5, K)
    for layer in (binary, ternary):
        torch._dynamo.reset()
        with torch.no_grad():
            # fullgraph=True raises at the first graph break (an opaque ctypes or Triton call would be one).
            compiled = torch.compile(layer, backend="eager", fullgraph=True)
            torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)


def test_operators_have_fake_implementations_with_the_output_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(7, K)
        packed = torch.empty(N, (K + 7) // 8, dtype=torch.uint8)
        y = torch.ops.optimum_binarymos.packed_linear(x, packed, K, torch.empty(1, K), torch.empty(1, N), None, None)
        codes = torch.empty(N, (K + 4) // 5, dtype=torch.uint8)
        groups = torch.empty(N, (K + 31) // 32)
        z = torch.ops.optimum_binarymos.ternary_matmul(x, codes, groups, groups, K, 32, "base3")
    assert y.shape == z.shape == (7, N) and y.dtype == z.dtype == torch.float32


# --- the native kernel's C++ operator --------------------------------------------------------------------------


def test_cpp_operator_matches_the_formula_and_refuses_bad_tensors():
    operator = optimum_binarymos.kernels.native_operator()
    if operator is None:
        pytest.skip("the C++ operator could not be built here (no C++ compiler or ninja): the ctypes path runs")
    case, expected = router_case(3, seed=21)
    x = case["x"]  # a strided view (NaN padding beyond K): the operator takes any row stride
    y = operator(x, case["packed"], K, case["scale_in"].contiguous(), case["scale_out"], case["bias"], case["router_weight"])
    assert_matches(y, expected, torch.float32)
    with pytest.raises(RuntimeError, match="router weight is required with 4 experts"):
        operator(x, case["packed"], K, case["scale_in"].contiguous(), case["scale_out"], None, None)
    with pytest.raises(RuntimeError, match="x must be a 2-D float32 CPU tensor"):
        operator(x.double(), case["packed"], K, case["scale_in"].contiguous(), case["scale_out"], None, case["router_weight"])


CPP_OPERATOR_CHILD = """
import sys, torch
import optimum_binarymos
from optimum_binarymos import pack_signs
from optimum_binarymos.kernels import native_operator
operator = native_operator()
assert operator is not None, "not built"
weight, x = torch.randn(6, 20), torch.randn(2, 20)
y = operator(x, pack_signs(weight), 20, torch.ones(1, 20), torch.ones(1, 6), None, None)
torch.testing.assert_close(y, x @ torch.where(weight >= 0, 1.0, -1.0).T)
print("ok")
"""


def test_a_damaged_cpp_operator_library_is_rebuilt_not_loaded(tmp_path):
    """Built once in a fresh cache; the cached library is then truncated; the next process must rebuild it (its
    digest no longer matches) instead of loading it."""
    if optimum_binarymos.kernels.native_operator() is None:
        pytest.skip("the C++ operator could not be built here")
    env = {**os.environ, "BINARYMOS_CACHE": str(tmp_path)}
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-c", CPP_OPERATOR_CHILD], env=env, capture_output=True, text=True, timeout=600
    )
    first = run()
    assert first.returncode == 0 and first.stdout.strip() == "ok", first.stderr[-2000:]
    libraries = list(tmp_path.glob("kernels/torch-op-*/optimum_binarymos_cpu_*.so"))
    assert len(libraries) == 1 and native.digest_path(libraries[0]).is_file()
    libraries[0].write_bytes(libraries[0].read_bytes()[:4096])
    second = run()
    assert second.returncode == 0 and second.stdout.strip() == "ok", second.stderr[-2000:]
    assert native.build._matches_digest(libraries[0])


def test_without_the_cpp_operator_layers_keep_the_ctypes_path(monkeypatch):
    from optimum_binarymos.kernels.native import torch_op

    monkeypatch.setattr(optimum_binarymos.kernels, "_native_operators", {})
    monkeypatch.setattr(torch_op, "_build_and_load", lambda *_: (_ for _ in ()).throw(OSError("no ninja")))
    torch_op.native_linear_op.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built.*no ninja"):
            assert optimum_binarymos.kernels.native_operator() is None
        calls = record_native_calls(monkeypatch)
        layer = PackedBinaryMoSLinear(K, N, num_experts=4, bias=True).requires_grad_(False)
        with torch.no_grad():
            layer(torch.randn(1, K))
        assert calls == {"linear": 1}  # through NativeKernels.linear
    finally:
        torch_op.native_linear_op.cache_clear()
