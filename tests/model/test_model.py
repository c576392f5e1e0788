"""BagpiperModel: assembly, embedding, chunked loss, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bagpiper_lib.model import PRESETS, BagpiperModel
from bagpiper_lib.sequence import collate_padded, pack, templates
from bagpiper_lib.sequence.messages import Message


def tiny_config(**overrides):
    cfg = {**PRESETS["tiny"], **overrides}
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BagpiperModel.from_config(tiny_config())


def samples(model, n_audio=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    k, n = model.vocab.num_codebooks, model.vocab.codebook_size
    out = []
    for i in range(n_audio):
        codes = torch.randint(0, n, (k, 4 + i), generator=g)
        out.append(model.builder.build(templates.caption_to_audio(f"sound {i}", codes)))
    out.append(model.builder.build(templates.text_only("plain text only")))
    feats = torch.randn(6, model.encoder.output_dim, generator=g)
    out.append(
        model.builder.build([Message("user", "audio_in", feats), Message("assistant", "text", "a cat")])
    )
    return out


def naive_loss(model, batch):
    """Materialise every logit of every stream at once: the reference the chunked loss must match."""
    embeds = model.input_embeddings(batch.tokens, batch.audio_in)
    hidden = model.backbone(embeds, batch.position_ids)[:, :-1]
    tokens, mask = batch.tokens[:, 1:], batch.loss_mask[:, 1:]
    v = model.vocab
    total = 0.0
    for k in range(v.num_codebooks):
        if k == 0:
            logits, lo = model.head(hidden).float(), 0
        else:
            h = hidden + model.stream_embed[k - 1]
            logits, lo = (h @ model.head.weight[v.codec_offset :].T).float(), v.codec_offset
        ce = F.cross_entropy(logits.transpose(1, 2), (tokens[..., k] - lo).clamp(min=0), reduction="none")
        weight = torch.where(tokens[..., k] >= v.codec_offset, 1.0 / v.num_codebooks, 1.0)
        total = total + (ce * weight * mask[..., k]).sum()
    return total / mask[..., 0].sum()


def test_chunked_loss_equals_naive_loss_and_gradients(model):
    batch = pack(samples(model), budget=256, pad_ids=model._stream_pads)
    params = [model.embed.weight, model.head.weight, model.stream_embed]
    model.loss_chunk_size = 7  # many chunks, each fused
    try:
        out = model(batch)
    finally:
        model.loss_chunk_size = 1024
    grads = torch.autograd.grad(out.loss, params)
    ref = naive_loss(model, batch)
    ref_grads = torch.autograd.grad(ref, params)
    assert torch.allclose(out.loss, ref, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert out.num_targets == int(batch.loss_mask[:, 1:, 0].sum())
    assert out.codebook_losses.shape == (model.vocab.num_codebooks,)
    assert torch.isfinite(out.text_loss) and torch.isfinite(out.audio_loss)


def test_training_step_under_bf16_autocast(model):
    """Lightning's bf16-mixed runs the loss under autocast with float32 weights: the head product is
    bf16, the softmax normalisers stay float32, and every trainable weight gets a float32 gradient."""
    batch = pack(samples(model), budget=256, pad_ids=model._stream_pads)
    full = model(batch).loss
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(batch).loss
    grads = torch.autograd.grad(mixed, params, allow_unused=True)
    assert mixed.dtype == torch.float32
    assert abs(mixed.item() - full.item()) < 0.02 * full.item()
    assert grads[params.index(model.stream_embed)] is not None  # the shared codec streams' shift
    assert all(g is None or (g.dtype == torch.float32 and bool(torch.isfinite(g).all())) for g in grads)


def test_packed_and_padded_batches_give_the_same_loss(model):
    items = samples(model)
    packed = model(pack(items, budget=256, pad_ids=model._stream_pads))
    padded = model(collate_padded(items, model._stream_pads))
    assert torch.allclose(packed.loss, padded.loss, atol=1e-5)


def test_loss_falls_when_training(model):
    trained = BagpiperModel.from_config(tiny_config())
    batch = pack(samples(trained), budget=256, pad_ids=trained._stream_pads)
    opt = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(15):
        loss = trained(batch).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.6 * first


def test_embedding_sums_streams_and_ignores_codec_pads(model):
    tokens = model.builder.build(templates.caption_to_audio("x", torch.zeros(8, 2, dtype=torch.long))).tokens
    emb = model.embed_tokens(tokens[None])[0]
    table = model.embed.weight
    pads = model._stream_pads
    manual = table[tokens[:, 0]] + sum(
        table[tokens[:, k]] * (tokens[:, k] != pads[k])[:, None] for k in range(1, tokens.shape[1])
    )
    assert torch.allclose(emb, manual, atol=1e-6)


def test_text_rows_come_from_the_pretrained_lm(model):
    from bagpiper_lib import backbones

    v = model.vocab
    fresh = backbones.build(PRESETS["tiny"]["backbone"])  # the same seeded weights the model was built on
    text = fresh.text_embeddings()[: v.text_vocab_size]
    assert torch.equal(model.embed.weight[v.text_offset : v.codec_offset], text)
    head = fresh.lm_head_weight()[: v.text_vocab_size]
    assert torch.equal(model.head.weight[v.text_offset : v.codec_offset], head)
    assert not model.stream_embed.any()  # zero-initialised per-stream embeddings


@pytest.mark.parametrize("tied", [True, False])
def test_backbone_token_tables_are_freed_and_exported_from_the_model(tmp_path, tied):
    """The backbone's own embedding table and LM head are released once copied (no [V, H] duplicates in
    the parameters or checkpoints); its saved directory is a whole transformers checkpoint holding the
    model's text rows (trained ones included) and the backbone's spare rows."""
    from transformers import AutoModelForCausalLM

    from bagpiper_lib import backbones

    backbone_spec = {**PRESETS["tiny"]["backbone"], "config": {"tie_word_embeddings": tied}}
    cfg = tiny_config(backbone=backbone_spec)
    fresh = backbones.build(backbone_spec)
    torch.manual_seed(0)
    model = BagpiperModel.from_config(cfg)
    v, b = model.vocab, model.backbone
    assert b.released and b.tied_head is tied
    assert not any("embed_tokens" in k or "lm_head" in k for k in model.state_dict())
    table_params = fresh.text_embeddings().numel() * (1 if tied else 2)
    assert sum(p.numel() for p in fresh.parameters()) - sum(p.numel() for p in b.parameters()) == table_params
    with pytest.raises(RuntimeError, match="released"):
        b.text_embeddings()
    with pytest.raises(ValueError, match="token_tables"):
        b.save_pretrained(tmp_path / "bare")
    with torch.no_grad():  # stands in for training: the model's text rows move away from the pretrained ones
        model.embed.weight[v.text_offset : v.codec_offset] += 1.0
        model.head.weight[v.text_offset : v.codec_offset] -= 1.0
    model.save_pretrained(tmp_path / "m")
    assert b.released and b.lm.get_input_embeddings() is None  # released again after the export
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m" / "backbone")
    embed, head = hf.get_input_embeddings().weight, hf.get_output_embeddings().weight
    n = v.text_vocab_size
    assert embed.shape == fresh.text_embeddings().shape
    assert torch.equal(embed[:n], model.embed.weight[v.text_offset : v.codec_offset])
    assert torch.equal(embed[n:], fresh.text_embeddings()[n:])  # spare rows kept
    expected_head = embed[:n] if tied else model.head.weight[v.text_offset : v.codec_offset]
    assert torch.equal(head[:n], expected_head)
    loaded = BagpiperModel.from_pretrained(tmp_path / "m")
    batch = pack(samples(model), budget=256, pad_ids=model._stream_pads)
    assert torch.equal(model(batch).loss, loaded(batch).loss)
    assert loaded.backbone.released


def test_audio_features_replace_placeholders(model):
    s = samples(model)[-1]
    (span,) = s.audio_in
    emb = model.input_embeddings(s.tokens[None], [(0, span)])[0]
    proj, _ = model.adaptor(span.audio[None], torch.tensor([span.audio.shape[0]]))
    assert torch.allclose(emb[span.start : span.start + span.length], proj[0], atol=1e-6)
    short = type(span)(span.start, span.length + 1, span.audio)
    with pytest.raises(ValueError, match="7 placeholder positions but encoder \\+ adaptor produced 6"):
        model.input_embeddings(s.tokens[None], [(0, short)])


def test_per_codebook_head_ablation():
    model = BagpiperModel.from_config(tiny_config(head="per_codebook"))
    assert len(model.codebook_heads) == model.vocab.num_codebooks - 1
    logits, lo = model.stream_logits(torch.randn(3, model.backbone.hidden_size), 2)
    assert logits.shape == (3, model.vocab.block_size) and lo == model.vocab.block_start(2)
    out = model(pack(samples(model), budget=256, pad_ids=model._stream_pads))
    assert torch.isfinite(out.loss)


def test_save_load_round_trip_is_exact(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded = BagpiperModel.from_pretrained(tmp_path / "m")
    assert loaded.load_report.clean
    batch = pack(samples(model), budget=256, pad_ids=model._stream_pads)
    assert torch.equal(model(batch).loss, loaded(batch).loss)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    for name in ("codec", "encoder", "backbone", "tokenizer"):
        assert (tmp_path / "m" / name).is_dir()
    assert not list(tmp_path.glob("m/*.bin")) and not list(tmp_path.glob("m/*.pt"))  # no pickle


def test_partial_load_reports_what_did_not_fit(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    new_codec = {"codec": {"name": "dac", "preset": "tiny"}}
    with pytest.raises(ValueError, match="do not fit the model"):
        BagpiperModel.from_pretrained(tmp_path / "m", overrides=new_codec)
    loaded = BagpiperModel.from_pretrained(tmp_path / "m", overrides=new_codec, strict=False)
    report = loaded.load_report
    assert any(m.startswith("embed.weight") for m in report["mismatched"])
    assert any(m.startswith("stream_embed") for m in report["mismatched"])
    assert not report["missing"] and not report["unexpected"]
    # The adaptor fits and was loaded.
    assert torch.equal(
        loaded.adaptor.state_dict()["proj.0.weight"], model.adaptor.state_dict()["proj.0.weight"]
    )


# ---------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (
            {"adaptor": {"name": "mlp", "output_dim": 7}},
            ValueError,
            "adaptor output_dim=7 does not match the model's 64",
        ),
        (
            {"pattern": {"name": "delay", "num_codebooks": 3}},
            ValueError,
            "pattern num_codebooks=3 but the codec has 8",
        ),
        ({"head": "twin"}, ValueError, "head must be 'shared' or 'per_codebook'"),
        (
            {
                "tokenizer": {"name": "bpe", "preset": "tiny"},
                "backbone": {"name": "qwen3", "preset": "tiny", "config": {"vocab_size": 100}},
            },
            ValueError,
            "tokenizer does not belong to this backbone",
        ),
        ({"codec": {"name": "xcodex"}}, KeyError, "Did you mean 'xcodec'"),
    ],
)
def test_bad_configs(overrides, error, match):
    with pytest.raises(error, match=match):
        BagpiperModel.from_config(tiny_config(**overrides))


def test_unknown_config_key_and_preset():
    with pytest.raises(ValueError, match=r"unknown model config keys \['codek'\]"):
        BagpiperModel.from_config({"codek": {}})
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        BagpiperModel.from_config("huge")


def test_bad_batches(model):
    batch = pack(samples(model), budget=256, pad_ids=model._stream_pads)
    with pytest.raises(ValueError, match="batch needs tokens"):
        model({"tokens": batch.tokens})
    with pytest.raises(ValueError, match="tokens have 3 streams, the model has K=8"):
        model.embed_tokens(batch.tokens[..., :3])
    with pytest.raises(ValueError, match="token ids must lie in"):
        model.embed_tokens(batch.tokens + model.vocab.size)


def test_the_same_config_builds_the_same_weights():
    cfg = {
        **PRESETS["tiny"],
        "encoder": {"name": "mel", "preset": "tiny"},
        "adaptor": {"name": "mlp", "downsample": 4},
    }
    a, b = BagpiperModel.from_config(cfg), BagpiperModel.from_config(cfg)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    c = BagpiperModel.from_config({**cfg, "seed": 1})
    assert not torch.equal(a.embed.weight, c.embed.weight)
    assert not torch.equal(a.adaptor.state_dict()["proj.0.weight"], c.adaptor.state_dict()["proj.0.weight"])


def test_transformer_adaptor_builds_trains_and_round_trips(tmp_path):
    """The context adaptor is a spec away: sized from the encoder and backbone, its weights saved."""
    model = BagpiperModel.from_config(
        tiny_config(adaptor={"name": "transformer", "num_layers": 1, "num_heads": 2})
    )
    assert model.adaptor.input_dim == model.encoder.output_dim
    assert model.adaptor.output_dim == model.backbone.hidden_size
    batch = pack(samples(model), budget=256, pad_ids=model._stream_pads)
    model(batch).loss.backward()
    assert model.adaptor.layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "m")
    loaded = BagpiperModel.from_pretrained(tmp_path / "m")
    assert loaded.load_report.clean and type(loaded.adaptor) is type(model.adaptor)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    model.eval(), loaded.eval()
    assert torch.equal(model(batch).loss, loaded(batch).loss)


class _HostReads(torch.overrides.TorchFunctionMode):
    """Records each tensor call that makes the host wait for the device (a CUDA sync: a value read, a
    boolean-mask or list index), with the project function that made it."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero"}

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        masked = name == "__getitem__" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
        )
        listed = name == "__getitem__" and any(  # a list index is copied to the device: a sync on CUDA
            isinstance(i, list) for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
        )
        if name in self.READS or masked or listed:
            import traceback

            frames = [f for f in traceback.extract_stack() if "bagpiper_lib" in f.filename]
            self.sites.append(
                f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].name}" if frames else "?"
            )
        return func(*args, **(kwargs or {}))


def test_training_step_reads_the_host_twice_in_model_and_loss_both_before_the_backbone(model, monkeypatch):
    """The model and the loss ask the device for values twice per step (the batch checks with the
    target count, then the loss plan), both before the backbone runs: on a GPU the whole forward and
    the loss are queued without a wait. (The backbone's own reads: its position check and the packed
    attention's offsets; an audio input's encoder adds its own.)"""
    batch = pack(samples(model)[:3], budget=256, pad_ids=model._stream_pads)  # text and audio out
    reads = _HostReads()
    at_backbone = []
    forward = type(model.backbone).forward

    def spy(self, *args, **kwargs):
        at_backbone.append(len(reads.sites))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.backbone), "forward", spy)
    with reads:
        out = model(batch)
        out.loss.backward()
    own = [s for s in reads.sites if s.startswith(("bagpiper.py", "loss.py"))]
    assert own == ["bagpiper.py:forward", "loss.py:plan_loss"], reads.sites
    assert len(reads.sites) < 8, reads.sites
    assert reads.sites[: at_backbone[0]] == own  # nothing of the model's or the loss's after the backbone
    model.zero_grad(set_to_none=True)
