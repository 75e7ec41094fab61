"""``attn_implementation="binarymos_sdpa"``: the same logits as transformers' ``"sdpa"``, eager and compiled with a
static cache, the query heads folded onto their key/value head for one decoded token and ``"sdpa"`` itself
otherwise."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, StaticCache

import optimum_binarymos  # noqa: F401  registers the attention
from optimum_binarymos.integrations import attention


def tiny_llama(attn_implementation: str, kv_heads: int) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=kv_heads,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()


@torch.no_grad()
def decode(model: torch.nn.Module, compiled: bool, steps: int = 4) -> torch.Tensor:
    """Logits of a 10-token prefill and ``steps`` greedy tokens through a static cache."""
    cache = StaticCache(config=model.config, max_cache_len=32)
    logits = [model(torch.arange(1, 11).unsqueeze(0), past_key_values=cache, use_cache=True).logits[:, -1:]]
    step = torch.compile(model.forward, dynamic=False, fullgraph=True) if compiled else model.forward
    for position in range(10, 10 + steps):
        token = logits[-1].argmax(-1)
        out = step(input_ids=token, past_key_values=cache, use_cache=True, cache_position=torch.tensor([position]))
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("compiled", [False, True])
def test_binarymos_sdpa_gives_the_logits_of_sdpa(compiled):
    assert attention.ATTENTION_NAME == "binarymos_sdpa"
    reference = decode(tiny_llama("sdpa", kv_heads=2), compiled)
    model = tiny_llama("binarymos_sdpa", kv_heads=2)
    assert model.config._attn_implementation == "binarymos_sdpa"
    torch.testing.assert_close(decode(model, compiled), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kv_heads", "delegated"), [(2, 2), (8, 2 + 2 * 4)])
def test_one_decoded_token_folds_grouped_heads_and_everything_else_is_sdpa(monkeypatch, kv_heads, delegated):
    """Calls reaching transformers' sdpa: the prefill's (one per layer), and with one key/value head per query head
    (nothing to fold) every decoded token's too."""
    calls = []
    original = attention.sdpa_attention_forward

    def counting(*args, **kwargs):
        calls.append(args[1].shape[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", counting)
    decode(tiny_llama("binarymos_sdpa", kv_heads=kv_heads), compiled=False)
    assert len(calls) == delegated


def test_register_attention_again_changes_nothing():
    assert attention.register_attention() == "binarymos_sdpa"
    assert transformers.AttentionInterface()["binarymos_sdpa"] is attention.grouped_decode_attention
