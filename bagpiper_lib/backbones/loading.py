"""Building and loading the wrapped transformers causal LM, and checking the arguments that choose it.

* :func:`build_random`: a random-init model from ``model_type`` + a config dict (seeded).
* :func:`load_pretrained`: a local directory (checked first, with a clear error when missing) or a
  hub id (only from the local Hugging Face cache unless ``local_files_only=False``).
* :func:`check_attn_implementation`: unknown or not-installed attention kernels fail early, naming
  what to install and what is usable here.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch

from bagpiper_lib.utils import seeded

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "check_attn_implementation",
    "parse_dtype",
    "build_random",
    "load_pretrained",
]

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
_INSTALL_HINTS = {
    "flash_attention_2": "pip install flash-attn --no-build-isolation (needs a CUDA GPU)",
    "flash_attention_3": "build flash-attn's 'hopper' package from source (needs an H100/H200 GPU)",
    "flex_attention": "upgrade torch to >= 2.5",
}
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def check_attn_implementation(name: str) -> None:
    """Raise a clear error when ``name`` is unknown or its kernel is not installed here."""
    from transformers.utils import (
        is_flash_attn_2_available,
        is_flash_attn_3_available,
        is_torch_flex_attn_available,
    )

    available = {
        "sdpa": True,
        "eager": True,
        "flex_attention": is_torch_flex_attn_available(),
        "flash_attention_2": is_flash_attn_2_available(),
        "flash_attention_3": is_flash_attn_3_available(),
    }
    usable = [k for k, ok in available.items() if ok]
    if name not in available:
        close = difflib.get_close_matches(str(name), list(available), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown attn_implementation {name!r}.{hint} Expected one of {list(ATTN_IMPLEMENTATIONS)}; "
            f"usable here: {usable}"
        )
    if not available[name]:
        raise ImportError(
            f"attn_implementation={name!r} is not available here: {_INSTALL_HINTS[name]}. Usable here: {usable}"
        )


def parse_dtype(dtype: str | torch.dtype | None, default: str | torch.dtype) -> str | torch.dtype:
    """``"bfloat16"`` / ``"bf16"`` / ``torch.bfloat16`` ... -> ``torch.dtype`` (``"auto"`` kept; ``None`` -> default)."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be a floating dtype among {sorted(set(_DTYPES))}, got {dtype}")
        return dtype
    if dtype == "auto" or dtype in _DTYPES:
        return _DTYPES.get(dtype, dtype)
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")


def _check_model_type(model_type: str | None) -> str:
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not model_type:
        raise ValueError(
            "a random-init backbone needs model_type (e.g. 'qwen3', 'llama', 'qwen2', 'mistral') and a "
            "config dict; or pass pretrained=<directory or hub id>, or preset='tiny'"
        )
    if model_type not in CONFIG_MAPPING or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        close = difflib.get_close_matches(model_type, list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"model_type {model_type!r} is not a transformers causal LM (AutoModelForCausalLM).{hint}"
        )
    return model_type


def build_random(
    model_type: str | None,
    config: dict,
    *,
    dtype: torch.dtype,
    seed: int,
    attn_implementation: str,
    trust_remote_code: bool,
) -> torch.nn.Module:
    """A seeded random-init ``AutoModelForCausalLM`` of ``model_type`` with config kwargs ``config``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not config:
        raise ValueError(
            f"backbone {model_type or ''!r} without pretrained= needs a config dict (full-size random init "
            "is never implicit); pass pretrained=<directory or hub id>, preset='tiny' or config={...}"
        )
    model_type = _check_model_type(model_type)
    cfg = AutoConfig.for_model(model_type, **config)
    with seeded(seed):
        return AutoModelForCausalLM.from_config(
            cfg, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
        )


def load_pretrained(
    pretrained: str | Path,
    *,
    model_type: str | None,
    overrides: dict,
    dtype: str | torch.dtype,
    attn_implementation: str,
    local_files_only: bool,
    trust_remote_code: bool,
    revision: str | None,
) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` of a local directory or hub id, with clear errors.

    ``overrides`` update the checkpoint's config; ``model_type``, when given, must match it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    source = str(pretrained)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"pretrained={source!r} is not a directory with config.json; expected one written by "
                "save_pretrained (config.json + model.safetensors)"
            )
        source = str(path)
    elif source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source:
        raise FileNotFoundError(
            f"pretrained={source!r} does not exist; expected a directory with config.json + "
            "model.safetensors, or a hub id like 'Qwen/Qwen3-8B-Base'"
        )
    hub = {"local_files_only": local_files_only, "revision": revision, "trust_remote_code": trust_remote_code}
    try:
        cfg = AutoConfig.from_pretrained(source, **hub, **overrides)
    except OSError as err:
        raise FileNotFoundError(
            f"pretrained={source!r} is neither an existing directory nor a hub id available "
            f"(local_files_only={local_files_only}; pass local_files_only=False to download): {err}"
        ) from err
    if model_type is not None and cfg.model_type != model_type:
        raise ValueError(
            f"pretrained={source!r} holds a {cfg.model_type!r} model, not {model_type!r}; use the "
            "'hf_causal_lm' backbone for other model types"
        )
    return AutoModelForCausalLM.from_pretrained(
        source, config=cfg, dtype=dtype, attn_implementation=attn_implementation, **hub
    )
