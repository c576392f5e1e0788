"""The model on a CUDA device: sampling, synthesis and sample building mix devices correctly.

Skipped without CUDA (CI); run on a GPU machine with ``pytest tests/model/test_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch

from bagpiper_lib.model import PRESETS, BagpiperModel
from bagpiper_lib.sequence.messages import Message

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def models():
    cpu = BagpiperModel.from_config(PRESETS["tiny"]).eval()
    with torch.no_grad():  # make codec ids likely enough that audio decoding runs for a while
        cpu.head.weight[cpu.vocab.codec_offset :] *= 4
    gpu = BagpiperModel.from_config(PRESETS["tiny"]).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


def test_sampled_generation_on_gpu_is_seeded_like_the_cpu(models):
    """Temperature sampling with a seed on CUDA repeats itself and draws what the CPU draws (the draws are
    made from the same probabilities with a CPU generator)."""
    cpu, gpu = models
    p = cpu.prompt([Message("user", "text", "a dog barks")])
    settings = {"text": {"max_steps": 6, "temperature": 1.0}, "audio": {"max_steps": 6, "temperature": 1.0}}
    on_gpu = gpu.generate([p], ["text", "audio"], seed=3, **settings)
    again = gpu.generate([p], ["text", "audio"], seed=3, **settings)
    on_cpu = cpu.generate([p], ["text", "audio"], seed=3, **settings)
    assert [s.ids for s in on_gpu[0]] == [s.ids for s in again[0]]
    assert [s.ids for s in on_gpu[0]] == [s.ids for s in on_cpu[0]]
    assert any(s.modality == "audio" for s in on_gpu[0])


def test_synthesize_and_caption_on_gpu(models):
    cpu, gpu = models
    (wav,) = gpu.synthesize(["rain on a roof"], max_steps=4, seed=0, temperature=1.0)
    assert wav.dim() == 1 and wav.numel() > 0 and bool(torch.isfinite(wav).all())
    audio = torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1
    (on_gpu,) = gpu.caption(audio.cuda(), 16000, max_steps=5, seed=0, temperature=0.0)
    (on_cpu,) = cpu.caption(audio, 16000, max_steps=5, seed=0, temperature=0.0)
    assert on_gpu == on_cpu


def test_builder_takes_codes_from_a_gpu_codec(models):
    """Codes encoded on the GPU build the same CPU sample as the same codes on the CPU."""
    cpu, gpu = models
    audio = torch.randn(1, 16000, generator=torch.Generator().manual_seed(1)) * 0.1
    codes = gpu.codec.encode(audio.cuda(), sample_rate=16000)[0][0]
    assert codes.is_cuda
    messages = [Message("user", "text", "make it"), Message("assistant", "audio_out", codes)]
    on_gpu = gpu.builder.build(messages)
    on_cpu = gpu.builder.build([messages[0], Message("assistant", "audio_out", codes.cpu())])
    assert on_gpu.tokens.device.type == "cpu"
    assert torch.equal(on_gpu.tokens, on_cpu.tokens) and torch.equal(on_gpu.loss_mask, on_cpu.loss_mask)
