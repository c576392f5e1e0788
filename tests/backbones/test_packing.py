"""Packed rows: samples sharing a row must not see each other, whatever the attention kernel."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from bagpiper_lib.backbones import packing
from tests.backbones.conftest import embeds, positions, tiny

LENGTHS = (5, 3, 4)


def run_alone(backbone, x: torch.Tensor, lengths=LENGTHS) -> torch.Tensor:
    """Each sample of a packed row run on its own, concatenated back ``[1, T, H]``."""
    outs, start = [], 0
    for n in lengths:
        outs.append(backbone(x[:, start : start + n], torch.arange(n, device=x.device)[None]))
        start += n
    return torch.cat(outs, dim=1)


def projection(out: torch.Tensor) -> torch.Tensor:
    """A scalar with well-conditioned input gradients: ``out`` dotted with a fixed random tensor.

    (``out.square().sum()`` is not one: the backbone's output is RMS-normalised, so its sum of squares
    is nearly constant and its gradient is rounding noise, about 1e-4 of this one's norm.)"""
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(123))
    return (out.float() * weights.to(out.device)).sum()


def test_segment_ids_and_mask_layout():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [4, 5, 6, 7, 8, 9, 0, 1, 2]])
    assert packing.segment_ids(pos).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0, 1, 1, 1]]
    mask = packing.block_causal_mask(packing.segment_ids(pos))
    assert mask.shape == (2, 1, 9, 9)
    assert mask[0, 0, 4].tolist() == [False, False, False, True, True, False, False, False, False]
    assert mask[1, 0, 5].tolist() == [True] * 6 + [False] * 3
    # sliding window 2: each token sees itself and its predecessor inside its sample
    window = packing.block_causal_mask(packing.segment_ids(pos), sliding_window=2)
    assert window[0, 0, 8].tolist() == [False] * 7 + [True, True]
    additive = packing.additive_mask(mask, torch.float32)
    assert additive[0, 0, 4, 3] == 0 and additive[0, 0, 4, 0] == torch.finfo(torch.float32).min


def test_flex_mask_mod_matches_dense_mask():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [4, 5, 6, 7, 8, 9, 0, 1, 2]])
    segments = packing.segment_ids(pos)
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[1, -2:] = False
    for window in (None, 2):
        mod = packing.block_causal_mask_mod(segments, sliding_window=window, padding_mask=padding)
        b, h, q, k = torch.arange(2), torch.arange(1), torch.arange(9), torch.arange(9)
        dense = mod(
            b[:, None, None, None], h[None, :, None, None], q[None, None, :, None], k[None, None, None, :]
        )
        expected = packing.block_causal_mask(segments, sliding_window=window, padding_mask=padding)
        assert torch.equal(dense, expected)


def packed_rows(length: int, *rows: str | int, seed: int = 0) -> torch.Tensor:
    """position_ids ``[len(rows), length]``: each row is ``"random"`` (samples of 1 to 400 tokens),
    ``"one"`` (a single sample) or ``"tokens"`` (every token a sample of its own)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for row in rows:
        if row == "one":
            out.append(torch.arange(length))
        elif row == "tokens":
            out.append(torch.zeros(length, dtype=torch.long))
        else:
            pieces, total = [], 0
            while total < length:
                n = int(torch.randint(1, 401, (), generator=gen))
                pieces.append(torch.arange(n))
                total += n
            out.append(torch.cat(pieces)[:length])
    return torch.stack(out)


FLEX_LAYOUTS = [
    (128, ("random",)),
    (128, ("one", "tokens")),
    (300, ("random", "random")),
    (300, ("one", "random", "tokens")),
    (512, ("random",)),
    (512, ("random", "one", "tokens")),
    (1000, ("random", "random", "random")),
    (1000, ("one", "tokens")),
]


def block_sets(num_blocks: torch.Tensor, indices: torch.Tensor) -> list[set[int]]:
    """The block indices listed per (batch, head, query block): the first ``num_blocks`` entries."""
    flat_num, flat_idx = num_blocks.reshape(-1).tolist(), indices.reshape(-1, indices.shape[-1]).tolist()
    return [set(row[:n]) for n, row in zip(flat_num, flat_idx)]


@pytest.mark.parametrize("length,rows", FLEX_LAYOUTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_flex_block_mask_from_segments_equals_create_block_mask(length, rows, seed):
    """Packed rows without a window or padding: the BlockMask read off the segment layout is the one
    ``create_block_mask`` gets by evaluating the mask on the whole grid (same counts, same blocks,
    same dense layout; here even the same padded index tensors), and its blocks cover the mask."""
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    segments = packing.segment_ids(packed_rows(length, *rows, seed=seed))
    batch = len(rows)
    ours = packing.flex_block_mask(segments)
    mod = packing.block_causal_mask_mod(segments)
    reference = create_block_mask(mod, B=batch, H=None, Q_LEN=length, KV_LEN=length, device="cpu")
    assert ours.seq_lengths == reference.seq_lengths == (length, length)
    assert tuple(ours.BLOCK_SIZE) == tuple(reference.BLOCK_SIZE) == (128, 128)
    assert ours.mask_mod.__code__ is mod.__code__  # block_causal_mask_mod's, over the same segments
    for count, index in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        assert torch.equal(getattr(ours, count), getattr(reference, count)), count
        assert getattr(ours, index).shape == getattr(reference, index).shape, index
        assert block_sets(getattr(ours, count), getattr(ours, index)) == block_sets(
            getattr(reference, count), getattr(reference, index)
        ), index
    # the query-major tables as well, and every table contiguous int32 like create_block_mask's
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
                 "q_indices", "full_q_num_blocks", "full_q_indices"):  # fmt: skip
        got = getattr(ours, name)
        assert torch.equal(got, getattr(reference, name)), name
        assert got.dtype == torch.int32 and got.is_contiguous(), name
    assert torch.equal(ours.to_dense(), reference.to_dense())
    # semantics, independently of create_block_mask: every allowed pair lies in a listed block, and
    # every pair of a full block is allowed
    dense = packing.block_causal_mask(segments)

    def tokens(blocks: torch.Tensor) -> torch.Tensor:
        return blocks.repeat_interleave(128, -2).repeat_interleave(128, -1)[..., :length, :length].bool()

    assert not (dense & ~tokens(ours.to_dense())).any()
    full = BlockMask.from_kv_blocks(ours.full_kv_num_blocks, ours.full_kv_indices, seq_lengths=(length,) * 2)
    assert not (tokens(full.to_dense()) & ~dense).any()
    if "one" in rows and length >= 256:
        assert int(ours.full_kv_num_blocks.sum()) > 0  # the layouts do exercise full blocks


class NoHostSync(torch.overrides.TorchFunctionMode):
    """Raises on every tensor op that makes the host wait for the device: reading a value
    (``item``, ``tolist``, ``bool()``, ``int()``, ``float()``, ``__index__``), ``nonzero`` and
    indexing with a boolean mask (its output size depends on the data)."""

    SYNCS = {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__index__,
        torch.Tensor.nonzero,
        torch.nonzero,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCS:
            raise AssertionError(f"host sync: {func.__name__}")
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                raise AssertionError(f"host sync: {func.__name__} with a boolean mask")
        return func(*args, **(kwargs or {}))


def test_flex_block_mask_from_segments_makes_no_host_sync():
    x = torch.arange(4)
    for sync in (
        x[1].item,
        x.tolist,
        lambda: bool(x[1]),
        lambda: int(x[1]),
        lambda: float(x[1]),
        lambda: range(x[1]),
        x.nonzero,
        lambda: torch.nonzero(x),
        lambda: x[x > 1],
        lambda: x.clone().__setitem__(x > 1, 0),
    ):
        with pytest.raises(AssertionError, match="host sync"), NoHostSync():
            sync()
    from torch.nn.attention.flex_attention import create_block_mask

    segments = packing.segment_ids(packed_rows(1000, "random", "one", "tokens"))
    with NoHostSync():
        mask = packing.flex_block_mask(segments)
    reference = create_block_mask(packing.block_causal_mask_mod(segments), 3, None, 1000, 1000, "cpu")
    assert torch.equal(mask.to_dense(), reference.to_dense())


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_with_the_segment_block_mask_equals_dense_sdpa():
    """Eager flex attention (CPU, float32, forward) with the segment-built BlockMask gives the dense
    block-causal SDPA output. (Eager flex attention evaluates the ``mask_mod`` on every pair; the block
    structure itself is checked against ``create_block_mask`` above.)"""
    from torch.nn.attention.flex_attention import flex_attention

    segments = packing.segment_ids(packed_rows(300, "random", "one", "tokens", seed=3))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 300, 16, generator=gen) for _ in range(3))
    out = flex_attention(q, k, v, block_mask=packing.flex_block_mask(segments))
    reference = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=packing.block_causal_mask(segments)
    )
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


def test_varlen_offsets_cover_rows_and_samples():
    pos = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    kwargs = packing.varlen_kwargs(pos)
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 10]
    assert kwargs["cu_seq_lens_q"].dtype == torch.int32
    assert kwargs["max_length_q"] == 5


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_unpacked(entry, attn):
    backbone = tiny(entry, attn_implementation=attn)
    x = embeds(1, sum(LENGTHS))
    packed = backbone(x, positions(*LENGTHS))
    torch.testing.assert_close(packed, run_alone(backbone, x), atol=1e-5, rtol=0)


def test_packed_batch_of_rows_with_different_layouts():
    backbone = tiny("qwen3")
    x = embeds(2, 8)
    pos = torch.stack([positions(5, 3)[0], positions(2, 6)[0]])
    out = backbone(x, pos)
    torch.testing.assert_close(out[:1], run_alone(backbone, x[:1], (5, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1:], run_alone(backbone, x[1:], (2, 6)), atol=1e-5, rtol=0)


def test_isolation_matters():
    """Without the block-diagonal mask the later samples would read the earlier ones."""
    backbone = tiny("qwen3")
    x, pos = embeds(1, sum(LENGTHS)), positions(*LENGTHS)
    alone = run_alone(backbone, x)
    first = LENGTHS[0]
    with torch.no_grad():
        # 1. transformers given a cache skips its packing inference and attends across samples
        leaky = backbone.body(inputs_embeds=x, position_ids=pos, cache=DynamicCache(), use_cache=True)
        # 2. a plain causal mask passed by hand (used as given) does the same
        causal = torch.ones(1, 1, x.shape[1], x.shape[1], dtype=torch.bool).tril()
        plain = backbone(x, pos, attention_mask=causal)
    for out in (leaky.last_hidden_state, plain):
        torch.testing.assert_close(out[:, :first], alone[:, :first], atol=1e-5, rtol=0)
        assert (out[:, first:] - alone[:, first:]).abs().max() > 1e-3
    torch.testing.assert_close(backbone(x, pos), alone, atol=1e-5, rtol=0)


def test_packing_combined_with_padding_mask():
    backbone = tiny("llama")
    x = embeds(1, 10)
    pos = torch.cat([positions(5, 3)[0], torch.tensor([0, 0])])[None]  # two pad slots at the end
    pad = torch.ones(1, 10, dtype=torch.long)
    pad[:, -2:] = 0
    out = backbone(x, pos, attention_mask=pad)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :8], run_alone(backbone, x[:, :8], (5, 3)), atol=1e-5, rtol=0)


def test_packed_with_sliding_window_layers():
    config = {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1}
    backbone = tiny("hf_causal_lm", config=config)
    assert backbone.config.layer_types == ["full_attention", "sliding_attention"]
    x = embeds(1, sum(LENGTHS))
    torch.testing.assert_close(backbone(x, positions(*LENGTHS)), run_alone(backbone, x), atol=1e-5, rtol=0)


def _fake_varlen_flash(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Reference varlen attention: causal SDPA inside each [cu_seqlens[i], cu_seqlens[i+1]) span."""
    cu = kwargs["cu_seq_lens_q"]
    assert attention_mask is None and query.shape[0] == 1, "varlen path expects one flattened row"
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = torch.empty_like(query)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        out[:, :, start:end] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            is_causal=True,
            scale=scaling,
        )
    return out.transpose(1, 2), None


def test_flash_path_passes_varlen_offsets(monkeypatch):
    """The flash_attention_2 route (flattened batch + cu_seqlens), run with a reference kernel."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    backbone = tiny("qwen3")
    x = embeds(2, 8)
    pos = torch.stack([positions(5, 3)[0], positions(2, 6)[0]])
    expected = backbone(x, pos)
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, "flash_attention_2", _fake_varlen_flash)
    monkeypatch.setattr(backbone.lm.config, "_attn_implementation", "flash_attention_2")
    torch.testing.assert_close(backbone(x, pos), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="takes no 2D attention_mask"):
        backbone(x, pos, attention_mask=torch.ones(2, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention compiles for ~1 min on CPU")
def test_flex_attention_packed_on_gpu():
    backbone = tiny("qwen3", attn_implementation="flex_attention").cuda()
    reference = tiny("qwen3").cuda()
    x = embeds(1, sum(LENGTHS)).cuda()
    pos = positions(*LENGTHS).cuda()
    torch.testing.assert_close(backbone(x, pos), reference(x, pos), atol=1e-4, rtol=0)


def test_sdpa_packed_rows_run_per_sample_without_a_dense_mask(monkeypatch):
    """Default sdpa: packed rows take the per-sample kernel (no T x T mask is built), outputs and input
    gradients equal each sample run alone."""
    backbone = tiny("qwen3")
    assert backbone.attn_implementation == "sdpa"
    assert backbone.lm.config._attn_implementation == packing.SEGMENTED_SDPA

    def no_dense_mask(*args, **kwargs):
        raise AssertionError("the dense block-diagonal mask was built")

    monkeypatch.setattr(packing, "block_causal_mask", no_dense_mask)
    x = embeds(1, sum(LENGTHS)).requires_grad_(True)
    packed = backbone(x, positions(*LENGTHS))
    (grad_packed,) = torch.autograd.grad(projection(packed), x)
    x_alone = x.detach().clone().requires_grad_(True)
    alone = run_alone(backbone, x_alone)
    (grad_alone,) = torch.autograd.grad(projection(alone), x_alone)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_packed, grad_alone, atol=1e-5, rtol=0)
    # with a 2D padding mask the sdpa path falls back to the dense mask (which this test forbids)
    with pytest.raises(AssertionError, match="dense block-diagonal mask"):
        backbone(x.detach(), positions(*LENGTHS), attention_mask=torch.ones(1, sum(LENGTHS)))


def test_segmented_kernel_is_transformers_sdpa_without_offsets():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=gen)
    k, v = torch.randn(2, 2, 6, 8, generator=gen), torch.randn(2, 2, 6, 8, generator=gen)
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    mask[1, :, :, 0] = False
    mask[1, :, 0, 0] = True
    ours, _ = packing.segmented_sdpa_forward(module, q, k, v, mask, scaling=0.3)
    reference, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert torch.equal(ours, reference)
    # with offsets: each span is causal attention of its own, grouped heads repeated
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    spans, _ = packing.segmented_sdpa_forward(
        module, q[:1], k[:1], v[:1], None, scaling=0.3, cu_seq_lens_q=cu
    )
    for start, end in ((0, 2), (2, 6)):
        alone, _ = sdpa_attention_forward(
            module, q[:1, :, start:end], k[:1, :, start:end], v[:1, :, start:end], None, scaling=0.3
        )
        torch.testing.assert_close(spans[:, start:end], alone, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="one flattened row"):
        packing.segmented_sdpa_forward(module, q, k, v, None, cu_seq_lens_q=cu)
    for bad in ([0, 2, 5], [1, 2, 6]):  # offsets must cover the whole row, no token left out
        with pytest.raises(ValueError, match=r"from 0 to the row's 6 tokens, got \[" + str(bad[0])):
            packing.segmented_sdpa_forward(module, q[:1], k[:1], v[:1], None, cu_seq_lens_q=torch.tensor(bad))


def test_per_sample_path_gradients_equal_each_sample_alone():
    """The per-sample path splits q/k/v once (its backward is one cat, not a full-row fill per sample):
    the input gradients equal those of each sample's attention computed alone."""
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 1, True
    gen = torch.Generator().manual_seed(1)
    bounds = [0, 3, 4, 9, 16]
    q, k, v = (torch.randn(1, 2, 16, 8, generator=gen, requires_grad=True) for _ in range(3))
    weight = torch.randn(1, 16, 2, 8, generator=gen)
    out, _ = packing.segmented_sdpa_forward(
        module, q, k, v, None, cu_seq_lens_q=torch.tensor(bounds), segment_bounds=bounds
    )
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    for start, end in zip(bounds[:-1], bounds[1:]):
        piece = [t.detach()[:, :, start:end].requires_grad_() for t in (q, k, v)]
        alone = torch.nn.functional.scaled_dot_product_attention(*piece, is_causal=True).transpose(1, 2)
        torch.testing.assert_close(out[:, start:end], alone, rtol=0, atol=0)
        expected = torch.autograd.grad((alone * weight[:, start:end]).sum(), piece)
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got[:, :, start:end], want, rtol=0, atol=1e-6)


def test_varlen_kernel_applies_only_to_cuda_half_precision(monkeypatch):
    """The fused varlen kernel is chosen for CUDA fp16/bf16 without dropout, never on the CPU or in
    float32, and not at all when switched off."""
    cpu = torch.zeros(1, 2, 3, 8)
    assert packing._varlen_kernel(cpu, 0.0) is None
    assert packing._varlen_kernel(cpu.bfloat16(), 0.0) is None

    class FakeCuda:
        is_cuda = True

        def __init__(self, dtype, head_dim=8):
            self.dtype, self.shape = dtype, (1, 2, 3, head_dim)

    varlen = pytest.importorskip("torch.nn.attention.varlen")
    assert packing._varlen_kernel(FakeCuda(torch.bfloat16), 0.0) is varlen.varlen_attn
    assert packing._varlen_kernel(FakeCuda(torch.float16), 0.0) is varlen.varlen_attn
    assert packing._varlen_kernel(FakeCuda(torch.float32), 0.0) is None
    assert packing._varlen_kernel(FakeCuda(torch.bfloat16), 0.1) is None
    assert packing._varlen_kernel(FakeCuda(torch.bfloat16, head_dim=512), 0.0) is None
    monkeypatch.setattr(packing, "USE_VARLEN_KERNEL", False)
    assert packing._varlen_kernel(FakeCuda(torch.bfloat16), 0.0) is None


def per_sample_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
    """A reference for torch's varlen kernel on the CPU: causal SDPA per sample, ``(N, heads, head_dim)``
    tensors, grouped key/value heads allowed."""
    bounds = cu_q.tolist()
    return torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(
                *(t[s:e].transpose(0, 1) for t in (q, k, v)), is_causal=True, scale=scale, enable_gqa=True
            ).transpose(0, 1)
            for s, e in zip(bounds[:-1], bounds[1:])
        ]
    )


def test_varlen_kernel_call_matches_the_per_sample_loop(monkeypatch):
    """The fused path hands the kernel ``(N, heads, head_dim)`` queries and ``(N, kv_heads, head_dim)``
    keys and values (grouped heads as they are, :data:`packing.VARLEN_GQA`; repeated to the query heads
    when that is off), int32 offsets, the longest sample and a causal window, and its output layout
    equals the per-sample loop's (checked with a reference kernel that runs causal SDPA per sample)."""
    calls = []

    def reference_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        calls.append((q.shape, k.shape, v.shape, cu_q.dtype, cu_q.tolist(), max_q, max_k, window_size))
        assert torch.equal(cu_q, cu_k) and window_size == (-1, 0)
        return per_sample_kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size)

    backbone = tiny("qwen3")
    x = embeds(1, sum(LENGTHS))
    pos = positions(*LENGTHS)
    expected = backbone(x, pos)
    monkeypatch.setattr(packing, "_varlen_kernel", lambda query, dropout: reference_kernel)
    config = backbone.lm.config
    n, heads, kv_heads, head_dim = (
        sum(LENGTHS),
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
    )
    assert kv_heads < heads  # the tiny preset is grouped-query
    for grouped, kv in ((True, kv_heads), (False, heads)):
        monkeypatch.setattr(packing, "VARLEN_GQA", grouped)
        calls.clear()
        torch.testing.assert_close(backbone(x, pos), expected, atol=1e-5, rtol=0)
        q_shape, kv_shape = (n, heads, head_dim), (n, kv, head_dim)
        assert calls[0] == (q_shape, kv_shape, kv_shape, torch.int32, [0, 5, 8, 12], 5, 5, (-1, 0))
        assert len(calls) == config.num_hidden_layers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused varlen kernel runs on CUDA only")
def test_varlen_kernel_on_gpu_matches_each_sample_alone():
    """bf16 on CUDA: the fused kernel's outputs and input gradients equal each sample run alone."""
    pytest.importorskip("torch.nn.attention.varlen")
    backbone = tiny("qwen3").cuda().to(torch.bfloat16)
    x = embeds(2, sum(LENGTHS)).cuda().to(torch.bfloat16).requires_grad_(True)
    pos = positions(*LENGTHS).expand(2, -1).cuda()
    packed = backbone(x, pos)
    (grad_packed,) = torch.autograd.grad(projection(packed), x)
    x_alone = x.detach().clone().requires_grad_(True)
    alone = torch.cat([run_alone(backbone, x_alone[i : i + 1]) for i in range(2)])
    (grad_alone,) = torch.autograd.grad(projection(alone), x_alone)
    for what, got, want in (("outputs", packed, alone), ("input gradients", grad_packed, grad_alone)):
        got, want = got.float(), want.float()  # bf16 rounding: compare by relative norm
        assert float((got - want).norm() / want.norm()) < 2e-2, what


def test_compiled_layers_equal_eager_layers_on_packed_rows(monkeypatch):
    """Regional compilation (each decoder layer through torch.compile; aot_eager here, inductor on a
    GPU) gives the eager outputs and input gradients on packed rows, keeps the parameter names, and
    ``compile_layers(False)`` restores the eager layers."""
    import torch._dynamo
    from torch._dynamo.backends.registry import lookup_backend

    torch._dynamo.reset()
    graphs = []

    def counting(graph, example_inputs):  # aot_eager, counting the graphs it is given
        graphs.append(graph)
        return lookup_backend("aot_eager")(graph, example_inputs)

    eager = tiny("qwen3").train()
    compiled = tiny("qwen3", compile_layers={"backend": counting}).train()
    # with activation checkpointing too (the stage configs turn it on)
    checkpointed = tiny("qwen3", gradient_checkpointing=True, compile_layers={"backend": "aot_eager"}).train()
    assert compiled.layers_compiled and all(
        layer._compiled_call_impl is not None for layer in compiled.body.layers
    )
    assert list(compiled.state_dict()) == list(eager.state_dict())
    results = []
    for backbone in (eager, compiled, checkpointed):
        x = embeds(1, sum(LENGTHS)).requires_grad_(True)
        out = backbone(x, positions(*LENGTHS))
        results.append((out, *torch.autograd.grad(projection(out), x)))
    for got in results[1:]:
        torch.testing.assert_close(got[0], results[0][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(got[1], results[0][1], atol=1e-5, rtol=0)
    assert graphs, "no layer went through torch.compile"
    # the CUDA path under compilation: one kernel call per layer with the offsets (a reference kernel)
    calls = []

    def reference_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        calls.append(max_q)
        return per_sample_kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size)

    monkeypatch.setattr(packing, "_varlen_kernel", lambda query, dropout: reference_kernel)
    x = embeds(1, sum(LENGTHS))
    torch.testing.assert_close(
        compiled(x, positions(*LENGTHS)), eager(x, positions(*LENGTHS)), atol=1e-5, rtol=0
    )
    assert calls == [5] * (2 * len(compiled.body.layers))  # eager's layers and the compiled ones
    compiled.compile_layers(False)
    assert not compiled.layers_compiled and all(
        layer._compiled_call_impl is None for layer in compiled.body.layers
    )
    with pytest.raises(ValueError, match="unknown torch.compile option.*'modes'"):
        compiled.compile_layers(modes="max-autotune")
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor's GPU kernels need CUDA")
def test_compiled_layers_on_gpu_match_eager_with_the_varlen_kernel():
    """bf16 on CUDA, inductor: compiled layers around the fused varlen kernel give the eager layers'
    packed outputs and input gradients."""
    import torch._dynamo

    torch._dynamo.reset()
    eager = tiny("qwen3").cuda().to(torch.bfloat16).train()
    compiled = tiny("qwen3").cuda().to(torch.bfloat16).train()
    compiled.compile_layers()
    pos = positions(*LENGTHS).expand(2, -1).cuda()
    results = []
    for backbone in (eager, compiled):
        x = embeds(2, sum(LENGTHS)).cuda().to(torch.bfloat16).requires_grad_(True)
        out = backbone(x, pos)
        results.append((out, *torch.autograd.grad(projection(out), x)))
    for what, got, want in zip(("outputs", "input gradients"), results[1], results[0]):
        got, want = got.float(), want.float()  # bf16: fused kernels round differently, so relative
        assert float((got - want).norm() / want.norm()) < 2e-2, what
    torch._dynamo.reset()


def _saved_activation_bytes(backbone, x, pos) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Bytes the backbone saves for backward (parameters excluded), its output and input gradient."""
    params = {p.untyped_storage().data_ptr() for p in backbone.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    x = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = backbone(x, pos)
    (grad,) = torch.autograd.grad(projection(out), x)
    return total, out.detach(), grad


def test_compiled_layers_activation_memory_budget_recomputes_instead_of_saving():
    """``activation_memory_budget`` below 1 makes the compiled layers save fewer activation bytes for
    backward (the partitioner recomputes them; ``aot_eager_decomp_partition`` is inductor's
    partitioner without code generation), with the eager outputs and input gradients, and leaves the
    process's default budget alone."""
    import torch._dynamo
    from torch._functorch import config as functorch_config

    config = {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    x, pos = embeds(1, 96, hidden=128), positions(40, 32, 24)
    eager = tiny("qwen3", config=config).train()
    _, want_out, want_grad = _saved_activation_bytes(eager, x, pos)
    saved = {}
    for budget in (1.0, 0.3):
        torch._dynamo.reset()
        backbone = tiny("qwen3", config=config).train()
        backbone.compile_layers(backend="aot_eager_decomp_partition", activation_memory_budget=budget)
        _saved_activation_bytes(backbone, x, pos)  # compiles
        saved[budget], out, grad = _saved_activation_bytes(backbone, x, pos)
        torch.testing.assert_close(out, want_out, atol=1e-5, rtol=0)
        torch.testing.assert_close(grad, want_grad, atol=1e-5, rtol=0)
    assert saved[0.3] < 0.9 * saved[1.0], saved
    assert functorch_config.activation_memory_budget == 1.0
    torch._dynamo.reset()


@pytest.mark.parametrize("budget", [0, 1.5, "half", True])
def test_compiled_layers_activation_memory_budget_outside_0_1_is_refused(budget):
    with pytest.raises(ValueError, match=r"activation_memory_budget must be a number in \(0, 1\]"):
        tiny("qwen3").compile_layers(activation_memory_budget=budget)


def test_compiled_layers_activation_memory_budget_names_a_torch_without_it(monkeypatch):
    from torch._functorch import config as functorch_config

    monkeypatch.delattr(functorch_config, "activation_memory_budget")
    with pytest.raises(ValueError, match="activation_memory_budget needs a torch whose partitioner has it"):
        tiny("qwen3").compile_layers(activation_memory_budget=0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex attention's backward has no CPU kernel")
@pytest.mark.parametrize("compiled", [False, True])
def test_flex_attention_trains_packed_rows_like_per_sample_sdpa_on_gpu(compiled):
    """flex_attention with the segment-built block mask (several 128-token blocks, a short last one,
    samples across block edges): packed outputs and input gradients equal the sdpa path's, with eager
    and with compiled decoder layers."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    flex = tiny("qwen3", attn_implementation="flex_attention").cuda().train()
    torch.manual_seed(0)
    reference = tiny("qwen3").cuda().train()
    reference.load_state_dict(flex.state_dict())
    if compiled:
        flex.compile_layers()
    lengths = (100, 60, 200, 30, 150)  # 540 positions: 5 blocks, the last one short
    pos = torch.cat([positions(*lengths), positions(*lengths[::-1])]).cuda()
    results = []
    for backbone in (reference, flex):
        x = embeds(2, sum(lengths)).cuda().requires_grad_(True)
        out = backbone(x, pos)
        results.append((out, *torch.autograd.grad(projection(out), x)))
    for what, got, want in zip(("outputs", "input gradients"), results[1], results[0]):
        assert float((got - want).norm() / want.norm()) < 1e-4, what
    torch._dynamo.reset()
