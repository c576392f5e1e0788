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


@pytest.mark.parametrize("mode", ["bfloat16", "autocast"])
def test_aligned_loss_rows_on_gpu_equal_dense_rows(mode, monkeypatch):
    """On CUDA the loss pads its logits rows to 16 elements (LOGIT_ALIGN None): the loss and every
    gradient equal dense rows (LOGIT_ALIGN 1) within float rounding, in bf16 and under autocast."""
    from bagpiper_lib.model import loss as loss_module
    from bagpiper_lib.sequence import pack, templates

    model = BagpiperModel.from_config(PRESETS["tiny"]).cuda().train()
    if mode == "bfloat16":
        model = model.to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    k, n = model.vocab.num_codebooks, model.vocab.codebook_size
    items = [
        model.builder.build(
            templates.caption_to_audio(f"sound {i}", torch.randint(0, n, (k, 5 + i), generator=g))
        )
        for i in range(3)
    ]
    batch = pack(items, budget=256, pad_ids=model._stream_pads).to("cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for align in (None, 1):
        monkeypatch.setattr(loss_module, "LOGIT_ALIGN", align)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "autocast"):
            loss = model(batch).loss
        results.append((loss, *torch.autograd.grad(loss, params, allow_unused=True)))
    for aligned, dense in zip(*results):
        if aligned is not None:
            torch.testing.assert_close(aligned.float(), dense.float(), atol=1e-3, rtol=1e-2)
