"""``Backbone``: a Hugging Face decoder-only causal LM body run on ``inputs_embeds`` -> hidden ``[B, T, H]``.

Design:

* **Body and head.** The whole ``AutoModelForCausalLM`` is kept as ``self.lm`` (so ``save_pretrained``
  writes a normal transformers checkpoint), ``forward`` runs only its body (``lm.base_model``, the
  ``AutoModel`` part: decoder layers + final norm). The pretrained input embedding table and LM head
  stay available through :meth:`Backbone.text_embeddings` / :meth:`Backbone.lm_head_weight` so the
  model layer can copy text rows into its extended multimodal vocabulary. Neither takes part in
  ``forward``, so both are always frozen (``requires_grad=False``); a tied head is the very same
  tensor as the embedding table (no second copy in memory). Once copied, the model frees them
  (:meth:`Backbone.release_token_tables`); :meth:`Backbone.save_pretrained` then takes the rows to
  write whole tables again.
* **Packing.** ``position_ids`` that restart inside a row mark packed samples. When they do, the
  backbone builds the isolation itself (block-diagonal causal mask for ``sdpa`` / ``eager`` /
  ``flex_attention``; varlen sequence offsets for ``flash_attention_*``, see
  :mod:`bagpiper_lib.backbones.packing`) instead of relying on transformers' implicit inference,
  which only happens in some code paths and leaks across samples in others.
* **KV cache.** :meth:`Backbone.allocate_cache` returns a transformers ``StaticCache`` preallocated for
  ``[batch, max_len]``; ``forward(..., cache=cache)`` writes the new keys/values into it in place and
  still returns only the hidden states, so the return type never changes. Any transformers ``Cache``
  (e.g. ``DynamicCache``) works the same way.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from bagpiper_lib.backbones import packing
from bagpiper_lib.backbones.loading import (
    build_random,
    check_attn_implementation,
    load_pretrained,
    parse_dtype,
)

__all__ = ["Backbone"]

_FLASH = ("flash_attention_2", "flash_attention_3")
_MASKED_LAYER_TYPES = ("full_attention", "sliding_attention")


class Backbone(torch.nn.Module):
    """A decoder-only causal LM body from transformers (Qwen3, Llama or any ``AutoModelForCausalLM`` type).

    Args:
        pretrained: a local directory with ``config.json`` + weights (e.g. written by
            :meth:`save_pretrained`) or a hub id such as ``"Qwen/Qwen3-8B-Base"``.
        model_type: the transformers ``model_type`` to build (``"qwen3"``, ``"llama"``, ...). With
            ``pretrained`` it is checked against the checkpoint's type.
        config: config keyword arguments: for a random-init model the whole config; with
            ``pretrained`` overrides of the checkpoint's config. May carry ``"model_type"``.
        attn_implementation: ``"sdpa"`` (default), ``"eager"``, ``"flex_attention"``,
            ``"flash_attention_2"`` or ``"flash_attention_3"``.
        dtype: ``"float32"`` / ``"bfloat16"`` / ``"float16"`` (or a ``torch.dtype``); ``None`` is
            float32 for random init and the checkpoint's stored dtype (``"auto"``) for ``pretrained``.
        gradient_checkpointing: recompute decoder layers in backward (train mode only).
        compile_layers: ``torch.compile`` each decoder layer (regional compilation, see
            :meth:`compile_layers`); ``True`` for the defaults or a dict of ``torch.compile`` options
            (and ``activation_memory_budget``).
        trainable: ``False`` freezes every parameter (the training recipe's warm-up stage).
        seed: RNG seed of random init, so a preset builds the same weights every time.
        local_files_only: never download (default); set ``False`` to fetch a hub id.
        trust_remote_code: run a checkpoint's own modeling code; off unless asked for.
        revision: hub revision (branch, tag or commit) of a hub id.
    """

    def __init__(
        self,
        pretrained: str | Path | None = None,
        *,
        model_type: str | None = None,
        config: dict[str, Any] | None = None,
        attn_implementation: str = "sdpa",
        dtype: str | torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        compile_layers: bool | dict[str, Any] = False,
        trainable: bool = True,
        seed: int = 0,
        local_files_only: bool = True,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ):
        super().__init__()
        check_attn_implementation(attn_implementation)
        config = dict(config or {})
        if "model_type" in config:
            config_type = config.pop("model_type")
            if model_type is not None and config_type != model_type:
                raise ValueError(f"model_type={model_type!r} but config has model_type={config_type!r}")
            model_type = config_type
        kernel = {
            "attn_implementation": _registry_name(attn_implementation),
            "trust_remote_code": bool(trust_remote_code),
        }
        if pretrained is not None:
            self.lm = load_pretrained(
                pretrained,
                model_type=model_type,
                overrides=config,
                dtype=parse_dtype(dtype, "auto"),
                local_files_only=local_files_only,
                revision=revision,
                **kernel,
            )
        else:
            dtype = parse_dtype(dtype, torch.float32)
            self.lm = build_random(model_type, config, dtype=dtype, seed=seed, **kernel)
        cfg = self.lm.config
        self.hidden_size: int = int(cfg.hidden_size)
        self.vocab_size: int = int(cfg.vocab_size)
        self.max_position_embeddings: int | None = getattr(cfg, "max_position_embeddings", None)
        self.model_type: str = str(cfg.model_type)
        body_args = inspect.signature(self.body.forward).parameters
        self._cache_kwarg = "cache" if "cache" in body_args else "past_key_values"
        self.released: bool = False  # see release_token_tables
        self._spare_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._released_tied = False
        self.set_gradient_checkpointing(gradient_checkpointing)
        self.set_trainable(trainable)
        self.layers_compiled: bool = False
        if compile_layers:
            self.compile_layers(**(compile_layers if isinstance(compile_layers, dict) else {}))
        # Decode steps of Llama-family bodies run the layers directly (see _direct_decode); False
        # always goes through the transformers model (e.g. to have forward hooks on its layers run).
        self.direct_decode: bool = True

    # ------------------------------------------------------------------ structure
    @property
    def config(self):
        """The transformers ``PreTrainedConfig`` of the wrapped model."""
        return self.lm.config

    @property
    def body(self) -> torch.nn.Module:
        """The ``AutoModel`` part (decoder layers + final norm) that ``forward`` runs."""
        return self.lm.base_model

    @property
    def attn_implementation(self) -> str:
        """The kernel name as given (``"sdpa"``, ``"eager"``, ...)."""
        name = str(self.lm.config._attn_implementation)
        return "sdpa" if name == packing.SEGMENTED_SDPA else name

    @property
    def tied_head(self) -> bool:
        """True when the LM head shares its weight with the input embedding table."""
        if self.released:
            return self._released_tied
        head = self.lm.get_output_embeddings()
        return head is not None and head.weight is self.lm.get_input_embeddings().weight

    def text_embeddings(self) -> torch.Tensor:
        """The pretrained input embedding table ``[V, H]`` (detached view, no copy)."""
        self._check_tables("text_embeddings")
        return self.lm.get_input_embeddings().weight.detach()

    def lm_head_weight(self) -> torch.Tensor | None:
        """The pretrained LM head ``[V, H]`` (detached view; the embedding table itself when tied),
        or ``None`` for a model without an output projection."""
        self._check_tables("lm_head_weight")
        head = self.lm.get_output_embeddings()
        return None if head is None else head.weight.detach()

    def _check_tables(self, what: str) -> None:
        if self.released:
            raise RuntimeError(
                f"{what}: this backbone's token tables were released (release_token_tables); the model "
                "that copied their rows holds them now"
            )

    def release_token_tables(self, keep: int) -> None:
        """Drop the input embedding table and LM head once a model has copied their first ``keep`` rows.

        ``forward`` never uses them (it runs the body on ``inputs_embeds``), yet they are the largest
        tensors of a causal LM: two ``[V, H]`` tables, about 2.5 GB in bf16 for Qwen3-8B. Rows from
        ``keep`` on (ids the tokenizer never emits, e.g. Qwen's padding rows) are kept aside so that
        :meth:`save_pretrained` can write whole tables again from the ``keep`` rows it is given.
        Idempotent.

        Args:
            keep: rows ``[0, keep)`` the model took over (its text vocabulary size).
        """
        if self.released:
            return
        embed = self.lm.get_input_embeddings()
        if not 0 < keep <= embed.weight.shape[0]:
            raise ValueError(f"keep must be in [1, {embed.weight.shape[0]}], got {keep}")
        head = self.lm.get_output_embeddings()
        tied = self.tied_head
        spare_head = None if head is None or tied else head.weight.detach()[keep:].clone()
        self._spare_rows = (embed.weight.detach()[keep:].clone(), spare_head)
        self._released_tied, self._kept_rows = tied, int(keep)
        # where the tables live (set_output_embeddings is a no-op for some transformers models)
        names = {id(m): n for n, m in self.lm.named_modules()}
        self._table_paths = (names[id(embed)], None if head is None else names[id(head)])
        self._set_tables(None, None)
        self.released = True

    def _set_tables(self, embed: torch.nn.Module | None, head: torch.nn.Module | None) -> None:
        for path, module in zip(self._table_paths, (embed, head)):
            if path is None:
                continue
            parent, _, name = path.rpartition(".")
            setattr(self.lm.get_submodule(parent) if parent else self.lm, name, module)

    def _install_tables(self, embed_rows: torch.Tensor, head_rows: torch.Tensor | None) -> None:
        """Whole tables again, from the model's ``[keep, H]`` rows and the spare rows (for saving)."""
        spare_embed, spare_head = self._spare_rows
        shape = (self._kept_rows, self.hidden_size)
        for name, rows in (("embed", embed_rows), ("head", head_rows)):
            if rows is not None and tuple(rows.shape) != shape:
                raise ValueError(f"token_tables {name} rows must have shape {shape}, got {tuple(rows.shape)}")
        table = torch.cat([embed_rows.detach().to(spare_embed), spare_embed])
        embed = torch.nn.Embedding(*table.shape, dtype=table.dtype)
        embed.weight = torch.nn.Parameter(table, requires_grad=False)
        head = None
        if self._table_paths[1] is not None:  # the model has an LM head
            head = torch.nn.Linear(self.hidden_size, table.shape[0], bias=False, dtype=table.dtype)
            if self._released_tied:
                head.weight = embed.weight
            else:
                if head_rows is None:
                    raise ValueError("token_tables needs head rows: this backbone's LM head is not tied")
                weight = torch.cat([head_rows.detach().to(spare_head), spare_head])
                head.weight = torch.nn.Parameter(weight, requires_grad=False)
        self._set_tables(embed, head)

    # ------------------------------------------------------------------ switches
    def set_trainable(self, trainable: bool) -> None:
        """Freeze (``False``) or unfreeze the body. The embedding table and head stay frozen."""
        self.trainable = bool(trainable)
        self.lm.requires_grad_(False)
        if self.trainable:
            self.body.requires_grad_(True)
            embed = self.lm.get_input_embeddings()
            if embed is not None:
                embed.requires_grad_(False)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Turn activation recomputation of the decoder layers on or off (applies in train mode)."""
        self.gradient_checkpointing = bool(enabled)
        lm = self.lm
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.x names
            if enabled:
                lm.activation_checkpointing_enable({"use_reentrant": False})
            else:
                lm.activation_checkpointing_disable()
        elif enabled:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_disable()

    def compile_layers(self, enabled: bool = True, **options: Any) -> None:
        """``torch.compile`` every decoder layer in place (or undo it with ``enabled=False``).

        Regional compilation: the layers share one class and one compiled graph (parameters are graph
        inputs), so a 28-layer body compiles once, and the elementwise work between the matmuls
        (RMSNorm in float32, rotary, SwiGLU) fuses into a few kernels. Parameter names, state dicts and
        checkpoints are unchanged; decode steps run the layers' submodules directly (not compiled).
        Where it pays: CUDA training; the first steps pay the compilation (tens of seconds), and new
        shapes (another packed row length, a prefill length) may compile again.

        Args:
            enabled: compile (True) or restore the eager layers (False).
            **options: ``torch.compile`` keyword arguments (``mode``, ``backend``, ``dynamic``,
                ``fullgraph``, ``options``), and ``activation_memory_budget``: a fraction in (0, 1] of
                the activations the compiled layers save for backward by default; below 1 the
                partitioner recomputes the cheapest ones in backward instead (torch's
                ``torch._functorch.config.activation_memory_budget``, applied to these layers only).
                At the Qwen3-0.6B shapes, 0.7 saved 42 KB per token and layer instead of 57 KB, and 0.5
                saved 34 KB (eager layers: 83 KB).
        """
        known = {"mode", "backend", "dynamic", "fullgraph", "options", "disable", "activation_memory_budget"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"compile_layers: unknown torch.compile option(s) {unknown}; known: {sorted(known)}"
            )
        budget = options.pop("activation_memory_budget", None)
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1
        ):
            raise ValueError(
                f"compile_layers: activation_memory_budget must be a number in (0, 1], got {budget!r}"
            )
        if budget is not None:
            from torch._functorch import config as functorch_config

            if not hasattr(functorch_config, "activation_memory_budget"):
                raise ValueError(
                    f"compile_layers: activation_memory_budget needs a torch whose partitioner has it "
                    f"(torch._functorch.config.activation_memory_budget); this is torch {torch.__version__}"
                )
        layers = getattr(self.body, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
            raise ValueError(
                f"compile_layers: the {self.model_type!r} body has no `layers` ModuleList to compile"
            )
        for layer in layers:
            if not enabled:
                layer._compiled_call_impl = None
            elif budget is None:
                layer.compile(**options)
            else:
                layer._compiled_call_impl = _with_memory_budget(
                    torch.compile(layer._call_impl, **options), budget
                )
        self.layers_compiled = bool(enabled)

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch the attention kernel of a built backbone (same names as the constructor)."""
        check_attn_implementation(attn_implementation)
        self.lm.set_attn_implementation(_registry_name(attn_implementation))

    # ------------------------------------------------------------------ running
    def allocate_cache(
        self,
        batch_size: int,
        max_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        """A preallocated ``transformers.StaticCache`` of ``max_len`` positions for ``batch_size`` rows.

        Keys/values live in tensors ``[batch_size, kv_heads, max_len, head_dim]`` per layer (device and
        dtype default to the backbone's); attention only sees the filled prefix. Use it as::

            cache = backbone.allocate_cache(B, prompt_len + max_new_tokens)
            hidden = backbone(prompt [B, P, H], positions [B, P], cache=cache)        # prefill
            hidden = backbone(step [B, 1, H], positions [B, 1], cache=cache)          # each step

        ``cache.reset()`` empties it for reuse.
        """
        from transformers import StaticCache

        if batch_size < 1 or max_len < 1:
            raise ValueError(
                f"allocate_cache needs batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}"
            )
        if self.max_position_embeddings is not None and max_len > self.max_position_embeddings:
            raise ValueError(
                f"allocate_cache max_len={max_len} exceeds the model's max_position_embeddings="
                f"{self.max_position_embeddings}"
            )
        cfg = self.lm.config
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or self.hidden_size // heads)
        weight = self._body_weight()
        cache = StaticCache(config=cfg, max_cache_len=max_len)
        cache.early_initialization(
            batch_size, kv_heads, head_dim, dtype or weight.dtype, torch.device(device or weight.device)
        )
        return cache

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        *,
        cache=None,
        **attention_kwargs: Any,
    ) -> torch.Tensor:
        """Run the body on embeddings.

        Args:
            inputs_embeds: ``[B, T, H]`` (cast to the backbone's dtype).
            position_ids: ``[B, T]`` integer positions. Restarts inside a row (any step other than +1)
                start a new packed sample; samples never attend to each other.
            cache: a transformers ``Cache`` (see :meth:`allocate_cache`), updated in place. Packed
                rows cannot use a cache. Without one, nothing is cached (``use_cache=False``).
            **attention_kwargs: passed to the transformers body, e.g. a 2D padding
                ``attention_mask [B, T]`` (``[B, past + T]`` with a cache; combined with the packing
                mask), or a custom 4D mask / per-layer-type dict (used as given). ``past_key_values``
                is accepted as an alias of ``cache``.

        Returns:
            hidden ``[B, T, H]``: the body's final-norm output.
        """
        if "past_key_values" in attention_kwargs:
            if cache is not None:
                raise ValueError("pass the KV cache as cache= or past_key_values=, not both")
            cache = attention_kwargs.pop("past_key_values")
        use_cache = attention_kwargs.pop("use_cache", None)
        if use_cache and cache is None:
            raise ValueError(
                "use_cache=True needs a cache: pass cache=backbone.allocate_cache(batch, max_len)"
            )
        if use_cache is False and cache is not None:
            raise ValueError("use_cache=False contradicts the cache that was passed; drop one of them")
        x = self._check_inputs(inputs_embeds, position_ids)
        packed, filled = self._check_positions(position_ids, cache)
        mask = attention_kwargs.pop("attention_mask", None)
        custom_mask = isinstance(mask, dict) or (mask is not None and mask.dim() != 2)
        if packed and not custom_mask:
            if cache is not None:
                raise ValueError(
                    "position_ids restart inside a row (packed samples), which cannot be decoded with a "
                    "KV cache; run packed rows without cache, and one sample per row when caching"
                )
            if self.attn_implementation in _FLASH or (mask is None and self._segmented_sdpa):
                return self._forward_varlen(x, position_ids, mask, attention_kwargs)
            mask = self._packed_mask(x, position_ids, mask)
        if cache is not None and not attention_kwargs and self._can_decode_directly(x, cache, mask):
            return self._direct_decode(x, position_ids, cache, mask, filled)
        if cache is not None:  # transformers < 5.x calls it past_key_values
            attention_kwargs[self._cache_kwarg] = cache
        out = self.body(
            inputs_embeds=x,
            position_ids=position_ids,
            attention_mask=mask,
            use_cache=cache is not None,
            **attention_kwargs,
        )
        return out.last_hidden_state

    def _forward_varlen(self, x, position_ids, mask, attention_kwargs) -> torch.Tensor:
        """Flash-attention path: flatten ``[B, T]`` to one row and give the kernel the sample offsets."""
        if mask is not None:
            raise ValueError(
                f"attn_implementation={self.attn_implementation!r} with packed position_ids takes no 2D "
                "attention_mask (the varlen kernel ignores it); give padding its own restarting positions"
            )
        batch, length, hidden = x.shape
        offsets = packing.varlen_kwargs(position_ids)
        if self._segmented_sdpa:
            # Per-sample SDPA needs no mask: a stride-0 4D placeholder (no memory) makes transformers
            # skip building its own (B*T)^2 packed mask; the kernel ignores it when offsets are given.
            total = batch * length
            attention_kwargs["attention_mask"] = torch.ones((), dtype=torch.bool, device=x.device).expand(
                1, 1, total, total
            )
            if not self.layers_compiled:  # a list argument would make every new packing recompile
                attention_kwargs["segment_bounds"] = offsets["cu_seq_lens_q"].tolist()
        out = self.body(
            inputs_embeds=x.reshape(1, batch * length, hidden),
            position_ids=position_ids.reshape(1, batch * length),
            use_cache=False,
            **offsets,
            **attention_kwargs,
        )
        return out.last_hidden_state.reshape(batch, length, hidden)

    def _can_decode_directly(self, x: torch.Tensor, cache, mask) -> bool:
        """One new position per row, a static cache, a full-attention Llama-family body, inference."""
        if not self.direct_decode or x.shape[1] != 1 or self.body.training:
            return False
        if self.model_type not in _DIRECT_DECODE_TYPES or self.attn_implementation != "sdpa":
            return False
        if mask is not None and (mask.dim() != 2 or mask.shape[0] != x.shape[0]):
            return False
        layers = getattr(cache, "layers", None)
        if not layers or not all(hasattr(layer, "cumulative_length") for layer in layers):
            return False  # a StaticCache (transformers >= 5) only
        types = getattr(self.lm.config, "layer_types", None) or ["full_attention"]
        if set(types) != {"full_attention"} or len(layers) != len(self.body.layers):
            return False
        # FSDP gathers (and casts) a layer's weights in the layer's own forward, which the direct path
        # skips: it reads the submodules' weights as they are between forwards (sharded, float32)
        return not any(_sharded_unit(layer) for layer in self.body.layers)

    def _direct_decode(
        self, x: torch.Tensor, position_ids: torch.Tensor, cache, mask, cached: int
    ) -> torch.Tensor:
        """A decode step through the same modules and math as the transformers body, minus its per-call
        machinery (mask building, output capture, keyword plumbing), which costs most of a small step.

        Keys and values go into the static cache exactly as ``StaticLayer.update`` puts them; attention
        reads only the filled prefix, so no mask is needed beyond the optional 2D padding mask
        ``[B, >= past + 1]``. Equality with the transformers path is tested per architecture.
        ``cached`` is the cache's fill before this step (read once, in :meth:`_check_positions`).
        """
        body = self.body
        filled = cached + 1  # cached positions after this step
        if mask is not None and mask.shape[1] < filled:
            raise ValueError(
                f"attention_mask covers {mask.shape[1]} positions; a decode step with {filled - 1} cached "
                f"needs [B, >= {filled}]"
            )
        keep = None if mask is None else mask[:, None, None, :filled].bool()
        rotary = _rotary_function(body.layers[0].self_attn)
        cos, sin = body.rotary_emb(x, position_ids)
        hidden = x
        for layer, kv in zip(body.layers, cache.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(hidden)
            heads = (*h.shape[:-1], -1, attn.head_dim)
            q, k, v = attn.q_proj(h).view(heads), attn.k_proj(h).view(heads), attn.v_proj(h).view(heads)
            if getattr(attn, "q_norm", None) is not None:  # Qwen3: per-head RMSNorm of q and k
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            keys, values = kv.update(k, v.transpose(1, 2))
            out = _attend(q, keys[:, :, :filled], values[:, :, :filled], keep, attn.scaling)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(*h.shape[:-1], -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return body.norm(hidden)

    @property
    def _segmented_sdpa(self) -> bool:
        """Packed rows run per-sample SDPA: the sdpa kernel on a model whose layers are all full attention."""
        types = getattr(self.lm.config, "layer_types", None) or ["full_attention"]
        return self.lm.config._attn_implementation == packing.SEGMENTED_SDPA and set(types) == {
            "full_attention"
        }

    def _packed_mask(self, x: torch.Tensor, position_ids: torch.Tensor, padding: torch.Tensor | None):
        """Block-diagonal causal mask(s) in the form the attention implementation takes."""
        cfg = self.lm.config
        layer_types = list(dict.fromkeys(getattr(cfg, "layer_types", None) or ["full_attention"]))
        unsupported = [t for t in layer_types if t not in _MASKED_LAYER_TYPES]
        if unsupported:
            raise ValueError(
                f"packed position_ids on a {self.model_type!r} model with layer types {unsupported}: only "
                f"{list(_MASKED_LAYER_TYPES)} layers can be isolated; pass one sample per row"
            )
        segments = packing.segment_ids(position_ids)
        impl = self.attn_implementation

        def build(layer_type: str):
            window = getattr(cfg, "sliding_window", None) if layer_type == "sliding_attention" else None
            if impl == "flex_attention":
                return packing.flex_block_mask(segments, sliding_window=window, padding_mask=padding)
            mask = packing.block_causal_mask(segments, sliding_window=window, padding_mask=padding)
            return mask if impl == "sdpa" else packing.additive_mask(mask, x.dtype)

        masks = {t: build(t) for t in layer_types}
        return masks["full_attention"] if layer_types == ["full_attention"] else masks

    def _check_inputs(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Shape/dtype checks; returns ``inputs_embeds`` in the backbone's dtype."""
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3:
            raise ValueError(
                f"inputs_embeds must be [B, T, H={self.hidden_size}], got {_describe(inputs_embeds)}"
            )
        if inputs_embeds.shape[-1] != self.hidden_size:
            raise ValueError(
                f"inputs_embeds must be [B, T, H] with H = hidden_size = {self.hidden_size}, "
                f"got {_describe(inputs_embeds)}"
            )
        if not inputs_embeds.is_floating_point():
            raise TypeError(f"inputs_embeds must be a float tensor, got {inputs_embeds.dtype}")
        batch, length = inputs_embeds.shape[:2]
        if length == 0:
            raise ValueError("inputs_embeds has no time steps (T = 0)")
        if not isinstance(position_ids, torch.Tensor) or tuple(position_ids.shape) != (batch, length):
            raise ValueError(
                f"position_ids must be [B, T] = {(batch, length)} like inputs_embeds, got {_describe(position_ids)}"
            )
        if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
            raise TypeError(f"position_ids must be an integer tensor, got {position_ids.dtype}")
        # Length limits are checked on position values (_check_positions): a packed row may be longer
        # than max_position_embeddings as long as no sample in it is.
        dtype = self._body_dtype()
        return inputs_embeds if inputs_embeds.dtype == dtype else inputs_embeds.to(dtype)

    def _body_dtype(self) -> torch.dtype:
        """The dtype the body computes in (cheap enough to ask on every decode step)."""
        return self._body_weight().dtype

    def _body_weight(self) -> torch.Tensor:
        """The body's final norm weight (else its first floating weight): its dtype and device are the
        ones the body computes in, also inside an FSDP mixed-precision forward, where the root unit
        holding the norm is gathered in the compute dtype while decoder layers are not yet."""
        weight = getattr(getattr(self.body, "norm", None), "weight", None)
        if isinstance(weight, torch.Tensor):
            return weight
        return next(p for p in self.body.parameters() if p.is_floating_point())

    def _check_positions(self, position_ids: torch.Tensor, cache) -> tuple[bool, int | None]:
        """Validate position values (one host sync); return whether any row is packed and how many
        positions the cache holds (``None`` without a cache)."""
        limit = self.max_position_embeddings
        low, high = torch.aminmax(position_ids)
        if position_ids.shape[1] == 1:  # one position per row (a decode step): nothing can restart
            restarts = torch.zeros((), dtype=torch.bool, device=position_ids.device)
        else:
            restarts = packing.segment_starts(position_ids)[:, 1:].any()
        flags = torch.stack([restarts, low < 0, high >= (limit or 0)])
        packed, negative, too_far = flags.tolist()
        if negative:
            raise ValueError(f"position_ids must be >= 0, got min {int(position_ids.min())}")
        if limit is not None and too_far:
            raise ValueError(
                f"position_ids reach {int(position_ids.max())}, beyond the model's max_position_embeddings={limit} "
                f"(positions 0..{limit - 1})"
            )
        filled = None
        if cache is not None:
            capacity = cache.get_max_length() if getattr(cache, "layers", None) else -1  # -1: unbounded
            filled = int(cache.get_seq_length())
            if capacity > 0 and filled + position_ids.shape[1] > capacity:
                raise ValueError(
                    f"KV cache holds {capacity} positions, {filled} are filled; {position_ids.shape[1]} more do "
                    "not fit: allocate_cache(batch, max_len) with a larger max_len"
                )
        return bool(packed), filled

    def save_pretrained(
        self,
        directory: str | Path,
        token_tables: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> Path:
        """Write the causal LM (body + head) as ``config.json`` + safetensors, readable by ``pretrained=``.

        Args:
            token_tables: after :meth:`release_token_tables`, the ``[keep, H]`` embedding and LM head
                rows to write (the head rows may be ``None`` for a tied head): they and the spare rows
                make whole tables again, so the directory is a normal transformers checkpoint.
        """
        directory = Path(directory)
        if not self.released:
            self.lm.save_pretrained(str(directory))
            return directory
        if token_tables is None:
            raise ValueError(
                "this backbone's token tables were released: pass token_tables=(embed_rows, head_rows) "
                "(BagpiperModel.save_pretrained does)"
            )
        self._install_tables(*token_tables)
        try:
            self.lm.save_pretrained(str(directory))
        finally:
            self._set_tables(None, None)
        return directory

    def extra_repr(self) -> str:
        return (
            f"model_type={self.model_type!r}, hidden_size={self.hidden_size}, attn={self.attn_implementation!r}, "
            f"trainable={self.trainable}, gradient_checkpointing={self.gradient_checkpointing}, "
            f"layers_compiled={self.layers_compiled}"
        )


_DIRECT_DECODE_TYPES = ("qwen3", "qwen2", "llama")
_SDPA_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa=


def _sharded_unit(module: torch.nn.Module) -> bool:
    """True for an FSDP unit: a ``FullyShardedDataParallel`` wrapper or a ``fully_shard``-ed module."""
    return hasattr(module, "_fsdp_wrapped_module") or any(
        cls.__name__ == "FSDPModule" for cls in type(module).__mro__
    )


def _rotary_function(attention: torch.nn.Module):
    """The ``apply_rotary_pos_emb`` of the attention module's own modeling file."""
    import sys

    return sys.modules[type(attention).__module__].apply_rotary_pos_emb


def _attend(q, keys, values, keep, scale) -> torch.Tensor:
    """SDPA of ``q [B, Hq, 1, D]`` over ``keys/values [B, Hkv, S, D]`` (grouped heads), ``keep [B, 1, 1, S]``."""
    groups = q.shape[1] // keys.shape[1]
    if groups > 1 and not _SDPA_GQA:
        keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
    extra = {"enable_gqa": True} if groups > 1 and _SDPA_GQA else {}
    return torch.nn.functional.scaled_dot_product_attention(
        q, keys, values, attn_mask=keep, scale=scale, **extra
    )


def _with_memory_budget(compiled, budget: float):
    """``compiled`` called with the partitioner's activation memory budget set to ``budget``: the
    forward and backward graphs are split when the compiled function first runs, so the setting holds
    for these calls and leaves the process's default alone."""
    from torch._functorch import config as functorch_config

    def call(*args, **kwargs):
        with functorch_config.patch(activation_memory_budget=float(budget)):
            return compiled(*args, **kwargs)

    return call


def _registry_name(attn_implementation: str) -> str:
    """The transformers registry name of a kernel: ``sdpa`` is :data:`packing.SEGMENTED_SDPA` (transformers'
    sdpa, plus per-sample attention for packed rows); every other name is transformers' own."""
    return packing.register_segmented_sdpa() if attn_implementation == "sdpa" else attn_implementation


def _describe(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
