"""``hf``: any Hugging Face fast tokenizer, e.g. the one in the backbone's checkpoint directory.

Loaded with ``transformers.AutoTokenizer.from_pretrained(pretrained, local_files_only=True,
trust_remote_code=False)`` by default: a local directory, or a hub id already in the local Hugging Face
cache; nothing is downloaded unless ``local_files_only=False``.

``vocab_size`` is ``len(tokenizer)``, the base vocabulary plus every added token, so every id the
tokenizer can emit or name is in range. ``encode`` adds no special tokens (no bos/eos: the sequence
vocabulary owns them) and, by default, matches no added token either: the text runs through the
tokenizer's normaliser, pre-tokeniser and model only, so a caption that literally says
``"<|im_start|>"`` or ``"<think>"`` is tokenized as ordinary text, exactly as the ``qwen`` entry does.
``match_added_tokens=True`` restores Hugging Face's own behaviour (surface forms become their ids).
``decode`` keeps added tokens (their surface forms) and applies no clean-up of spaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bagpiper_lib.tokenizers.base import TextTokenizer, read_meta, write_meta

__all__ = ["HFTokenizer"]


class HFTokenizer(TextTokenizer):
    """A ``transformers`` tokenizer backed by the ``tokenizers`` library.

    Args:
        pretrained: a local directory with tokenizer files, or a hub id in the local HF cache.
        local_files_only: forbid network access (default ``True``).
        trust_remote_code: allow tokenizer code shipped with the checkpoint (default ``False``).
        match_added_tokens: let ``encode`` turn added tokens' surface forms into their ids (default:
            the value saved by :meth:`save_pretrained`, else ``False``).
    """

    name = "hf"

    def __init__(
        self,
        pretrained: str | Path | None = None,
        *,
        local_files_only: bool = True,
        trust_remote_code: bool = False,
        match_added_tokens: bool | None = None,
    ):
        if pretrained is None:
            raise ValueError(
                "hf tokenizer needs pretrained=<local directory with tokenizer files, or a hub id in the local cache>"
            )
        if not isinstance(pretrained, (str, Path)):
            raise TypeError(
                f"hf tokenizer: pretrained must be a str or Path, got {type(pretrained).__name__}"
            )
        saved: dict[str, Any] = {}
        if Path(pretrained).is_dir():
            _, saved = read_meta(pretrained, self.name, required=False)
        if match_added_tokens is None:
            match_added_tokens = saved.get("match_added_tokens", False)
        if not isinstance(match_added_tokens, bool):
            raise TypeError(f"hf tokenizer: match_added_tokens must be a bool, got {match_added_tokens!r}")
        self.pretrained = str(pretrained)
        self.local_files_only = local_files_only
        self.trust_remote_code = trust_remote_code
        self.match_added_tokens = match_added_tokens
        self.tokenizer = _auto_tokenizer(self.pretrained, local_files_only, trust_remote_code)
        self._backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if self._backend is None:
            raise TypeError(
                f"hf tokenizer: {self.pretrained!r} loads as {type(self.tokenizer).__name__}, which is not backed by "
                "the `tokenizers` library; save a fast tokenizer (tokenizer.json) in the directory"
            )
        self.vocab_size = len(self.tokenizer)

    def _encode(self, text: str) -> list[int]:
        if self.match_added_tokens:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        backend = self._backend
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = (
            [text]
            if backend.pre_tokenizer is None
            else [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
        )
        return [token.id for piece in pieces for token in backend.model.tokenize(piece)]

    def _decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=False)

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "local_files_only": self.local_files_only,
            "trust_remote_code": self.trust_remote_code,
            "match_added_tokens": self.match_added_tokens,
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = write_meta(directory, self.name, {"match_added_tokens": self.match_added_tokens})
        self.tokenizer.save_pretrained(str(directory))
        return directory

    def __repr__(self) -> str:
        return f"HFTokenizer({self.pretrained!r}, vocab_size={self.vocab_size}, class={type(self.tokenizer).__name__})"


def _auto_tokenizer(pretrained: str, local_files_only: bool, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer  # heavy import, only when an hf tokenizer is built

    path = Path(pretrained)
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(
            f"hf tokenizer: pretrained {pretrained!r} is a file; expected a directory or hub id"
        )
    try:
        return AutoTokenizer.from_pretrained(
            pretrained, local_files_only=local_files_only, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as err:
        if path.is_dir():
            found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            raise ValueError(
                f"hf tokenizer: directory {pretrained!r} holds no loadable Hugging Face tokenizer (found: {found}); "
                f"expected tokenizer.json / tokenizer_config.json. transformers said: {err}"
            ) from err
        where = "is not an existing directory nor a hub id in the local Hugging Face cache"
        if not local_files_only:
            where = "is not an existing directory and could not be fetched from the hub"
        raise FileNotFoundError(
            f"hf tokenizer: pretrained {pretrained!r} {where} (local_files_only={local_files_only}). "
            f"transformers said: {err}"
        ) from err
