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


@pytest.mark.parametrize("row_kernel", ["never", "always"])
@pytest.mark.parametrize("layout", ["shared", "own", "shared-wide-bias"])
@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_fused_loss_and_gradients_equal_plain_autograd(layout, chunk, row_kernel, monkeypatch):
    # "always": single-stream groups (stream 0, the per-codebook heads) through the row kernel, its
    # projection padded from 35 to 64 ids; "never": the float32 in-place passes
    monkeypatch.setattr(loss_module, "ROW_KERNEL", row_kernel)
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


def _bf16_problem(device):
    hidden, weight, shift, _, tokens, mask = problem(2, positions=40)
    hidden, weight, shift = (t.detach().to(device) for t in (hidden, weight, shift))
    return hidden, weight, shift, tokens.to(device), mask.to(device)


def _loss_and_grads(hidden, weight, shift, tokens, mask, chunk=16):
    hidden, weight, shift = (t.detach().clone().requires_grad_() for t in (hidden, weight, shift))
    out = multistream_loss(
        StreamTargets(hidden, tokens, mask),
        shared_heads(weight, shift),
        codec_offset=CODEC,
        codec_weight=0.25,
        chunk_size=chunk,
    )
    return [out.loss, *torch.autograd.grad(out.loss, (hidden, weight, shift))], out


def _assert_near(got, want, tolerance):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        a, b = a.detach().float(), b.detach().float()
        assert float((a - b).norm() / b.norm()) < tolerance


@pytest.mark.parametrize("align", [1, 64])
def test_row_kernel_in_bfloat16_matches_the_float32_passes(align, monkeypatch):
    """bf16 heads: the row kernel (half-precision logits, padded projection) gives the float32 passes'
    loss, accuracies and gradients within bf16 rounding, in the parameters' dtypes."""
    hidden, weight, shift, tokens, mask = (
        t.to(torch.bfloat16) if t.is_floating_point() else t for t in _bf16_problem("cpu")
    )
    monkeypatch.setattr(loss_module, "VOCAB_ALIGN", align)
    monkeypatch.setattr(loss_module, "ROW_KERNEL", "never")
    want, want_out = _loss_and_grads(hidden, weight, shift, tokens, mask)
    monkeypatch.setattr(loss_module, "ROW_KERNEL", "always")
    got, got_out = _loss_and_grads(hidden, weight, shift, tokens, mask)
    _assert_near(got, want, 2e-2)
    assert torch.equal(got_out.codebook_accuracies, want_out.codebook_accuracies)


def test_row_kernel_is_chosen_on_cuda_half_precision_only(monkeypatch):
    """``auto``: CUDA with a bf16/fp16 projection (bf16 weights, or fp32 weights under autocast); never
    on the CPU or for a float32 projection; ``never`` / ``always`` override."""

    class FakeCuda:
        is_cuda = True
        device = torch.device("cuda")

    head = StreamHead(torch.zeros(4, 2, dtype=torch.bfloat16), 0, 4, 0)
    head32 = StreamHead(torch.zeros(4, 2), 0, 4, 0)
    assert loss_module._use_row_kernel(head, FakeCuda())
    assert not loss_module._use_row_kernel(head32, FakeCuda())
    assert not loss_module._use_row_kernel(head, torch.zeros(1, 2, dtype=torch.bfloat16))  # CPU
    assert loss_module._compute_dtype(head32.weight, torch.zeros(1, 2)) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 weights under autocast: the autocast dtype
        assert loss_module._compute_dtype(head32.weight, torch.zeros(1, 2)) == torch.bfloat16
    monkeypatch.setattr(loss_module, "ROW_KERNEL", "never")
    assert not loss_module._use_row_kernel(head, FakeCuda())
    monkeypatch.setattr(loss_module, "ROW_KERNEL", "always")
    assert loss_module._use_row_kernel(head32, torch.zeros(1, 2))


def test_row_kernel_under_autocast_keeps_float32_gradients(monkeypatch):
    """fp32 parameters under bf16 autocast (the recipes' bf16-mixed): the row kernel casts the projection
    once, and the gradients come back in float32, near the float32 passes' under the same autocast."""
    hidden, weight, shift, tokens, mask = _bf16_problem("cpu")
    monkeypatch.setattr(loss_module, "ROW_KERNEL", "never")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = _loss_and_grads(hidden, weight, shift, tokens, mask)
    monkeypatch.setattr(loss_module, "ROW_KERNEL", "always")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = _loss_and_grads(hidden, weight, shift, tokens, mask)
    assert all(g.dtype == torch.float32 for g in got)
    _assert_near(got, want, 2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled row kernel runs on CUDA only")
@pytest.mark.parametrize("autocast", [False, True])
def test_compiled_row_kernel_on_gpu_matches_the_float32_passes(autocast, monkeypatch):
    """On CUDA the row kernel is the default for a bf16 projection and runs compiled (inductor); its
    loss and gradients equal the float32 passes' within bf16 rounding (bf16 weights, or fp32 weights
    under bf16 autocast)."""
    hidden, weight, shift, tokens, mask = _bf16_problem("cuda")
    if not autocast:
        hidden, weight, shift = (t.to(torch.bfloat16) for t in (hidden, weight, shift))
    monkeypatch.setattr(loss_module, "ROW_KERNEL", "never")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        want, _ = _loss_and_grads(hidden, weight, shift, tokens, mask)
    monkeypatch.setattr(loss_module, "ROW_KERNEL", "auto")
    calls = []
    original = loss_module._row_kernel
    monkeypatch.setattr(loss_module, "_row_kernel", lambda device: calls.append(device) or original(device))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        got, _ = _loss_and_grads(hidden, weight, shift, tokens, mask)
    assert calls and original(calls[0]) is not loss_module._softmax_xent_rows  # compiled
    _assert_near(got, want, 2e-2)


@pytest.mark.parametrize("row_kernel", ["never", "always"])
def test_positions_without_a_stream_zero_target_are_skipped_by_that_stream(row_kernel, monkeypatch):
    """The row kernel chunks the positions where its stream has a target (here stream 0 has none at
    every third position, the codec streams still do); loss and gradients equal plain autograd."""
    monkeypatch.setattr(loss_module, "ROW_KERNEL", row_kernel)
    hidden, weight, shift, _, tokens, mask = problem(3, positions=30)
    mask[::3, 0] = False
    mask[::3, 1:] = True
    heads = shared_heads(weight, shift)
    out = multistream_loss(
        StreamTargets(hidden, tokens, mask), heads, codec_offset=CODEC, codec_weight=0.25, chunk_size=7
    )
    ref = reference(hidden, heads, tokens, mask, 0.25)
    torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(
        torch.autograd.grad(out.loss, (hidden, weight, shift)),
        torch.autograd.grad(ref, (hidden, weight, shift)),
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert out.num_targets == 20  # 30 positions, 10 without a stream-0 target


def test_a_row_kernel_that_fails_to_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    """A compiler error in the row kernel's first call warns, names the switch, and the loss comes out
    of the eager function; later calls go straight to it."""
    from torch._inductor.exc import InductorError

    attempts = []

    def broken(*args):
        attempts.append(1)
        raise InductorError(RuntimeError("no triton"), None)

    monkeypatch.setattr(loss_module, "_COMPILED_ROWS", {})
    monkeypatch.setattr(
        loss_module, "_row_kernel", lambda device: loss_module._COMPILED_ROWS.get(device.type, broken)
    )
    monkeypatch.setattr(loss_module, "ROW_KERNEL", "always")
    hidden, weight, shift, _, tokens, mask = problem(4)
    heads = shared_heads(weight, shift)
    with pytest.warns(UserWarning, match="row kernel did not compile.*no triton.*COMPILE_ROW_KERNEL"):
        out = multistream_loss(
            StreamTargets(hidden, tokens, mask), heads, codec_offset=CODEC, codec_weight=0.25
        )
    torch.testing.assert_close(out.loss, reference(hidden, heads, tokens, mask, 0.25), atol=1e-6, rtol=1e-6)
    assert loss_module._COMPILED_ROWS["cpu"] is loss_module._softmax_xent_rows
    multistream_loss(StreamTargets(hidden, tokens, mask), heads, codec_offset=CODEC, codec_weight=0.25)
    assert len(attempts) == 1


def test_compile_errors_without_inductor_error(monkeypatch):
    """Older torch releases have no ``InductorError``: the fallback then catches ``BackendCompilerFailed``
    alone instead of failing to import."""
    import torch._inductor.exc
    from torch._dynamo.exc import BackendCompilerFailed

    assert torch._inductor.exc.InductorError in loss_module._compile_errors()
    monkeypatch.delattr(torch._inductor.exc, "InductorError")
    assert loss_module._compile_errors() == (BackendCompilerFailed,)


def test_loss_plan_counts_targets_per_stream_and_chunk_and_an_early_plan_gives_the_same_loss():
    from bagpiper_lib.model.loss import plan_loss

    hidden, weight, shift, _, tokens, mask = problem(positions=23)
    mask[3:9] = False  # a gap, so that the chunks' counts differ
    heads = shared_heads(weight, shift)
    plan = plan_loss(tokens, mask, heads, chunk_size=10)
    assert plan.stream_counts == tuple(int(c) for c in mask.sum(0))
    assert plan.chunk_counts[(id(weight), 0, VOCAB)] == tuple(
        int(mask[i : i + 10, 0].sum()) for i in (0, 10, 20)
    )
    codec = mask[:, 1:].any(-1)
    assert plan.chunk_counts[(id(weight), CODEC, VOCAB)] == tuple(
        int(codec[i : i + 10].sum()) for i in (0, 10, 20)
    )
    biases = (shift @ weight[CODEC:].t()).detach()
    assert plan.spreads[(id(weight), CODEC, VOCAB)] == pytest.approx(
        float((biases.amax(1) - biases.amin(1)).max())
    )
    args = dict(codec_offset=CODEC, codec_weight=0.25, chunk_size=10)
    planned = multistream_loss(StreamTargets(hidden, tokens, mask), heads, plan=plan, **args)
    unplanned = multistream_loss(StreamTargets(hidden, tokens, mask), heads, **args)
    assert torch.equal(planned.loss, unplanned.loss) and planned.num_targets == int(mask[:, 0].sum())
    with pytest.raises(
        ValueError, match="plan is for chunk_size 10 and other stream heads; the call has chunk_size 4"
    ):
        multistream_loss(StreamTargets(hidden, tokens, mask), heads, plan=plan, **{**args, "chunk_size": 4})
    own = own_heads(weight, [torch.randn(BLOCK, H) for _ in range(K - 1)])
    with pytest.raises(ValueError, match="other stream heads"):
        multistream_loss(StreamTargets(hidden, tokens, mask), own, plan=plan, **args)
    with pytest.raises(ValueError, match="plan was made from other targets"):  # equal values, other tensors
        multistream_loss(StreamTargets(hidden, tokens.clone(), mask), heads, plan=plan, **args)
    tokens[5, 1] = 0  # a bad id where the mask is off does not count
    assert plan_loss(tokens, mask, heads, chunk_size=10).stream_counts == plan.stream_counts
    mask[5, 1] = True
    with pytest.raises(ValueError, match="target id 0 of stream 1 lies outside"):
        plan_loss(tokens, mask, heads, chunk_size=10)
