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


# ------------------------------------------------------------------ the recipe's own DDP strategy
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fit(tmp: Path, *extra: str) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    """Two steps of the demo recipe through the CLI; returns (step -> logged loss, final weights)."""
    import csv
    import subprocess
    import sys

    args = [
        sys.executable,
        "-m",
        "recipes.bagpiper",
        "fit",
        "--config",
        str(REPO / "recipes" / "configs" / "demo.yaml"),
        "--data.source.train_size=12",
        "--data.source.val_size=2",
        "--data.batches_per_epoch=2",
        "--data.val_batches=1",
        "--data.token_budget=512",
        "--model.probe.num_clips=0",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={tmp}",
        f"--trainer.default_root_dir={tmp}",
        *extra,
    ]
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    losses: dict[int, float] = {}
    with open(next(tmp.rglob("metrics.csv"))) as f:
        for row in csv.DictReader(f):
            value = row.get("train/global_loss") or row.get("train/loss")
            if value:
                losses[int(row["step"])] = float(value)
    ckpt = torch.load(next(tmp.rglob("*.ckpt")), map_location="cpu", weights_only=True)
    return losses, ckpt["state_dict"]


def test_lightning_ddp_two_processes_equal_one_process_with_the_global_batch(tmp_path: Path):
    """``--trainer.strategy=ddp --trainer.devices=2`` with 1 row per rank == 1 process with 2 rows:
    the same global batches (data drawn independently of the rank count), the same loss (normalised
    by the global target count) and the same weights after two optimiser steps."""
    single_losses, single = _fit(tmp_path / "one", "--data.rows_per_batch=2", "--trainer.devices=1")
    ddp_losses, ddp = _fit(
        tmp_path / "two", "--data.rows_per_batch=1", "--trainer.devices=2", "--trainer.strategy=ddp"
    )
    assert sorted(single_losses) == sorted(ddp_losses) == [0, 1]
    for step, loss in single_losses.items():
        assert abs(ddp_losses[step] - loss) < 1e-5, (step, ddp_losses[step], loss)
    assert single.keys() == ddp.keys()
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, atol=1e-5, rtol=0, msg=key)


def test_gradient_clipping_goes_through_the_fsdp_root(monkeypatch):
    """Under FSDP, clipping must use the root's ``clip_grad_norm_`` (norm all-reduced over shards):
    Lightning's default refuses ``gradient_clip_algorithm='norm'`` there. FSDP needs an accelerator,
    so the FSDP root is a stand-in class patched in its place; elsewhere clipping is Lightning's."""
    from types import SimpleNamespace

    import torch.distributed.fsdp as fsdp

    from recipes.module import BagpiperLitModule

    class Root:
        def __init__(self):
            self.calls = []

        def clip_grad_norm_(self, value):
            self.calls.append(value)

    monkeypatch.setattr(fsdp, "FullyShardedDataParallel", Root)
    tiny = {k: v for k, v in PRESETS["tiny"].items() if k in ("codec", "backbone", "tokenizer")}
    lit = BagpiperLitModule(**tiny, encoder=None)
    root = Root()
    clipped = []
    monkeypatch.setattr(lit, "clip_gradients", lambda *args: clipped.append(args))
    lit._trainer = SimpleNamespace(strategy=SimpleNamespace(model=root))
    lit.configure_gradient_clipping(None, 1.0, "norm")
    lit.configure_gradient_clipping(None, None, None)  # clipping off: nothing happens
    assert root.calls == [1.0] and clipped == []
    lit._trainer = SimpleNamespace(strategy=SimpleNamespace(model=torch.nn.Linear(2, 2)))
    lit.configure_gradient_clipping("opt", 0.5, "norm")
    assert clipped == [("opt", 0.5, "norm")] and root.calls == [1.0]


def test_forwards_outside_steps_enter_through_a_sharding_wrapper(monkeypatch):
    """Under FSDP / DeepSpeed, the report's first validation loss and the probe's generation run inside
    the wrapper's forward (where sharded weights are gathered), under the precision plugin's context,
    and give what a direct call gives; without a sharding strategy they are direct calls."""
    import contextlib
    from types import SimpleNamespace

    from lightning.pytorch.strategies.strategy import _ForwardRedirection

    import recipes.module as module

    class Wrapper(torch.nn.Module):  # stands in for the FSDP root / DeepSpeed engine around the module
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, *args):
            self.calls += 1
            return self.inner(*args)

    entered = []

    @contextlib.contextmanager
    def forward_context():
        entered.append(True)
        yield

    lit = _lit()
    assert lit.initial_val_loss() is None  # no trainer: no validation data
    batch = pack(_fsdp_rows(lit.model), 256, lit.model._stream_pads)
    wrapper = Wrapper(lit)
    strategy = SimpleNamespace(
        model=wrapper,
        _forward_redirection=_ForwardRedirection(),
        precision_plugin=SimpleNamespace(forward_context=forward_context),
    )
    datamodule = SimpleNamespace(val_dataloader=lambda: [batch])
    lit._trainer = SimpleNamespace(strategy=strategy, datamodule=datamodule)
    monkeypatch.setattr(module, "_shards_weights", lambda s: False)
    direct = lit.through_strategy("initial_val_loss")
    assert wrapper.calls == 0 and not entered
    assert direct == lit.model(batch).loss.item()  # one batch: its loss
    monkeypatch.setattr(module, "_shards_weights", lambda s: s is strategy)
    assert lit.through_strategy("initial_val_loss") == direct
    assert wrapper.calls == 1 and entered == [True]
    assert lit.forward.__func__ is type(lit).forward  # the redirection put the own forward back
    assert lit.training  # left in the mode it was in


# ------------------------------------------------------------------ FSDP with the recipe's own pieces
CLIP = 0.05  # small enough that clipping acts on both steps


def _lit():
    """The recipe's LitModule on tiny components, the audio encoder frozen as in the stage configs."""
    from recipes.module import BagpiperLitModule

    torch.manual_seed(0)
    tiny = {k: v for k, v in PRESETS["tiny"].items() if k in ("codec", "encoder", "backbone", "tokenizer")}
    return BagpiperLitModule(**tiny, freeze={"encoder": True})


def _fsdp_rows(model):
    """An audio -> caption row (runs the frozen encoder) and a caption -> audio row, with different
    target counts, so the rescaling to the global batch matters."""
    g = torch.Generator().manual_seed(2)
    wav = 0.1 * torch.randn(8000, generator=g)
    codes = torch.randint(0, model.vocab.codebook_size, (model.vocab.num_codebooks, 6), generator=g)
    return [
        model.builder.build(templates.audio_to_caption(wav, "a low hum", sample_rate=16000)),
        model.builder.build(templates.caption_to_audio("two beeps and a thud", codes)),
    ]


class _Step(torch.nn.Module):
    """What Lightning's strategy wrapper does: the wrapped root's forward is the LitModule's step."""

    def __init__(self, lit):
        super().__init__()
        self.lit = lit

    def forward(self, batch):
        loss, _ = self.lit._global_loss(self.lit._run(batch))
        return loss


def _fsdp_train(step, batch, clip) -> None:
    """Two AdamW steps: the LitModule's global-batch loss, backward, its clipping route, step."""
    opt = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(STEPS):
        loss = step(batch)
        opt.zero_grad()
        loss.backward()
        clip(opt)
        opt.step()


def _fsdp_worker(rank: int, world: int, store: str, out: str) -> None:
    from types import SimpleNamespace

    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from recipes.distributed import bagpiper_wrap_policy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    lit = _lit()
    # rank 0 holds the audio -> caption row, rank 1 a row without audio input
    batch = pack([_fsdp_rows(lit.model)[rank]], budget=256, pad_ids=lit.model._stream_pads)
    root = FSDP(
        _Step(lit), auto_wrap_policy=bagpiper_wrap_policy, use_orig_params=True, device_id=torch.device("cpu")
    )
    lit._trainer = SimpleNamespace(world_size=world, strategy=SimpleNamespace(model=root))
    _fsdp_train(root, batch, lambda opt: lit.configure_gradient_clipping(opt, CLIP, "norm"))
    units = [type(m.module).__name__ for m in root.modules() if isinstance(m, FSDP) and m is not root]
    policy = FullStateDictConfig(offload_to_cpu=False, rank0_only=False)  # offload on CPU segfaults
    with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, policy):
        state = {k.removeprefix("lit.model."): v for k, v in root.state_dict().items()}
    if rank == 0:
        torch.save({"state": state, "units": units}, out)
    dist.destroy_process_group()


def test_two_process_fsdp_with_the_recipe_policy_and_clipping_equals_one_process(tmp_path: Path):
    """FSDP (FULL_SHARD) on CPU over gloo with ``recipes.distributed.bagpiper_wrap_policy``, the
    LitModule's global-batch loss and its FSDP clipping route (the root's ``clip_grad_norm_``) gives
    the weights of one process training on both rows with ``clip_grad_norm_``. Only rank 0's row has
    audio input: without the LitModule's encoder pass on rank 1 the ranks' collectives mismatch.
    Lightning's FSDPStrategy itself only runs on GPUs; this runs the same torch FSDP underneath."""
    out = tmp_path / "fsdp.pt"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_fsdp_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    lit = _lit()
    model = lit.model
    batch = pack(_fsdp_rows(model), budget=256, pad_ids=model._stream_pads)
    params = [p for p in model.parameters() if p.requires_grad]
    _fsdp_train(_Step(lit), batch, lambda opt: torch.nn.utils.clip_grad_norm_(params, CLIP))
    fsdp = torch.load(out, weights_only=True)
    layers = model.backbone.config.num_hidden_layers
    assert fsdp["units"].count("Qwen3DecoderLayer") == layers
    assert sum(name.endswith("EncoderLayer") for name in fsdp["units"]) >= 1  # frozen encoder blocks
    reference = model.state_dict()
    assert fsdp["state"].keys() == reference.keys()
    moved = 0
    initial = _lit().model.state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(fsdp["state"][key], value, atol=1e-5, rtol=0, msg=key)
        moved += not torch.equal(value, initial[key])
    assert moved > 10  # the comparison is between trained weights, not two copies of the init


def test_optimizer_fused_setting():
    """``optimizer.fused``: null picks the fused AdamW where every trainable weight is on a GPU (not under
    DeepSpeed), so it stays unfused on the CPU; true forces it, and one fused step equals one foreach step."""
    from types import SimpleNamespace

    from recipes.module import BagpiperLitModule

    tiny = {k: v for k, v in PRESETS["tiny"].items() if k in ("codec", "encoder", "backbone", "tokenizer")}
    steps = {}
    for fused in (None, True, False):
        torch.manual_seed(0)
        lit = BagpiperLitModule(**tiny, freeze={"encoder": True}, optimizer={"fused": fused, "lr": 1e-2})
        lit._trainer = SimpleNamespace(strategy=None, max_steps=10)
        optimizer = lit.configure_optimizers()["optimizer"]
        assert bool(optimizer.defaults["fused"]) is bool(fused)
        batch = pack(_fsdp_rows(lit.model), 256, lit.model._stream_pads)
        lit.model(batch).loss.backward()
        optimizer.step()
        steps[fused] = {n: p.detach().clone() for n, p in lit.named_parameters() if p.requires_grad}
    for name, value in steps[False].items():
        torch.testing.assert_close(steps[True][name], value, atol=1e-6, rtol=1e-5, msg=name)
        assert torch.equal(steps[None][name], value)


def test_checkpoints_with_the_backbone_token_tables_still_load():
    """Lightning checkpoints written before the backbone released its token tables carry them. The
    released modules stay registered as None, so torch skips their keys: such a state loads strictly,
    and every other tensor is restored."""
    lit = _lit()
    state = {k: v.clone() + 1 for k, v in lit.state_dict().items() if v.is_floating_point()}
    hidden = lit.model.backbone.hidden_size
    old = {
        **state,
        "model.backbone.lm.model.embed_tokens.weight": torch.zeros(7, hidden),
        "model.backbone.lm.lm_head.weight": torch.zeros(7, hidden),
    }
    lit.load_state_dict(old, strict=True)
    for key, value in state.items():
        assert torch.equal(lit.state_dict()[key], value), key
    assert lit.model.backbone.lm.get_input_embeddings() is None


def _fsdp_redirect_worker(rank: int, world: int, store: str, out: str) -> None:
    """FSDP around the LitModule itself, bf16 mixed precision, as Lightning's FSDPStrategy sets it up;
    the report's first loss, a training forward and the probe all enter through the root."""
    import contextlib
    from types import SimpleNamespace

    from lightning.pytorch.strategies.strategy import _ForwardRedirection
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import MixedPrecision

    import recipes.module as module
    from bagpiper_lib.data import synthetic
    from recipes.distributed import bagpiper_wrap_policy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    lit = _lit()
    lit.probe_spec.update(num_clips=1, max_steps=4, audio_examples=1, audio_max_steps=3)
    batch = pack(_fsdp_rows(lit.model), budget=256, pad_ids=lit.model._stream_pads)
    bf16 = torch.bfloat16
    precision = MixedPrecision(param_dtype=bf16, reduce_dtype=bf16, buffer_dtype=bf16)
    root = FSDP(
        lit,
        auto_wrap_policy=bagpiper_wrap_policy,
        use_orig_params=True,
        device_id=torch.device("cpu"),
        mixed_precision=precision,
    )
    strategy = SimpleNamespace(
        model=root,
        _forward_redirection=_ForwardRedirection(),
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
    )
    (record,) = synthetic.generate(1, seed=0, split="heldout", duration=(1.0, 1.0))
    datamodule = SimpleNamespace(val_dataloader=lambda: [batch], val_records=[record])
    lit._trainer = SimpleNamespace(world_size=world, strategy=strategy, datamodule=datamodule)
    module._shards_weights = lambda s: s is strategy
    first = lit.through_strategy("initial_val_loss")  # before any step: the root must come first
    out_step = strategy._forward_redirection(root, lit, "_run", batch)  # a training forward
    out_step.loss.backward()
    root.eval()  # as in Lightning's validation, where the probe runs: decode steps take the eval paths
    captions, wavs = lit.through_strategy("_probe_generate")
    if rank == 0:
        torch.save(
            {"first": first, "step": float(out_step.loss), "captions": captions, "wav": wavs[0].float()}, out
        )
    dist.destroy_process_group()


def test_fsdp_root_first_forwards_with_bf16_mixed_precision(tmp_path: Path):
    """FSDP wrapping the LitModule (as Lightning does) with bf16 mixed precision: the report's first
    validation loss, a training forward and backward, and the probe's captions and audio run through
    the root. Each of these failed on an H100 before (an inner unit made itself the root; the
    mixed-precision input cast could not rebuild a packed batch; bf16 mel buffers). The losses match an
    unwrapped bf16 model's."""
    out = tmp_path / "redirect.pt"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_fsdp_redirect_worker, args=(1, str(tmp_path / "store"), str(out)), nprocs=1, join=True)
    got = torch.load(out, weights_only=True)
    lit = _lit()
    batch = pack(_fsdp_rows(lit.model), budget=256, pad_ids=lit.model._stream_pads)
    lit.to(torch.bfloat16)
    with torch.no_grad():
        expected = float(lit.model(batch).loss)
    assert abs(got["first"] - expected) < 0.05 * expected
    assert abs(got["step"] - expected) < 0.05 * expected
    assert len(got["captions"]) == 1 and isinstance(got["captions"][0], str)
    assert got["wav"].dim() == 1 and bool(torch.isfinite(got["wav"]).all())


def test_the_cli_entry_point_closes_the_process_group_it_leaves(tmp_path: Path):
    """``python -m recipes.bagpiper`` destroys the default group at exit (Lightning's DDP teardown leaves
    it; a live gloo group at interpreter exit can abort a finished run with status -6)."""
    from recipes.bagpiper import close_process_group

    close_process_group()  # no group: nothing to do, no error
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    close_process_group()
    assert not dist.is_initialized()
