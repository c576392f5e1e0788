"""Shared offline fixtures: a tiny byte-level BPE tokenizer wrapped as a transformers fast tokenizer."""

from __future__ import annotations

import pytest

SENTENCES = [
    "A dog barks loudly in a quiet park.",
    "A slow piano melody with soft strings.",
    "Fast rock music with electric guitar and drums at 140 BPM.",
    "Heavy rain falls on a tin roof while thunder rolls.",
    "A woman speaks calmly: the meeting starts at nine.",
    "Description: Question: Answer: dog cat piano rain guitar fast slow",
]


@pytest.fixture(scope="session")
def fast_tokenizer():
    """``PreTrainedTokenizerFast`` with RoBERTa-like specials (<s>=0, <pad>=1, </s>=2, <unk>=3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(SENTENCES * 4, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
