"""Multi-stream next-token loss, fused with the output projection and computed in chunks.

For target positions ``P`` (gathered out of the batch) and streams ``k``::

    stream 0    logits over the whole vocabulary          [P, V]
    stream k>0  logits over the codec ids only            [P, K * (N + 1)]   (shared head)
                or over codebook k's block only            [P, N + 1]        (own_codebook / per-codebook head)

Each stream's projection is a :class:`StreamHead` (rows of a weight matrix, optionally a per-stream
vector added to the hidden state first). The loss never materialises ``[P, V]`` logits and never
recomputes them: for each chunk of positions it builds the chunk's float32 logits in one buffer, takes
the cross entropy, turns the same buffer in place into ``d loss / d logits`` (softmax minus one-hot,
times the token weight) and immediately multiplies it back into the gradients of the hidden states
and of the head parameters (a fused linear + cross-entropy, computed during forward). Backward then
only scales the stored gradients by the incoming gradient. Peak memory is one chunk's logits; the
matmul count is the same as an unfused forward + backward (three per stream), so chunking costs no
recomputation. Codec streams that share the head differ only by a bias ``b_k = e_k W^T``, so their
softmaxes come from one exponential of the shared product (``exp(l + b_k) = exp(l) exp(b_k)``): one
``exp`` pass per chunk instead of one per stream (see :func:`_shared_streams`).

On CUDA in bf16/fp16, a stream with a projection of its own (stream 0, a per-codebook head) takes the
row kernel instead (:data:`ROW_KERNEL`): half-precision logits from a head padded to :data:`VOCAB_ALIGN`
ids, and one compiled function for the cross entropy, the accuracy and the logit gradient
(:func:`_softmax_xent_rows`), chunked over the positions that have a target.

Weights: a codec token counts ``codec_weight`` (default ``1 / K``: one audio frame weighs one text
token), every other token 1. The total is the weighted sum divided by the number of stream-0 target
positions (the reference normalisation). Reported besides: text loss (stream-0 non-codec targets),
audio loss (all codec targets) and per-codebook losses and accuracies, as means over their tokens. A
token counts as correct when its target logit is the highest (a tie with another id counts as correct;
with float logits ties practically never happen, and skipping ``argmax`` saves a slow pass).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossOutput", "LossPlan", "StreamHead", "StreamTargets", "multistream_loss", "plan_loss"]


@dataclass
class StreamTargets:
    """What the loss needs per target position ``p`` (already shifted for next-token prediction).

    ``hidden [P, H]`` hidden state predicting position p; ``tokens [P, K]`` target ids;
    ``mask [P, K]`` which of them count.
    """

    hidden: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class StreamHead:
    """The output projection of one stream: ``logits = (hidden + shift[shift_row]) @ weight[lo:hi].T``.

    Args:
        weight: ``[R, H]`` parameter holding this stream's rows (e.g. the shared head, or a per-codebook
            head of its own).
        lo, hi: the rows of ``weight`` that are this stream's outputs.
        offset: the vocabulary id of row ``lo`` (logit ``j`` scores id ``offset + j``).
        shift: optional ``[S, H]`` parameter; row ``shift_row`` is added to the hidden state first
            (the stream embedding of a shared head).
        shift_row: which row of ``shift``.
    """

    weight: torch.Tensor
    lo: int
    hi: int
    offset: int
    shift: torch.Tensor | None = None
    shift_row: int = 0

    def inputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` plus the stream's shift (if any), in ``hidden``'s dtype."""
        if self.shift is None:
            return hidden
        return hidden + self.shift[self.shift_row].to(hidden.dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits ``[..., hi - lo]`` of ids ``[offset, offset + hi - lo)`` (differentiable)."""
        return F.linear(self.inputs(hidden), self.weight[self.lo : self.hi]).float()


@dataclass
class LossOutput:
    loss: torch.Tensor
    text_loss: torch.Tensor
    audio_loss: torch.Tensor
    codebook_losses: torch.Tensor  # [K]
    text_accuracy: torch.Tensor
    audio_accuracy: torch.Tensor
    codebook_accuracies: torch.Tensor  # [K]
    num_targets: int


@dataclass(frozen=True)
class LossPlan:
    """What the loss must know on the host about its targets, read in one host sync
    (:func:`plan_loss`): the target ids were checked, and how many positions each stream and each
    chunk of each projection group has (so every later selection has a known size and needs no sync).

    ``chunk_counts`` maps a group key ``(id(weight), lo, hi)`` to the number of positions with a target
    of the group's streams in each chunk of ``chunk_size`` positions; ``spreads`` the same key to the
    spread of the group's stream biases (several streams only), with ``biases`` their ``[S, V]`` values.
    ``tokens`` and ``mask`` are the tensors it was made from: :func:`multistream_loss` takes a plan only
    with these very tensors (its counts would be wrong for any other targets, silently).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    positions: int
    chunk_size: int
    stream_counts: tuple[int, ...]
    chunk_counts: dict
    spreads: dict
    biases: dict


def _groups(heads: Sequence[StreamHead]) -> dict[tuple[int, int, int], list[int]]:
    """Streams that share one projection (the same rows of the same weight), by ``(id, lo, hi)``."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for k, head in enumerate(heads):
        groups.setdefault((id(head.weight), head.lo, head.hi), []).append(k)
    return groups


def plan_loss(
    tokens: torch.Tensor, mask: torch.Tensor, heads: Sequence[StreamHead], chunk_size: int
) -> LossPlan:
    """The :class:`LossPlan` of targets ``tokens [P, K]`` / ``mask [P, K]``: one host sync for the target
    id check, the counts and the bias spreads together. ``BagpiperModel`` calls it before its backbone
    runs (the GPU then has the whole forward queued while the host waits on nothing); without it
    :func:`multistream_loss` plans itself. Raises ``ValueError`` naming a target id outside its stream's
    output ids."""
    given_mask, mask = mask, mask.bool()
    positions, num_streams = tokens.shape
    if len(heads) != num_streams or mask.shape != tokens.shape:
        raise ValueError(
            f"plan_loss: tokens {tuple(tokens.shape)}, mask {tuple(mask.shape)}, {len(heads)} stream heads"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    outside = _outside(tokens, mask, heads).any()
    chunks = -(-positions // chunk_size)
    parts = [outside[None].double(), mask.sum(0).double()]
    groups = _groups(heads)
    biases = {}
    for key, streams in groups.items():
        any_target = F.pad(_columns(mask, streams).any(-1), (0, chunks * chunk_size - positions))
        parts.append(any_target.view(chunks, chunk_size).sum(1).double())
        if len(streams) > 1:
            biases[key] = _biases(heads, streams)
            parts.append((biases[key].amax(1) - biases[key].amin(1)).max()[None].double())
    values = torch.cat(parts).tolist()  # the one host sync
    if values[0]:
        _check_targets(tokens, mask, heads)  # names the first bad id (more syncs, on the error path only)
    counts, at, chunk_counts, spreads = values[1 : 1 + num_streams], 1 + num_streams, {}, {}
    for key, streams in groups.items():
        chunk_counts[key] = tuple(int(c) for c in values[at : at + chunks])
        at += chunks
        if len(streams) > 1:
            spreads[key] = values[at]
            at += 1
    return LossPlan(
        tokens,
        given_mask,
        positions,
        chunk_size,
        tuple(int(c) for c in counts),
        chunk_counts,
        spreads,
        biases,
    )


def multistream_loss(
    targets: StreamTargets,
    heads: Sequence[StreamHead],
    *,
    codec_offset: int,
    codec_weight: float,
    chunk_size: int = 1024,
    plan: LossPlan | None = None,
) -> LossOutput:
    """Fused, chunked loss (see the module docstring).

    Args:
        targets: hidden states, target ids and masks of the target positions.
        heads: one :class:`StreamHead` per stream (``K`` of them).
        codec_offset: first codec id; ids at or above it are codec tokens.
        codec_weight: weight of a codec token.
        chunk_size: positions per chunk (peak memory is about ``chunk_size x V`` float32).
        plan: :func:`plan_loss` of these targets, heads and chunk size, made earlier (by default it is
            made here: the call's one host sync).
    """
    hidden, tokens, mask = targets.hidden, targets.tokens, targets.mask
    num_streams = len(heads)
    if hidden.shape[0] != tokens.shape[0] or tokens.shape != mask.shape or tokens.shape[1] != num_streams:
        raise ValueError(
            f"targets disagree: hidden {tuple(hidden.shape)}, tokens {tuple(tokens.shape)}, mask {tuple(mask.shape)}, "
            f"{num_streams} stream heads"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if plan is None:
        plan = plan_loss(tokens, mask, heads, chunk_size)
    elif plan.tokens is not tokens or plan.mask is not mask:
        raise ValueError(
            "plan was made from other targets: make it with plan_loss(targets.tokens, targets.mask, heads, "
            "chunk_size) on the very tensors given to multistream_loss"
        )
    elif plan.chunk_size != chunk_size or set(plan.chunk_counts) != set(_groups(heads)):
        raise ValueError(
            f"plan is for chunk_size {plan.chunk_size} and other stream heads; the call has chunk_size "
            f"{chunk_size}: make the plan with the call's heads and chunk_size"
        )
    mask = mask.bool()
    codec = (tokens >= codec_offset) & mask
    weights = torch.where(codec, codec_weight, 1.0) * mask  # [P, K] float32, 0 where not a target
    params = _unique([t for head in heads for t in (head.weight, head.shift) if t is not None])
    if torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in params)):
        weighted, ce, correct = _FusedLoss.apply(hidden, tokens, mask, weights, heads, plan, *params)
    else:
        with torch.no_grad():
            weighted, ce, correct, _ = _forward(hidden, tokens, mask, weights, heads, plan, None)
    text = mask & ~codec
    text[:, 1:] = False  # text and special targets only exist in stream 0
    with torch.no_grad():
        # rows text / audio / codebook 0..K-1; columns loss, correct, count
        stats = torch.cat(
            [torch.stack([(ce * sel).sum(), (correct * sel).sum(), sel.sum()])[None] for sel in (text, codec)]
            + [torch.stack([(ce * codec).sum(0), (correct * codec).sum(0), codec.sum(0)], dim=1)]
        ).double()
    num_targets = plan.stream_counts[0]
    mean = (stats[:, 0] / stats[:, 2]).float()  # NaN where a group has no token: nothing to report
    accuracy = (stats[:, 1] / stats[:, 2]).float()
    return LossOutput(
        loss=weighted / max(num_targets, 1),
        text_loss=mean[0],
        audio_loss=mean[1],
        codebook_losses=mean[2:],
        text_accuracy=accuracy[0],
        audio_accuracy=accuracy[1],
        codebook_accuracies=accuracy[2:],
        num_targets=num_targets,
    )


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for t in tensors:
        seen.setdefault(id(t), t)
    return list(seen.values())


class _Scratch:
    """The float32 logits buffers of one loss call, reused by every chunk and stream.

    A fresh multi-megabyte tensor costs a page fault per 4 KiB on CPU each time it is allocated: at
    hidden size 64 and 8.7 k logits per position that doubled the time of the logits matmul. So each
    named buffer is allocated once per call (at its largest chunk) and sliced; on CPU the buffers of
    up to ``_KEEP_CPU`` elements are also kept per thread between calls. CUDA has its caching
    allocator, so there the buffers live for one call only.
    """

    def __init__(self, device: torch.device):
        keep = device.type == "cpu"
        self.slots: dict[str, torch.Tensor] = _kept_scratch() if keep else {}
        self.device, self.keep = device, keep

    def get(self, name: str, rows: int, cols: int) -> torch.Tensor:
        need = rows * cols
        flat = self.slots.get(name)
        if flat is None or flat.numel() < need:
            flat = torch.empty(need, dtype=torch.float32, device=self.device)
            if not self.keep or need <= _KEEP_CPU:
                self.slots[name] = flat
        return flat[:need].view(rows, cols)


_KEEP_CPU = 16 * 2**20  # elements (64 MiB) per kept CPU buffer
_LOCAL = threading.local()


def _kept_scratch() -> dict[str, torch.Tensor]:
    if not hasattr(_LOCAL, "slots"):
        _LOCAL.slots = {}
    return _LOCAL.slots


class _FusedLoss(torch.autograd.Function):
    """Weighted CE sum whose gradients are computed in forward (see :func:`_forward`)."""

    @staticmethod
    def forward(ctx, hidden, tokens, mask, weights, heads, plan, *params):
        needs = ctx.needs_input_grad
        wanted = {id(p): needs[6 + i] for i, p in enumerate(params)}
        wanted[id(hidden)] = needs[0]
        weighted, ce, correct, grads = _forward(hidden, tokens, mask, weights, heads, plan, wanted)
        ctx.mark_non_differentiable(ce, correct)
        ctx.save_for_backward(grads.get(id(hidden)), *[grads.get(id(p)) for p in params])
        return weighted, ce, correct

    @staticmethod
    def backward(ctx, grad_weighted, grad_ce, grad_correct):
        saved = ctx.saved_tensors
        scaled = [None if g is None else g * grad_weighted.to(g.dtype) for g in saved]
        return (scaled[0], None, None, None, None, None, *scaled[1:])


def _forward(hidden, tokens, mask, weights, heads, plan, wanted):
    """Weighted CE sum, per-token CE and correctness ``[P, K]``; with ``wanted`` (``id -> needs grad``)
    also the gradients of the weighted sum w.r.t. ``hidden`` and the head parameters, keyed by ``id``.

    Streams whose heads are the same rows of the same weight (the shared head's codec streams, which
    differ only by their shift) share one projection: ``(h + e_k) W^T = h W^T + (e_k W^T)``, so the
    ``[R, V]`` product is computed once per chunk and each stream adds its ``[V]`` bias; in backward
    terms their logit gradients are summed first, so ``d h`` and ``d W`` take one matmul each for the
    whole group instead of one per stream.
    """
    positions, chunk_size = tokens.shape[0], plan.chunk_size
    ce = torch.zeros(tokens.shape, dtype=torch.float32, device=hidden.device)
    correct = torch.zeros_like(ce)
    grads: dict[int, torch.Tensor] = {}
    if wanted is not None:
        for head in heads:
            for t in (head.weight, head.shift):
                if t is not None and wanted.get(id(t)) and id(t) not in grads:
                    grads[id(t)] = torch.zeros_like(t)
        if wanted.get(id(hidden)):
            grads[id(hidden)] = torch.zeros_like(hidden)
    groups = _groups(heads)
    rowwise = [
        streams[0]
        for streams in groups.values()
        if len(streams) == 1 and _use_row_kernel(heads[streams[0]], hidden)
    ]
    for k in rowwise:
        _RowKernelHead.of(heads[k], hidden, grads).run(
            hidden, tokens, mask, weights, k, plan, ce, correct, grads
        )
    scratch = _Scratch(hidden.device)
    rest = [
        (streams, _stream_biases(plan, key), plan.chunk_counts[key])
        for key, streams in groups.items()
        if streams[0] not in rowwise
    ]
    for chunk, start in enumerate(range(0, positions, chunk_size)):
        stop = min(start + chunk_size, positions)
        for streams, prepared, counts in rest:
            _group(hidden, tokens, mask, weights, heads, streams, prepared, start, stop, counts[chunk], ce,
                   correct, grads, scratch)  # fmt: skip
    weighted = (ce * weights).sum()
    return weighted, ce, correct, grads


ROW_KERNEL = "auto"
"""When a stream's head is its own group (stream 0 over the whole vocabulary, or a per-codebook head),
compute its chunk's cross entropy and logit gradient with :func:`_softmax_xent_rows` on half-precision
logits instead of the in-place float32 passes of :func:`_group`: ``"auto"`` on CUDA where the
projection runs in bf16/fp16 (bf16 weights, or fp32 weights under autocast), ``"always"`` everywhere
(tests), ``"never"`` to force the float32 passes (benchmarks compare the two)."""

COMPILE_ROW_KERNEL = True
"""Compile :func:`_softmax_xent_rows` with ``torch.compile`` (inductor) on CUDA: the row max, the
exponential sum and the gradient become two fused passes over the bf16 logits instead of about ten
float32 passes. Eager (the same function, more memory traffic) where compilation is off, and for the
rest of the process after a compilation that failed (with a warning naming the error)."""

VOCAB_ALIGN = 64
"""The row kernel pads its projection's output dimension to a multiple of this many ids (zero rows in a
half-precision copy of the weight, masked out of the softmax), so that every logits and logit-gradient
row starts on a 128-byte boundary; 1 turns padding off."""


def _compute_dtype(weight: torch.Tensor, x: torch.Tensor) -> torch.dtype:
    """The dtype the projection's matmuls run in: autocast's on its device, else the weight's."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and weight.dtype == torch.float32:
        return torch.get_autocast_dtype(device)
    return weight.dtype


def _use_row_kernel(head: StreamHead, hidden: torch.Tensor) -> bool:
    if ROW_KERNEL == "always":
        return True
    if ROW_KERNEL != "auto" or not hidden.is_cuda:
        return False
    return _compute_dtype(head.weight, hidden) in (torch.float16, torch.bfloat16)


def _softmax_xent_rows(logits, local, w, cols: int):
    """Per row of ``logits [R, C]`` (ids ``>= cols`` are padding; every row has a target): the float32
    cross entropy of target column ``local``, whether the target scores highest (ties count), and
    ``d (w * CE) / d logits = w * (softmax - onehot)`` in the logits' dtype. Pure tensor code, so that
    inductor fuses it (:data:`COMPILE_ROW_KERNEL`)."""
    x = logits.float()
    ids = torch.arange(x.shape[1], device=x.device)
    if cols < x.shape[1]:
        x = x.masked_fill(ids >= cols, float("-inf"))
    top = x.amax(1, keepdim=True)
    exp = (x - top).exp()
    total = exp.sum(1, keepdim=True)
    picked = x.gather(1, local[:, None]) - top  # the target logit minus the row maximum
    ce = total.squeeze(1).log() - picked.squeeze(1)
    correct = (picked.squeeze(1) >= 0).float()
    grad = exp * (w[:, None] / total) - torch.where(ids == local[:, None], w[:, None], 0.0)
    return ce, correct, grad.to(logits.dtype)


_COMPILED_ROWS: dict[str, object] = {}


def _row_kernel(device: torch.device):
    """:func:`_softmax_xent_rows`, compiled once per process on CUDA (dynamic row count)."""
    if device.type != "cuda" or not COMPILE_ROW_KERNEL:
        return _softmax_xent_rows
    fn = _COMPILED_ROWS.get("cuda")
    if fn is None:
        fn = _COMPILED_ROWS["cuda"] = torch.compile(_softmax_xent_rows, dynamic=True)
    return fn


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a failed ``torch.compile`` raises (``InductorError`` is not in every torch >= 2.4)."""
    from torch._dynamo.exc import BackendCompilerFailed

    try:
        from torch._inductor.exc import InductorError
    except ImportError:
        return (BackendCompilerFailed,)
    return (BackendCompilerFailed, InductorError)


def _rows(device: torch.device, *args):
    """:func:`_row_kernel` applied to ``args``; a compilation that fails falls back to eager for good."""
    fn = _row_kernel(device)
    if fn is _softmax_xent_rows:
        return fn(*args)
    try:
        return fn(*args)
    except _compile_errors() as error:
        warnings.warn(
            f"the loss's row kernel did not compile ({type(error).__name__}: {str(error)[:200]}); "
            "running it eagerly (more memory traffic). Set bagpiper_lib.model.loss.COMPILE_ROW_KERNEL = False "
            "to skip the attempt.",
            stacklevel=2,
        )
        _COMPILED_ROWS[device.type] = _softmax_xent_rows
        return _softmax_xent_rows(*args)


class _RowKernelHead:
    """One single-stream group through :func:`_softmax_xent_rows`, chunk by chunk.

    Per call: the head's rows cast once to the compute dtype and padded to :data:`VOCAB_ALIGN` (autocast
    would otherwise cast the float32 weight in each of the three matmuls of every chunk), and a
    weight-gradient accumulator of that shape, added into the parameter's gradient at the end of :meth:`run`.
    """

    def __init__(self, head: StreamHead, weight: torch.Tensor, grad_w: torch.Tensor | None):
        self.head, self.weight, self.grad_w = head, weight, grad_w
        self.cols = head.hi - head.lo

    @classmethod
    def of(cls, head: StreamHead, hidden: torch.Tensor, grads: dict[int, torch.Tensor]) -> _RowKernelHead:
        dtype = _compute_dtype(head.weight, hidden)
        rows = head.weight.detach()[head.lo : head.hi]
        pad = -rows.shape[0] % max(int(VOCAB_ALIGN), 1)
        weight = F.pad(rows.to(dtype), (0, 0, 0, pad)) if pad else rows.to(dtype)
        grad_w = torch.zeros_like(weight) if id(head.weight) in grads else None
        return cls(head, weight, grad_w)

    def run(self, hidden, tokens, mask, weights, k, plan, ce, correct, grads):
        """Stream ``k``'s positions with a target, ``plan.chunk_size`` of them at a time (every chunk full
        but the last, whatever the positions' layout), then the weight gradient into the parameter's."""
        selected = _nonzero(mask[:, k], plan.stream_counts[k])
        ids = tokens[:, k] - self.head.offset
        for rows in selected.split(plan.chunk_size):
            x = self.head.inputs(hidden.detach()[rows]).to(self.weight.dtype)
            with torch.autocast(x.device.type, enabled=False):
                logits = x @ self.weight.t()  # [R, padded]
                c, hit, grad = _rows(x.device, logits, ids[rows], weights[rows, k], self.cols)
                ce[rows, k] = c
                correct[rows, k] = hit
                if grads:
                    self._backward(rows, x, grad, hidden, grads)
        if self.grad_w is not None:  # padding rows dropped
            grads[id(self.head.weight)][self.head.lo : self.head.hi] += self.grad_w[: self.cols].to(
                self.head.weight.dtype
            )

    def _backward(self, rows, x, grad, hidden, grads):
        grad_x = grad @ self.weight  # [R, H]
        if id(hidden) in grads:
            grads[id(hidden)].index_add_(0, rows, grad_x.to(hidden.dtype))
        if self.grad_w is not None:
            self.grad_w.addmm_(grad.t(), x)
        shift = self.head.shift
        if shift is not None and id(shift) in grads:
            grads[id(shift)][self.head.shift_row] += grad_x.sum(0).to(shift.dtype)


def _columns(x: torch.Tensor, streams: list[int]) -> torch.Tensor:
    """``x[:, streams]`` without a host-to-device copy of the index list (on CUDA such a copy waits for
    the queue like a sync): a slice where the streams are consecutive (the shared head's codec streams),
    else a stack of the columns."""
    if streams == list(range(streams[0], streams[0] + len(streams))):
        return x[:, streams[0] : streams[0] + len(streams)]
    return torch.stack([x[:, k] for k in streams], dim=1)


def _nonzero(flags: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the ``count`` true entries of ``flags [N]`` (counted beforehand, in the plan's one
    host sync), without a sync of its own: ``nonzero_static`` where torch has it for the device."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=flags.device)
    try:
        return torch.nonzero_static(flags, size=count).squeeze(1)
    except (AttributeError, NotImplementedError):  # an older torch, or a device without the kernel
        return flags.nonzero().squeeze(1)


def _outside(tokens, mask, heads) -> torch.Tensor:
    """``[P, K]`` bool: the targets whose id lies outside their stream's output ids. Per stream with
    Python bounds: a tensor of them would be a host-to-device copy, which on CUDA waits for the queue
    like a sync."""
    return torch.stack(
        [
            mask[:, k] & ((tokens[:, k] < h.offset) | (tokens[:, k] >= h.offset + h.hi - h.lo))
            for k, h in enumerate(heads)
        ],
        dim=1,
    )


def _check_targets(tokens, mask, heads):
    """Every target id lies in its stream's output ids (host syncs: :func:`plan_loss` calls it only
    where its one sync found a bad id, for the message)."""
    outside = _outside(tokens, mask, heads)
    if bool(outside.any()):
        p, k = (int(i) for i in outside.nonzero()[0])
        lo = heads[k].offset
        raise ValueError(
            f"target id {int(tokens[p, k])} of stream {k} lies outside that stream's output ids "
            f"[{lo}, {lo + heads[k].hi - heads[k].lo})"
        )


def _targets(tokens, mask, heads, k, start, rows):
    """Stream ``k``'s ``on [R]`` (has a target) and target column ``local [R]`` (0 where off); the ids
    were checked by :func:`_check_targets`."""
    on = mask[start + rows, k]
    return on, torch.where(on, tokens[start + rows, k] - heads[k].offset, 0)


# Largest spread (max - min) of a stream's bias ``e_k W^T`` for which the factored path is used: its
# products lose at most a factor exp(-spread) against the row maximum, far from float32 underflow.
_MAX_BIAS_SPREAD = 40.0


def _stream_biases(plan, key):
    """``(biases [S, V] float32, factored)`` of group ``key`` when it has several streams sharing one
    projection: each stream's bias ``e_k W^T`` (0 without a shift, from the plan), and whether their
    spread allows the one-exponential path (:data:`_MAX_BIAS_SPREAD`); ``(None, False)`` for a single
    stream (the plan holds biases for multi-stream groups only)."""
    if key not in plan.biases:
        return None, False
    return plan.biases[key], plan.spreads[key] <= _MAX_BIAS_SPREAD


def _biases(heads, streams):
    """``[S, V]`` float32: each stream's bias ``e_k W^T`` over the group's rows (0 without a shift)."""
    first = heads[streams[0]]
    weight = first.weight.detach()[first.lo : first.hi]
    biases = torch.stack(
        [
            torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
            if heads[k].shift is None
            else (heads[k].shift.detach()[heads[k].shift_row].to(weight.dtype) @ weight.t()).float()
            for k in streams
        ]
    )
    return biases


def _group(hidden, tokens, mask, weights, heads, streams, prepared, start, stop, count, ce, correct, grads,
           scratch):  # fmt: skip
    """One chunk ``[start, stop)`` of the streams sharing one projection (see :func:`_forward`), whose
    ``count`` positions with a target (from the plan) are found without a host sync.

    ``prepared`` is the group's :func:`_stream_biases`. Buffers (``scratch``): ``base`` holds
    ``x W^T``. Several streams take the factored path (:func:`_shared_streams`) when their biases allow
    it; otherwise each stream's logits go to ``a`` or ``b`` in turn and the first of them (``a``)
    accumulates the group's logit gradient.
    """
    if count == 0:
        return
    rows = _nonzero(_columns(mask[start:stop], streams).any(-1), count)
    first = heads[streams[0]]
    weight = first.weight.detach()[first.lo : first.hi]  # [V, H]
    h = hidden.detach()[start:stop][rows]  # [R, H]
    single = len(streams) == 1
    # one stream: its own inputs (shift included) and the product used in place; several: h W^T once
    x = first.inputs(h) if single else h  # the projection's input (shared by the group's streams)
    base = scratch.get("base", rows.numel(), first.hi - first.lo)  # [R, V]
    if weight.dtype == x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type):
        torch.mm(x, weight.t(), out=base)
    else:
        base.copy_(F.linear(x, weight))
    grad_w = grads.get(id(first.weight))
    biases, factored = prepared  # [S, V] (several streams)
    if factored:
        summed = _shared_streams(base, biases, tokens, mask, weights, heads, streams, start, rows, ce, correct,
                                 grads, grad_w, weight, scratch)  # fmt: skip
        _project_back(summed, x, weight, rows, start, stop, hidden, grads, grad_w, first, single)
        return
    summed = None  # sum over the group's streams of d loss / d logits (several streams only)
    for j, k in enumerate(streams):
        head = heads[k]
        on, local = _targets(tokens, mask, heads, k, start, rows)
        if single:
            buf = base
        else:
            buf = scratch.get("a" if summed is None else "b", *base.shape)
            torch.add(base, biases[j], out=buf)
        buf.sub_(buf.amax(-1, keepdim=True))
        picked = buf.gather(1, local[:, None]).squeeze(1)  # target logit minus the row maximum
        total = buf.exp_().sum(-1)
        ce[start + rows, k] = torch.where(on, total.log() - picked, 0.0)  # logsumexp - target logit
        correct[start + rows, k] = (on & (picked >= 0)).float()  # the target scores highest (ties count)
        if not grads:
            continue
        # d(weighted CE)/d logits = (softmax - onehot) * token weight, in place in the same buffer
        w = weights[start + rows, k]  # 0 on rows where this stream has no target
        buf.mul_((w / total)[:, None])
        buf[torch.arange(rows.numel(), device=buf.device), local] -= w
        if head.shift is not None and not single and (id(head.shift) in grads or grad_w is not None):
            _shift_grads(buf.sum(0), head, weight, grads, grad_w)
        if summed is None:
            summed = buf
        else:
            summed.add_(buf)
    _project_back(summed, x, weight, rows, start, stop, hidden, grads, grad_w, first, single)


def _shift_grads(col, head, weight, grads, grad_w):
    """Gradients through stream ``head``'s bias ``e_k W^T`` given ``col [V]`` = d loss / d bias_k."""
    col = col.to(weight.dtype)
    if id(head.shift) in grads:  # bias_k = e_k W^T  ->  d e_k = col W
        grads[id(head.shift)][head.shift_row] += (col @ weight).to(head.shift.dtype)
    if grad_w is not None:  # and d W += col^T e_k
        grad_w[head.lo : head.hi].add_(torch.outer(col, head.shift.detach()[head.shift_row].to(col.dtype)))


def _project_back(summed, x, weight, rows, start, stop, hidden, grads, grad_w, first, single):
    """Multiply the group's logit gradient ``summed [R, V]`` into the hidden-state and weight gradients."""
    if summed is None or not grads:
        return
    g = summed.to(weight.dtype)
    grad_x = g @ weight  # [R, H]
    if id(hidden) in grads:
        grads[id(hidden)][start:stop].index_add_(0, rows, grad_x.to(hidden.dtype))
    if grad_w is not None:
        grad_w[first.lo : first.hi].addmm_(g.t(), x.to(grad_w.dtype))
    if single and first.shift is not None and id(first.shift) in grads:
        grads[id(first.shift)][first.shift_row] += grad_x.sum(0).to(first.shift.dtype)


def _shared_streams(base, biases, tokens, mask, weights, heads, streams, start, rows, ce, correct, grads,
                    grad_w, weight, scratch):  # fmt: skip
    """Loss and logit gradient of ``S`` streams whose logits are ``base + b_k`` with one exp pass.

    ``exp(base + b_k - m - M_k) = E * B_k`` with ``E = exp(base - m)`` (``m`` the row max of ``base``)
    and ``B_k = exp(b_k - M_k)`` (``M_k = max b_k``), so every softmax comes from the one ``[R, V]``
    exponential: the normalisers are ``E @ B^T`` and the summed gradient ``sum_k (w_k / Z_k) E * B_k``
    is ``E * (C @ B)``. Each stream still takes one pass (add and row max) for the exact accuracy.
    Returns the group's ``d loss / d logits`` summed over its streams (``None`` without gradients).
    """
    # float32 throughout: under autocast the normalisers (E @ B^T) and gradient products would
    # otherwise run in half precision
    with torch.autocast(base.device.type, enabled=False):
        count = len(streams)
        top = biases.amax(1)  # [S]
        scales = (biases - top[:, None]).exp()  # [S, V]: B
        buf = scratch.get("a", *base.shape)
        on, local, picked = [], [], []
        for j, k in enumerate(streams):
            o, loc = _targets(tokens, mask, heads, k, start, rows)
            torch.add(base, biases[j], out=buf)
            target = buf.gather(1, loc[:, None]).squeeze(1)
            correct[start + rows, k] = (o & (target >= buf.amax(-1))).float()  # ties count
            on.append(o), local.append(loc), picked.append(target)
        row_max = base.amax(-1)  # [R]
        exp = base.sub_(row_max[:, None]).exp_()  # [R, V]: E (base is not needed any more)
        totals = exp @ scales.t()  # [R, S]: Z_k / exp(m + M_k)
        for j, k in enumerate(streams):
            lse = totals[:, j].log() + row_max + top[j]
            ce[start + rows, k] = torch.where(on[j], lse - picked[j], 0.0)
        if not grads:
            return None
        w = torch.stack([weights[start + rows, k] for k in streams], dim=1)  # [R, S]
        coef = w / totals  # [R, S]
        summed = buf
        torch.mm(coef, scales, out=summed).mul_(exp)  # sum_k w_k * softmax_k
        arange = torch.arange(rows.numel(), device=base.device)
        for j in range(count):
            summed.index_put_((arange, local[j]), -w[:, j], accumulate=True)
        shifted = [j for j, k in enumerate(streams) if heads[k].shift is not None]
        if shifted and (grad_w is not None or any(id(heads[streams[j]].shift) in grads for j in shifted)):
            cols = (coef.t() @ exp).mul_(scales)  # [S, V]: d loss / d b_k before the one-hot part
            for j in shifted:
                col = cols[j].index_add_(0, local[j], -w[:, j])
                _shift_grads(col, heads[streams[j]], weight, grads, grad_w)
        return summed
