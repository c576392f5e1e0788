"""The fused chunked loss against plain autograd over materialised logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bagpiper_lib.model import loss as loss_module
from bagpiper_lib.model.loss import StreamHead, StreamTargets, multistream_loss

CODEC, BLOCK, K, H = 20, 5, 3, 8
VOCAB = CODEC + K * BLOCK


def problem(seed: int = 0, positions: int = 23):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(positions, H, generator=gen, requires_grad=True)
    weight = torch.randn(VOCAB, H, generator=gen, requires_grad=True)
    shift = torch.randn(K - 1, H, generator=gen, requires_grad=True)
    own = [torch.randn(BLOCK, H, generator=gen, requires_grad=True) for _ in range(K - 1)]
    audio = torch.rand(positions, generator=gen) < 0.5
    tokens = torch.empty(positions, K, dtype=torch.long)
    tokens[:, 0] = torch.where(
        audio,
        CODEC + torch.randint(BLOCK, (positions,), generator=gen),
        torch.randint(CODEC, (positions,), generator=gen),
    )
    for k in range(1, K):
        tokens[:, k] = CODEC + k * BLOCK + torch.randint(BLOCK, (positions,), generator=gen)
    mask = torch.zeros(positions, K, dtype=torch.bool)
    mask[:, 0] = True
    mask[audio, 1:] = True
    return hidden, weight, shift, own, tokens, mask


def shared_heads(weight, shift):
    return [StreamHead(weight, 0, VOCAB, 0)] + [
        StreamHead(weight, CODEC, VOCAB, CODEC, shift=shift, shift_row=k - 1) for k in range(1, K)
    ]


def own_heads(weight, own):
    return [StreamHead(weight, 0, VOCAB, 0)] + [
        StreamHead(own[k - 1], 0, BLOCK, CODEC + k * BLOCK) for k in range(1, K)
    ]


def reference(hidden, heads, tokens, mask, codec_weight):
    """Plain autograd: every logit materialised, F.cross_entropy."""
    total = hidden.new_zeros(())
    for k, head in enumerate(heads):
        logits = head.logits(hidden)
        ce = F.cross_entropy(
            logits, (tokens[:, k] - head.offset).clamp(0, logits.shape[1] - 1), reduction="none"
        )
        weight = torch.where(tokens[:, k] >= CODEC, codec_weight, 1.0)
        total = total + (ce * weight * mask[:, k]).sum()
    return total / mask[:, 0].sum()


@pytest.mark.parametrize("layout", ["shared", "own", "shared-wide-bias"])
@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_fused_loss_and_gradients_equal_plain_autograd(layout, chunk):
    hidden, weight, shift, own, tokens, mask = problem()
    # The shared codec streams normally share one exponential (biases e_k W^T spread over < 40 nats);
    # a wide spread takes the per-stream path. Both must equal autograd.
    if layout == "shared-wide-bias":
        shift = (12.0 * shift).detach().requires_grad_()
    biases = (shift @ weight[CODEC:].t()).detach()
    spread = float((biases.amax(1) - biases.amin(1)).max())
    assert (spread > loss_module._MAX_BIAS_SPREAD) == (layout == "shared-wide-bias")
    heads = own_heads(weight, own) if layout == "own" else shared_heads(weight, shift)
    params = [hidden, weight] + (own if layout == "own" else [shift])
    out = multistream_loss(
        StreamTargets(hidden, tokens, mask), heads, codec_offset=CODEC, codec_weight=0.25, chunk_size=chunk
    )
    grads = torch.autograd.grad(3.0 * out.loss, params)  # the incoming gradient scales the stored ones
    ref = reference(hidden, heads, tokens, mask, 0.25)
    ref_grads = torch.autograd.grad(3.0 * ref, params)
    torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert out.num_targets == int(mask[:, 0].sum())


def test_frozen_head_gets_no_gradient_and_no_grad_mode_gives_the_same_value():
    hidden, weight, shift, _, tokens, mask = problem(1)
    weight.requires_grad_(False)
    heads = shared_heads(weight, shift)
    targets = StreamTargets(hidden, tokens, mask)
    out = multistream_loss(targets, heads, codec_offset=CODEC, codec_weight=0.25)
    out.loss.backward()
    assert weight.grad is None and hidden.grad is not None and shift.grad is not None
    with torch.no_grad():
        again = multistream_loss(targets, heads, codec_offset=CODEC, codec_weight=0.25)
    assert not again.loss.requires_grad
    torch.testing.assert_close(again.loss, out.loss.detach())


def test_report_means_and_accuracies():
    hidden, weight, shift, _, tokens, mask = problem(2)
    heads = shared_heads(weight, shift)
    out = multistream_loss(StreamTargets(hidden, tokens, mask), heads, codec_offset=CODEC, codec_weight=0.25)
    with torch.no_grad():
        logits0 = heads[0].logits(hidden)
        text = mask[:, 0] & (tokens[:, 0] < CODEC)
        ce0 = F.cross_entropy(logits0[text], tokens[text, 0], reduction="none")
        hits = (logits0[text].argmax(-1) == tokens[text, 0]).float()
    torch.testing.assert_close(out.text_loss, ce0.mean())
    torch.testing.assert_close(out.text_accuracy, hits.mean())
    assert out.codebook_losses.shape == (K,) and out.codebook_accuracies.shape == (K,)


def test_target_outside_a_stream_is_named():
    hidden, weight, shift, _, tokens, mask = problem(3)
    tokens[0, 1], mask[0, 1] = 3, True  # a text id in a codec stream
    with pytest.raises(ValueError, match="target id 3 of stream 1 lies outside"):
        multistream_loss(
            StreamTargets(hidden, tokens, mask),
            shared_heads(weight, shift),
            codec_offset=CODEC,
            codec_weight=1.0,
        )
    with pytest.raises(ValueError, match="stream heads"):
        multistream_loss(
            StreamTargets(hidden, tokens, mask),
            shared_heads(weight, shift)[:2],
            codec_offset=CODEC,
            codec_weight=1.0,
        )
