"""Backbone contract: parity with the plain HF body, round trips, head/embeddings, switches, registry."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from bagpiper_lib import backbones
from tests.backbones.conftest import embeds, tiny


def test_registry_lists_entries_and_presets():
    assert {"qwen3", "llama", "hf_causal_lm"} <= set(backbones.available())
    assert backbones.DEFAULT == "qwen3"
    assert "tiny" in backbones.presets("qwen3") and "8b" in backbones.presets("qwen3")
    assert isinstance(tiny("qwen3"), backbones.Backbone)


def test_parity_with_plain_hf_body(entry, tmp_path):
    backbone = tiny(entry)
    x, pos = embeds(2, 10), torch.arange(10).expand(2, 10)
    pad = torch.ones(2, 10, dtype=torch.long)
    pad[1, :3] = 0
    reference = AutoModel.from_config(backbone.config).eval()
    reference.load_state_dict(backbone.body.state_dict())
    with torch.no_grad():
        assert torch.equal(backbone(x, pos), reference(inputs_embeds=x, position_ids=pos).last_hidden_state)
        expected = reference(inputs_embeds=x, position_ids=pos, attention_mask=pad).last_hidden_state
        assert torch.equal(backbone(x, pos, attention_mask=pad), expected)
    # the checkpoint written by save_pretrained is a normal transformers one
    loaded = AutoModel.from_pretrained(backbone.save_pretrained(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(backbone(x, pos), loaded(inputs_embeds=x, position_ids=pos).last_hidden_state)


def test_save_load_round_trip_is_exact(entry, tmp_path):
    backbone = tiny(entry)
    backbone.save_pretrained(tmp_path / "ckpt")
    loaded = backbones.build({"name": entry, "pretrained": str(tmp_path / "ckpt")}).eval()
    assert loaded.model_type == backbone.model_type
    x, pos = embeds(1, 7), torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    with torch.no_grad():
        assert torch.equal(loaded(x, pos), backbone(x, pos))
    assert torch.equal(loaded.text_embeddings(), backbone.text_embeddings())
    assert torch.equal(loaded.lm_head_weight(), backbone.lm_head_weight())
    assert loaded.tied_head == backbone.tied_head


@pytest.mark.parametrize(("name", "tied"), [("llama", True), ("qwen3", False)])
def test_text_embeddings_and_head(name, tied, tmp_path):
    backbone = tiny(name)
    vocab, hidden = backbone.vocab_size, backbone.hidden_size
    emb, head = backbone.text_embeddings(), backbone.lm_head_weight()
    assert emb.shape == (vocab, hidden) and head.shape == (vocab, hidden)
    assert backbone.tied_head is tied
    assert (emb.data_ptr() == head.data_ptr()) is tied  # a tied head is not a second copy
    reference = AutoModelForCausalLM.from_pretrained(backbone.save_pretrained(tmp_path))
    assert torch.equal(emb, reference.get_input_embeddings().weight)
    assert torch.equal(head, reference.lm_head.weight)
    assert not emb.requires_grad and not head.requires_grad


def test_freezing():
    frozen = tiny("qwen3", trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    x = embeds(1, 5).requires_grad_(True)
    frozen(x, torch.arange(5)[None]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # upstream embeddings still train

    trainable = tiny("qwen3")
    train_names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert any(".layers." in n for n in train_names) and any(n.endswith("norm.weight") for n in train_names)
    assert not trainable.text_embeddings().requires_grad and not trainable.lm_head_weight().requires_grad
    trainable.set_trainable(False)
    assert not any(p.requires_grad for p in trainable.parameters())


def test_gradient_checkpointing_gives_same_gradients():
    plain = tiny("qwen3").train()
    checkpointed = tiny("qwen3", gradient_checkpointing=True).train()
    assert checkpointed.lm.is_activation_checkpointing
    calls = []
    checkpointed.body.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda *_: calls.append(1))
    x, pos = embeds(2, 9), torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]] * 2)
    weight = embeds(2, 9, seed=1)
    grads = []
    for model in (plain, checkpointed):
        inp = x.clone().requires_grad_(True)
        (model(inp, pos) * weight).sum().backward()
        grads.append([inp.grad] + [p.grad for p in model.parameters() if p.requires_grad])
    assert len(calls) == 2  # forward + recomputation in backward
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    checkpointed.set_gradient_checkpointing(False)
    assert not checkpointed.lm.is_activation_checkpointing


def test_dtype_and_seed(tmp_path):
    half = tiny("llama", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert half(embeds(1, 4), torch.arange(4)[None]).dtype == torch.bfloat16  # float32 inputs are cast
    half.save_pretrained(tmp_path)
    assert (
        backbones.build({"name": "llama", "pretrained": str(tmp_path)}).text_embeddings().dtype
        == torch.bfloat16
    )
    as_float = backbones.build({"name": "llama", "pretrained": str(tmp_path), "dtype": torch.float32})
    assert as_float.text_embeddings().dtype == torch.float32
    same, other = tiny("llama"), tiny("llama", seed=1)
    assert torch.equal(same.text_embeddings(), tiny("llama").text_embeddings())
    assert not torch.equal(same.body.layers[0].mlp.up_proj.weight, other.body.layers[0].mlp.up_proj.weight)


def test_generic_entry_builds_any_causal_lm_type():
    backbone = backbones.build(
        {
            "name": "hf_causal_lm",
            "preset": "tiny",
            "model_type": "mistral",
            "config": {"sliding_window": None},
        }
    )
    assert backbone.model_type == "mistral" and backbone.hidden_size == 64
    assert backbone(embeds(1, 4), torch.arange(4)[None]).shape == (1, 4, 64)


def test_eager_matches_sdpa():
    sdpa, eager = tiny("qwen3"), tiny("qwen3", attn_implementation="eager")
    x, pos = embeds(1, 8), torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    torch.testing.assert_close(sdpa(x, pos), eager(x, pos), atol=1e-5, rtol=0)
    sdpa.set_attn_implementation("eager")
    assert sdpa.attn_implementation == "eager"
