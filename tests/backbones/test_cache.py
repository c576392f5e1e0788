"""KV-cached incremental decoding gives the hidden states of one full forward."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from bagpiper_lib import backbones
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


@pytest.mark.parametrize("name", ["qwen3", "llama", "qwen2"])
def test_direct_decode_steps_equal_the_transformers_body(name, monkeypatch):
    """Decode steps skip the transformers model's forward; keys, values and outputs stay the same."""
    spec = {"name": "hf_causal_lm", "model_type": "qwen2"} if name == "qwen2" else {"name": name}
    direct = backbones.build({**spec, "preset": "tiny"}).eval()
    reference = backbones.build({**spec, "preset": "tiny"}).eval()
    reference.direct_decode = False
    x = embeds(2, 11)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :2] = 0  # a left-padded row
    pos = torch.arange(11).expand(2, 11)
    outs, caches = {}, {}
    for key, backbone in (("direct", direct), ("reference", reference)):
        cache = caches[key] = backbone.allocate_cache(2, 16)
        with torch.no_grad():
            steps = [backbone(x[:, :5], pos[:, :5], cache=cache, attention_mask=mask[:, :5])]
            if key == "direct":  # from here on the transformers forward must not run
                monkeypatch.setattr(type(backbone.body), "forward", _refuse)
            for t in range(5, 11):
                steps.append(
                    backbone(x[:, t : t + 1], pos[:, t : t + 1], cache=cache, attention_mask=mask[:, : t + 1])
                )
            if key == "direct":
                monkeypatch.undo()
        outs[key] = torch.cat(steps, 1)
    torch.testing.assert_close(outs["direct"], outs["reference"], atol=1e-5, rtol=0)
    for a, b in zip(caches["direct"].layers, caches["reference"].layers):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=0)
        assert int(a.cumulative_length) == int(b.cumulative_length) == 11
    with torch.no_grad(), pytest.raises(ValueError, match=r"needs \[B, >= 12\]"):
        direct(x[:, :1], pos[:, :1] + 11, cache=caches["direct"], attention_mask=mask)


def _refuse(*args, **kwargs):
    raise AssertionError("the transformers body ran a decode step that should have gone direct")
