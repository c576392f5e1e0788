"""Two-process DDP on CPU (gloo) matches one process with the same global batch."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bagpiper_lib.model import PRESETS, BagpiperModel
from bagpiper_lib.sequence import pack, templates

STEPS = 2


def build():
    torch.manual_seed(0)
    return BagpiperModel.from_config({**PRESETS["tiny"], "encoder": None})


def rows(model):
    """Two samples of identical structure (same number of targets), different content."""
    g = torch.Generator().manual_seed(1)
    out = []
    for caption in ("abcd", "wxyz"):
        codes = torch.randint(0, model.vocab.codebook_size, (model.vocab.num_codebooks, 5), generator=g)
        out.append(model.builder.build(templates.caption_to_audio(caption, codes)))
    return out


def train(model, batch):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for _ in range(STEPS):
        loss = model(batch).loss
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    model = build()
    samples = rows(model)
    batch = pack([samples[rank]], budget=128, pad_ids=model._stream_pads)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for _ in range(STEPS):
        loss = ddp(batch).loss
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if rank == 0:
        torch.save({"losses": losses, "state": model.own_state_dict()}, out)
    dist.destroy_process_group()


def test_two_process_ddp_equals_one_process(tmp_path: Path):
    out = tmp_path / "ddp.pt"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    model = build()
    single = train(model, pack(rows(model), budget=128, pad_ids=model._stream_pads))
    ddp = torch.load(out, weights_only=True)
    for a, b in zip(ddp["losses"], single):
        assert abs(a - b) < 1e-5
    for key, value in model.own_state_dict().items():
        assert torch.allclose(ddp["state"][key], value, atol=1e-5), key
