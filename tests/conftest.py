"""Shared fixtures: tiny random models of every supported architecture, saved once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU, Triton kernels run in its interpreter; it must be set before any kernel module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
import transformers
from transformers import AutoModelForCausalLM

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

# The demo's model and text fetching (it runs pip and npm) is not part of the library: it lives in
# examples/demo_assets, which the tests of the examples, the experiments and the asset caches import.
EXAMPLES = str(Path(__file__).resolve().parents[1] / "examples")
if EXAMPLES not in sys.path:
    sys.path.append(EXAMPLES)

VOCAB = 96



def tiny_llama_config(**overrides) -> transformers.LlamaConfig:
    """The tests' LLaMA shape (hidden 64, 2 blocks, grouped-query attention, untied head), with ``overrides``."""
    settings = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 88,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    }
    return transformers.LlamaConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: tiny models spend their time in thread hand-offs on a shared machine.
    Modules ask for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# name -> (config factory, dotted suffixes of the linears expected inside each decoder block)
ARCHITECTURES = {
    "llama": (
        tiny_llama_config,
        [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ],
    ),
    "mistral": (
        lambda: transformers.MistralConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=88,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=8,
        ),
        [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ],
    ),
    "qwen2": (
        lambda: transformers.Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=88,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ],
    ),
    "qwen3": (
        lambda: transformers.Qwen3Config(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=88,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        ),
        [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ],
    ),
    "gemma3": (
        lambda: transformers.Gemma3TextConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=88,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=8,
        ),
        [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ],
    ),
    "phi3": (
        lambda: transformers.Phi3Config(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=88,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
        ),
        ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"],
    ),
    "opt": (
        lambda: transformers.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            ffn_dim=88,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=64,
            max_position_embeddings=64,
        ),
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"],
    ),
    "gpt2": (
        lambda: transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        ),
        ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    ),
}


def make_float_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random float32 model of ``arch`` with non-trivial biases and norms."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(ARCHITECTURES[arch][0]())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                # Default init leaves biases at 0 and norms at 1: perturb them so bias handling is tested.
                param.add_(0.05 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope="session")
def float_checkpoint(tmp_path_factory):
    """``float_checkpoint(arch)`` -> folder of a saved tiny float model (built once per session)."""
    cache: dict[str, str] = {}

    def get(arch: str) -> str:
        if arch not in cache:
            folder = tmp_path_factory.mktemp(f"float-{arch}")
            make_float_model(arch).save_pretrained(folder)
            cache[arch] = str(folder)
        return cache[arch]

    return get


@pytest.fixture
def tokens():
    torch.manual_seed(1)
    return torch.randint(1, VOCAB, (2, 11))
