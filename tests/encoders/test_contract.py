"""Every registered encoder honours the AudioEncoder contract the model relies on."""

from __future__ import annotations

import pytest
import torch

from bagpiper_lib import encoders

NAMES = ["whisper", "qwen3_omni", "hubert", "wavlm", "mel"]


@pytest.fixture(scope="module", params=NAMES)
def encoder(request):
    return encoders.build({"name": request.param, "preset": "tiny"})


def test_all_entries_registered():
    assert set(NAMES) <= set(encoders.available())
    assert encoders.DEFAULT == "qwen3_omni"


@pytest.mark.parametrize("seconds", [0.31, 0.5, 1.0])
def test_num_frames_predicts_the_forward_lengths(encoder, seconds):
    """The sequence builder sizes placeholders with num_frames before encoding: it must be exact."""
    n = int(seconds * encoder.sample_rate)
    lengths = torch.tensor([n, n - 137])
    feats, out = encoder(0.1 * torch.randn(2, n), lengths)
    assert torch.equal(encoder.num_frames(lengths), out)
    assert feats.shape == (2, int(out.max()), encoder.output_dim)
