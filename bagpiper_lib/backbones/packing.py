"""Attention isolation for packed rows: segment ids, block-diagonal causal masks, varlen offsets.

A packed row concatenates several samples; ``position_ids`` restart inside the row where a new sample
begins. A new segment starts wherever ``position_ids[b, t] != position_ids[b, t - 1] + 1`` (a restart
at 0, or any other jump), so one row ``[0 1 2 0 1 0 1 2 3]`` holds three samples::

    position_ids  0 1 2 | 0 1 | 0 1 2 3
    segment_ids   0 0 0 | 1 1 | 2 2 2 2

and token ``q`` may attend token ``k`` iff ``segment[q] == segment[k]`` and ``k <= q``
(block-diagonal causal)::

          k: 0 1 2 3 4 5 6 7 8
    q = 0    x . . . . . . . .
    q = 2    x x x . . . . . .
    q = 4    . . . x x . . . .
    q = 8    . . . . . x x x x

Every attention backend receives the same pattern in its own form:

* ``sdpa``: by default no mask at all: the batch is flattened to one row and
  :func:`segmented_sdpa_forward` runs causal SDPA inside each sample (cost ``sum(L_i^2)`` instead
  of ``T^2`` per row, which is what makes packing pay off without a varlen kernel). With a 2D padding
  mask or sliding-window layers it falls back to a boolean mask ``[B, 1, T, T]`` (True = attend),
  :func:`block_causal_mask`;
* ``eager``: the same as an additive float mask (0 / dtype min), :func:`additive_mask`;
* ``flex_attention``: a ``BlockMask`` for :func:`block_causal_mask_mod`, :func:`flex_block_mask`;
* ``flash_attention_*``: no mask; the batch is flattened to one row and the sample boundaries go in
  as cumulative sequence lengths for the varlen kernel, :func:`varlen_kwargs`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "segment_starts",
    "segment_ids",
    "block_causal_mask",
    "additive_mask",
    "block_causal_mask_mod",
    "flex_block_mask",
    "varlen_kwargs",
    "SEGMENTED_SDPA",
    "segmented_sdpa_forward",
    "register_segmented_sdpa",
]

SEGMENTED_SDPA = "bagpiper_sdpa"
"""The transformers attention-registry name the backbone installs for ``attn_implementation="sdpa"``."""


def segment_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """BoolTensor ``[B, T]``: True where a sample starts (always at ``t = 0``).

    Args:
        position_ids: ``[B, T]`` integer positions; a sample continues while they count up by one.
    """
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """LongTensor ``[B, T]``: index of the packed sample each token belongs to, 0-based per row."""
    return segment_starts(position_ids).long().cumsum(-1) - 1


def block_causal_mask(
    segments: torch.Tensor,
    *,
    sliding_window: int | None = None,
    padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean attention mask ``[B, 1, T, T]`` (True = may attend), block-diagonal and causal.

    Args:
        segments: ``[B, T]`` segment ids (:func:`segment_ids`).
        sliding_window: if set, token ``q`` sees only keys ``k > q - sliding_window`` (the transformers
            convention for sliding-attention layers).
        padding_mask: optional ``[B, T]`` (1/True = real token). Padding keys are hidden; every query
            keeps itself visible so that no row is empty (an all-masked softmax row would be NaN).
    """
    length = segments.shape[-1]
    idx = torch.arange(length, device=segments.device)
    allowed = idx[None, :] <= idx[:, None]  # [T(q), T(k)] causal
    if sliding_window is not None:
        allowed = allowed & (idx[None, :] > idx[:, None] - sliding_window)
    mask = allowed[None] & (segments[:, :, None] == segments[:, None, :])  # [B, T, T]
    if padding_mask is not None:
        keep = padding_mask.to(torch.bool)[:, None, :] | torch.eye(
            length, dtype=torch.bool, device=idx.device
        )
        mask = mask & keep
    return mask[:, None]


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask -> additive float mask of ``dtype`` (0 where attended, ``finfo(dtype).min`` elsewhere)."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


def block_causal_mask_mod(
    segments: torch.Tensor,
    *,
    sliding_window: int | None = None,
    padding_mask: torch.Tensor | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The flex-attention ``mask_mod(b, h, q, k) -> bool`` of :func:`block_causal_mask` (same arguments)."""
    keep = None if padding_mask is None else padding_mask.to(torch.bool)

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        allowed = (k <= q) & (segments[b, q] == segments[b, k])
        if sliding_window is not None:
            allowed = allowed & (k > q - sliding_window)
        if keep is not None:
            allowed = allowed & (keep[b, k] | (k == q))
        return allowed

    return mask_mod


FLEX_BLOCK_SIZE = 128
"""flex attention's (query and key) block size, torch's default, used by :func:`flex_block_mask`."""


def flex_block_mask(
    segments: torch.Tensor,
    *,
    sliding_window: int | None = None,
    padding_mask: torch.Tensor | None = None,
):
    """A flex-attention ``BlockMask`` for :func:`block_causal_mask_mod` over ``[B, T]`` segments.

    Without a sliding window or a padding mask (packed training rows) the block layout is read off the
    segment ids directly, :func:`_packed_block_mask`: a few ``O(B * T)`` / ``O(B * blocks^2)`` tensor
    ops and no host sync, instead of ``create_block_mask`` evaluating the mask on the whole
    ``[B, 1, T, T]`` grid. The result is the same ``BlockMask`` (same block counts, same index
    tensors, same ``mask_mod``). That path needs the segment ids non-decreasing along each row, as
    :func:`segment_ids` gives them.
    """
    batch, length = segments.shape
    mod = block_causal_mask_mod(segments, sliding_window=sliding_window, padding_mask=padding_mask)
    if sliding_window is None and padding_mask is None:
        try:
            return _packed_block_mask(segments, mod)
        except TypeError:  # a torch whose BlockMask takes other arguments (2.5 has no seq_lengths)
            pass
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mod, B=batch, H=None, Q_LEN=length, KV_LEN=length, device=segments.device)


def _packed_block_mask(segments: torch.Tensor, mask_mod: Callable, block: int = FLEX_BLOCK_SIZE):
    """``create_block_mask(mask_mod, B, None, T, T)`` for block-diagonal causal ``mask_mod`` over
    non-decreasing ``[B, T]`` segment ids, built from the segments' block layout.

    Query block ``i`` holds segments ``[first[i], last[i]]`` and key block ``j`` ``[first[j], last[j]]``
    (ids never decrease along a row). The pair ``(i, j)`` is

    * empty when ``j > i`` or ``last[j] < first[i]`` (no key at or before a query shares its segment;
      the diagonal ``j == i`` always has ``q == k``);
    * full when ``j < i``, block ``i`` has all ``block`` tokens and ``first[j] == last[i]`` (one
      segment from the first key to the last query, every key before every query). A diagonal block
      is causal, so never full, and neither is a block cut short by the end of the row:
      ``create_block_mask`` pads the grid with masked entries up to whole blocks;
    * partial otherwise.

    The index tensors list each row's blocks in increasing ``j`` followed by the other block indices,
    exactly as ``create_block_mask`` orders them (a stable descending argsort of the 0/1 layout); the
    query-major ones (``q_num_blocks``, ``q_indices``, ...) likewise from the transposed layout.
    """
    from torch.nn.attention.flex_attention import BlockMask

    length = segments.shape[-1]
    nblocks = -(-length // block)
    device = segments.device
    starts = torch.arange(nblocks, device=device) * block
    ends = (starts + block).clamp(max=length)
    first = segments.index_select(-1, starts)  # [B, n]
    last = segments.index_select(-1, ends - 1)
    idx = torch.arange(nblocks, device=device)
    causal = idx[None, :] <= idx[:, None]  # [n(q), n(kv)]
    below = idx[None, :] < idx[:, None]
    whole_q = (ends - starts == block)[:, None]  # query block i not cut short by the row's end
    nonempty = causal & (last[:, None, :] >= first[:, :, None])  # [B, n(q), n(kv)]
    full = (below & whole_q) & (first[:, None, :] == last[:, :, None])
    partial = nonempty & ~full

    def ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dense = dense[:, None].to(torch.int32)  # [B, 1, n, n]: one head, like create_block_mask
        indices = torch.argsort(dense, dim=-1, descending=True, stable=True)
        # contiguous, as the kernels expect (a transposed layout would otherwise pass its strides on)
        return dense.sum(-1, dtype=torch.int32).contiguous(), indices.to(torch.int32).contiguous()

    # the query-major tables too, from the same layouts: BlockMask.from_kv_blocks would rebuild them
    # from the key-major ones through a scatter (on the CPU most of this function's time)
    kv_num_blocks, kv_indices = ordered(partial)
    full_kv_num_blocks, full_kv_indices = ordered(full)
    q_num_blocks, q_indices = ordered(partial.mT)
    full_q_num_blocks, full_q_indices = ordered(full.mT)
    return BlockMask(
        seq_lengths=(length, length),
        kv_num_blocks=kv_num_blocks,
        kv_indices=kv_indices,
        full_kv_num_blocks=full_kv_num_blocks,
        full_kv_indices=full_kv_indices,
        q_num_blocks=q_num_blocks,
        q_indices=q_indices,
        full_q_num_blocks=full_q_num_blocks,
        full_q_indices=full_q_indices,
        BLOCK_SIZE=(block, block),
        mask_mod=mask_mod,
    )


def varlen_kwargs(position_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """Flash-attention varlen arguments for the batch flattened to one row of ``B * T`` tokens.

    Every row start and every sample start inside a row opens a new sequence, so samples of
    different rows and of the same row never see each other.

    Args:
        position_ids: ``[B, T]``.

    Returns:
        ``cu_seq_lens_q`` / ``cu_seq_lens_k``: int32 ``[S + 1]`` cumulative lengths of the ``S``
        sequences; ``max_length_q`` / ``max_length_k``: the longest sequence (int).
    """
    flat = segment_starts(position_ids).reshape(-1)
    starts = flat.nonzero().view(-1)
    total = torch.tensor([flat.numel()], device=flat.device, dtype=starts.dtype)
    cu_seqlens = torch.cat([starts, total]).to(torch.int32)
    longest = int(cu_seqlens.diff().max())
    return {
        "cu_seq_lens_q": cu_seqlens,
        "cu_seq_lens_k": cu_seqlens,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def segmented_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, plus a per-sample path for packed rows.

    Without sample offsets this *is* transformers' ``sdpa_attention_forward`` (same call, same
    result). With ``cu_seq_lens_q`` (int ``[S + 1]``, :func:`varlen_kwargs`) the batch must be one
    flattened row ``[1, heads, N, head_dim]``; each sample ``[cu[i], cu[i + 1])`` gets causal SDPA of
    its own, so no ``N x N`` mask is built and no score outside a sample is computed. The mask
    argument is ignored on that path (the offsets define the pattern). Returns ``[1, N, heads,
    head_dim]`` like every transformers attention function.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    offsets = kwargs.get("cu_seq_lens_q")
    if offsets is None:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    if query.shape[0] != 1:
        raise ValueError(f"sample offsets need one flattened row, got query of shape {tuple(query.shape)}")
    groups = query.shape[1] // key.shape[1]
    kernel = _varlen_kernel(query, dropout)
    # grouped-query attention: the varlen kernel takes the grouped key/value heads as they are; the
    # per-sample loop repeats them once for all samples
    if groups > 1 and (kernel is None or not VARLEN_GQA):
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if kernel is not None:  # one fused launch for every sample (CUDA, half precision)
        longest = kwargs.get("max_length_q")
        longest = int(offsets.diff().max()) if longest is None else int(longest)
        cu_seqlens = offsets.to(torch.int32)
        out = _run_varlen(kernel, query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                          cu_seqlens, longest, scaling)  # fmt: skip
        return out.unsqueeze(0), None
    bounds = kwargs.get("segment_bounds") or offsets.tolist()
    if bounds[0] != 0 or bounds[-1] != query.shape[2]:
        raise ValueError(f"sample offsets must run from 0 to the row's {query.shape[2]} tokens, got {bounds}")
    # one split per tensor, not a slice per sample: a slice's backward writes its gradient into a zero
    # tensor of the whole row, so S samples cost S full-row fills and adds; a split's backward is one cat
    sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    parts = zip(*(t.split(sizes, dim=2) for t in (query, key, value)))
    out = torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=True, scale=scaling
            )
            for q, k, v in parts
        ],
        dim=2,
    )
    return out.transpose(1, 2).contiguous(), None


USE_VARLEN_KERNEL = True
"""On CUDA, run packed samples through torch's fused varlen flash-attention kernel
(``torch.nn.attention.varlen.varlen_attn``, torch >= 2.9) in one launch instead of one SDPA call per
sample. Set to False to force the per-sample loop (benchmarks compare the two)."""


VARLEN_GQA = True
"""Pass grouped key/value heads to the varlen kernel as they are (flash attention maps each query head
to its group) instead of repeating them to the query's head count first; False repeats them."""


def _varlen_kernel(query: torch.Tensor, dropout: float):
    """torch's ``varlen_attn`` where it applies to ``query`` (CUDA, fp16/bf16, no dropout), else None."""
    if not USE_VARLEN_KERNEL or not query.is_cuda or dropout:
        return None
    if query.dtype not in (torch.float16, torch.bfloat16) or query.shape[-1] > 256:
        return None
    return _VARLEN_ATTN


try:  # resolved once: an import inside the call would sit in every compiled decoder layer
    from torch.nn.attention.varlen import varlen_attn as _VARLEN_ATTN
except ImportError:  # torch < 2.9
    _VARLEN_ATTN = None


@torch.compiler.disable
def _run_varlen(kernel, query, key, value, cu_seqlens, longest, scaling):
    """One causal varlen call, always eager: compiled decoder layers (``compile_layers``) break their
    graphs around it. The kernel's autograd under tracing is not verified on a GPU, its eager use is
    (fits whose loss falls), and on an H100 the compiled 0.6B step took the same time either way."""
    return kernel(
        query, key, value, cu_seqlens, cu_seqlens, longest, longest, scale=scaling, window_size=(-1, 0)
    )


def register_segmented_sdpa() -> str:
    """Register :func:`segmented_sdpa_forward` (and transformers' sdpa mask builder) under
    :data:`SEGMENTED_SDPA` in transformers' attention registries; idempotent. Returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(SEGMENTED_SDPA, segmented_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SEGMENTED_SDPA, sdpa_mask)
    return SEGMENTED_SDPA
