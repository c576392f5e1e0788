"""KV-cached incremental decoding gives the hidden states of one full forward."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from tests.backbones.conftest import embeds, tiny


def decode_incrementally(backbone, x: torch.Tensor, prefill: int, cache) -> torch.Tensor:
    """Prefill ``prefill`` steps, then one step at a time; hidden ``[B, T, H]``."""
    batch, length, _ = x.shape
    pos = torch.arange(length).expand(batch, length)
    outs = [backbone(x[:, :prefill], pos[:, :prefill], cache=cache)]
    for t in range(prefill, length):
        outs.append(backbone(x[:, t : t + 1], pos[:, t : t + 1], cache=cache))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_static_cache_matches_full_forward(entry, attn):
    backbone = tiny(entry, attn_implementation=attn)
    x = embeds(2, 12)
    full = backbone(x, torch.arange(12).expand(2, 12))
    cache = backbone.allocate_cache(2, 16)
    with torch.no_grad():
        stepped = decode_incrementally(backbone, x, prefill=7, cache=cache)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)
    assert int(cache.get_seq_length()) == 12


def test_static_cache_is_preallocated_and_reusable():
    backbone = tiny("qwen3")
    cache = backbone.allocate_cache(3, 20)
    layer = cache.layers[0]
    assert layer.keys.shape == (3, backbone.config.num_key_value_heads, 20, backbone.config.head_dim)
    x = embeds(3, 6)
    with torch.no_grad():
        first = backbone(x, torch.arange(6).expand(3, 6), cache=cache)
        cache.reset()
        again = backbone(x, torch.arange(6).expand(3, 6), cache=cache)
    torch.testing.assert_close(first, again, atol=0, rtol=0)


def test_dynamic_cache_and_past_key_values_alias():
    backbone = tiny("llama")
    x = embeds(1, 9)
    full = backbone(x, torch.arange(9)[None])
    cache = DynamicCache()
    with torch.no_grad():
        head = backbone(x[:, :4], torch.arange(4)[None], past_key_values=cache)
        tail = backbone(x[:, 4:], torch.arange(4, 9)[None], use_cache=True, cache=cache)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, atol=1e-5, rtol=0)


def test_cache_misuse_is_refused():
    backbone = tiny("qwen3")
    x = embeds(1, 6)
    with pytest.raises(ValueError, match="use_cache=True needs a cache"):
        backbone(x, torch.arange(6)[None], use_cache=True)
    cache = backbone.allocate_cache(1, 8)
    with pytest.raises(ValueError, match="cannot be decoded with a KV cache"):
        backbone(x, torch.tensor([[0, 1, 2, 0, 1, 2]]), cache=cache)
    with pytest.raises(ValueError, match="do not fit"):
        backbone(embeds(1, 9), torch.arange(9)[None], cache=cache)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        backbone.allocate_cache(1, backbone.max_position_embeddings + 1)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_cached_decoding_matches_full_forward(attn):
    """Generation's layout: left-padded prompts, a 2D mask over [past + T], a preallocated cache."""
    backbone = tiny("qwen3", attn_implementation=attn)
    x = embeds(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # row 1: 3 pad slots, then its prompt
    pos = torch.arange(10).expand(2, 10)
    full = backbone(x, pos, attention_mask=mask)
    cache = backbone.allocate_cache(2, 16)
    with torch.no_grad():
        outs = [backbone(x[:, :6], pos[:, :6], cache=cache, attention_mask=mask[:, :6])]
        for t in range(6, 10):
            outs.append(
                backbone(x[:, t : t + 1], pos[:, t : t + 1], cache=cache, attention_mask=mask[:, : t + 1])
            )
    stepped = torch.cat(outs, dim=1)
    assert torch.isfinite(stepped[:, 3:]).all()
    torch.testing.assert_close(stepped[:, 3:], full[:, 3:], atol=1e-5, rtol=0)
