"""The main job: every shipped config parses; a short CPU fit learns; resume is exact; predict and sweep write files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI

from bagpiper_lib import codecs
from recipes import sweep
from recipes.bagpiper import main
from recipes.data import BagpiperDataModule
from recipes.module import BagpiperLitModule, lr_lambda, scalars

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes" / "configs"
STAGES = ["warmup.yaml", "pretrain.yaml", "sft.yaml"]
OVERLAYS = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml"))

# A short demo: small corpus, few steps, cheap probes.
SHORT = [
    "--data.source.train_size=24",
    "--data.source.val_size=4",
    "--data.batches_per_epoch=6",
    "--data.val_batches=1",
    "--data.rows_per_batch=2",
    "--model.probe.num_clips=2",
    "--model.probe.max_steps=6",
    "--model.probe.audio_max_steps=6",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


class ParseOnly(LightningCLI):
    def instantiate_classes(self) -> None:  # parse and validate, build nothing (paths are not here)
        pass


def parse(*configs: str, extra: tuple[str, ...] = ()):
    args = [a for c in configs for a in ("--config", str(CONFIGS / c))] + list(extra)
    cli = ParseOnly(
        BagpiperLitModule,
        BagpiperDataModule,
        parser_kwargs={"parser_mode": "omegaconf"},
        args=args,
        run=False,
    )
    return cli.config


@pytest.mark.parametrize("config", ["demo.yaml", *STAGES])
def test_every_stage_config_parses(config):
    cfg = parse(config)
    assert cfg.model.codec["name"] in ("xcodec", "encodec", "dac")
    assert cfg.model.freeze["encoder"] is (config != "demo.yaml")


def test_stage_settings_follow_the_paper():
    warm, pre, sft = (parse(c) for c in STAGES)
    assert warm.model.freeze == {"encoder": True, "backbone": True, "embeddings": False}
    assert (
        warm.model.optimizer["lr"],
        warm.model.scheduler["name"],
        warm.model.scheduler["warmup_steps"],
    ) == (5e-4, "constant", 200)
    assert warm.trainer.max_steps == 2000 and warm.trainer.gradient_clip_val == 1.0
    assert (pre.model.optimizer["lr"], pre.model.scheduler["name"], pre.model.scheduler["warmup_steps"]) == (
        1e-4,
        "cosine",
        5000,
    )
    assert pre.model.init_from.startswith("runs/warmup") and sft.model.init_from.startswith("runs/pretrain")
    assert (sft.model.optimizer["lr"], sft.model.scheduler["name"]) == (1e-5, "constant")
    assert pre.data.tasks == {"caption_to_audio": 300.0, "audio_to_caption": 150.0, "text_only": 150.0}
    assert all(c.trainer.precision == "bf16-mixed" for c in (warm, pre, sft))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_parses_on_a_stage(overlay):
    cfg = parse("pretrain.yaml", overlay)
    assert cfg.model is not None


def test_dotted_override_and_unknown_key():
    cfg = parse("demo.yaml", extra=("--model.codec.name=dac",))
    assert cfg.model.codec == {"name": "dac", "preset": "tiny", "num_codebooks": 2}
    assert codecs.build(dict(cfg.model.codec)).num_codebooks == 2
    with pytest.raises(SystemExit):
        parse("demo.yaml", extra=("--model.codek.name=dac",))


def test_dotted_overrides_into_component_configs_keep_their_types():
    """``--model.encoder.n_mels=96`` reaches the component as the int 96, not the string "96",
    and a deep override merges into the configured dict instead of replacing it."""
    args = [
        "--config",
        str(CONFIGS / "demo.yaml"),
        "--model.encoder.n_mels=96",
        "--model.backbone.config.num_hidden_layers",
        "2",
        "--model.backbone.config.intermediate_size=192",
        "--model.optimizer.lr=3e-3",
        "--data.tasks.text_only=25",
    ]
    cli = main(args, run=False)
    encoder = cli.model.model.encoder
    assert encoder.mel.n_mels == 96
    assert encoder.output_dim == 96 + 1 + 12 + 55 + 24 + 1 + 2 + 10 + 5 + 5  # the demo's extras
    assert encoder.log_energy and encoder.chroma and encoder.tempogram and encoder.key_profile
    assert encoder.key_mode and encoder.key_opening_weight == 0.5 and encoder.chroma_n_fft == 2048
    assert encoder.event_count and encoder.level_bins and encoder.event_index
    demo = yaml.safe_load((CONFIGS / "demo.yaml").read_text())["model"]["backbone"]["config"]
    assert cli.model.hparams["backbone"]["config"] == {
        **demo,
        "num_hidden_layers": 2,
        "intermediate_size": 192,
    }
    assert len(cli.model.model.backbone.lm.model.layers) == 2
    assert cli.model.optimizer_spec["lr"] == pytest.approx(3e-3)
    assert cli.datamodule.tasks["text_only"] == 25
    assert scalars({"a": ["1", "x", "2.5", "false", "null", "/runs/1"]}) == {
        "a": [1, "x", 2.5, False, None, "/runs/1"]
    }


def test_lr_schedule_shapes():
    warm = lr_lambda("constant", 200, None)
    assert warm(0) == pytest.approx(1 / 200) and warm(199) == 1.0 and warm(5000) == 1.0
    cos = lr_lambda("cosine", 10, 110, 0.1)
    assert cos(9) == 1.0 and cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="needs scheduler.total_steps"):
        lr_lambda("cosine", 0, None)


def run_fit(tmp: Path, *extra: str):
    args = [
        "fit",
        "--config",
        str(CONFIGS / "demo.yaml"),
        *SHORT,
        f"--trainer.default_root_dir={tmp}",
        *extra,
    ]
    return main(args)


CKPT = [
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    "--trainer.callbacks.every_n_train_steps=2",
    "--trainer.callbacks.save_top_k=-1",
]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One short demo fit shared by the tests below: 6 steps over epochs of 4 batches, checkpoints every 2."""
    tmp = tmp_path_factory.mktemp("straight")
    cli = run_fit(tmp, "--trainer.max_steps=6", "--data.batches_per_epoch=4", *CKPT)
    return tmp, cli


def test_short_demo_fit_lowers_the_loss_and_reports(straight):
    tmp, cli = straight
    report = json.loads(next(tmp.rglob("report.json")).read_text())
    assert report["val_loss_last"] < report["val_loss_first"]
    assert "acc_category" in report and 0.0 <= report["acc_category"]["accuracy"] <= 1.0
    assert report["acc_category"]["chance"] == pytest.approx(1 / 3)
    assert cli.trainer.global_step == 6
    # each validation round (after the 4-batch epoch, at step 4) writes generated examples
    examples = next(tmp.rglob("step_000004"))
    text = (examples / "captions.md").read_text()
    assert text.count("- reference: ") == 2 and text.count("- generated: ") == 2
    assert "step 4" in text
    assert (examples / "audio_0.wav").is_file() and (examples / "audio_0.png").is_file()


def test_resume_mid_epoch_equals_an_uninterrupted_run(straight, tmp_path):
    """N steps + resume + N steps == 2N steps: model, optimizer, scheduler, data position and RNG."""
    tmp, reference = straight
    (path,) = list(tmp.rglob("*step=2.ckpt"))  # mid-epoch: 2 of 4 batches
    resumed = run_fit(
        tmp_path, "--trainer.max_steps=6", "--data.batches_per_epoch=4", f"--ckpt_path={path}", *CKPT
    )
    assert resumed.trainer.global_step == 6
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_predict_writes_wav_png_and_text(tmp_path):
    out = tmp_path / "pred"
    main(
        [
            "predict",
            "--config",
            str(CONFIGS / "demo.yaml"),
            *SHORT,
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks+=recipes.callbacks.PredictionWriter",
            f"--trainer.callbacks.out_dir={out}",
            "--data.predict.captions=[a soft piano melody]",
            "--data.predict.audio_settings={max_steps: 6}",
            "--model.probe.num_clips=0",
        ]
    )
    files = sorted(p.suffix for p in out.iterdir())
    assert files == [".json", ".png", ".wav"]
    meta = json.loads(next(out.glob("*.json")).read_text())
    assert meta["caption"] == "a soft piano melody" and meta["sample_rate"] == 16000


def test_sweep_runs_a_grid_and_writes_its_table(tmp_path):
    rows = sweep.main(
        [
            "--config",
            str(CONFIGS / "demo.yaml"),
            "--grid",
            "model.pattern.name=delay,parallel",
            "--out",
            str(tmp_path),
            "--",
            *SHORT,
            "--trainer.max_steps=2",
            "--data.batches_per_epoch=2",
            "--model.probe.num_clips=0",
        ]
    )
    assert [r["status"] for r in rows] == [0, 0]
    assert all("val/loss" in r for r in rows)
    table = (tmp_path / "results.md").read_text()
    assert "pattern=delay" in table and "pattern=parallel" in table
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "results.png").is_file()


def test_missing_data_path_and_bad_init_checkpoint(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"data.source.(train|val): manifest ./nowhere/\w+.jsonl. does not exist"
    ):
        run_fit(
            tmp_path,
            "--trainer.max_steps=1",
            "--data.source={name: manifest, train: /nowhere/train.jsonl, val: /nowhere/val.jsonl}",
        )
    with pytest.raises(FileNotFoundError, match="model.init_from"):
        run_fit(tmp_path, "--trainer.max_steps=1", "--model.init_from=/nowhere/last.ckpt")


def test_bf16_mixed_fit_clips_with_the_fused_optimizer(tmp_path, monkeypatch):
    """bf16-mixed (autocast) with the fused AdamW, which ``optimizer.fused: null`` picks on GPUs, and
    gradient clipping (every stage config): Lightning's mixed-precision plugin refuses to clip for an
    optimizer that unscales itself, so the LitModule clips the (unscaled) bf16-run gradients itself."""
    clipped = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        clipped.append(float(max_norm))
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    cli = run_fit(
        tmp_path, "--trainer.max_steps=2", "--trainer.precision=bf16-mixed", "--model.optimizer.fused=true"
    )
    assert cli.trainer.global_step == 2
    assert cli.model.configure_optimizers()["optimizer"].defaults["fused"] is True
    assert clipped == [1.0, 1.0]
    assert all(bool(torch.isfinite(p).all()) for p in cli.model.parameters())


def test_more_gpus_than_present_fails_before_anything_is_built(monkeypatch):
    """A GPU run asking for GPUs the machine lacks stops at parse time with the setting to change."""
    from recipes.cli import check_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    base = ["--config", str(CONFIGS / "demo.yaml"), "--trainer.accelerator=gpu"]
    with pytest.raises(ValueError, match=r"--trainer.devices=4 asks for 4 GPUs, but this machine has 1"):
        main([*base, "--trainer.devices=4"], run=False)
    with pytest.raises(ValueError, match=r"names GPU\(s\) \[1\], but this machine has 1"):
        main([*base, "--trainer.devices=[0,1]"], run=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(
        ValueError, match=r"accelerator=gpu but this machine has no CUDA GPU.*accelerator=cpu"
    ):
        main(base, run=False)
    for fine in (("gpu", "auto", 2), ("gpu", 2, 2), ("gpu", "0,1", 2), ("cpu", 8, 0), ("auto", 4, 0)):
        check_devices(*fine)  # raises nothing


def test_unfreezing_a_pretrained_encoder_warns(tmp_path):
    """Every Bagpiper stage keeps its pretrained audio encoder frozen: a config that unfreezes one
    warns (naming freeze.encoder); a frozen one, or a random-init encoder trained on purpose, does not."""
    import warnings

    from bagpiper_lib import encoders
    from bagpiper_lib.model import PRESETS
    from recipes.module import BagpiperLitModule

    encoders.build({"name": "mel", "n_mels": 32}).save_pretrained(tmp_path / "mel")
    tiny = {k: v for k, v in PRESETS["tiny"].items() if k in ("codec", "backbone", "tokenizer")}
    pretrained = {"name": "mel", "pretrained": str(tmp_path / "mel")}
    with pytest.warns(
        UserWarning, match="freeze.encoder is false: the pretrained audio encoder will be fine-tuned"
    ):
        lit = BagpiperLitModule(**tiny, encoder=pretrained, freeze={"encoder": False})
    assert all(p.requires_grad for p in lit.model.encoder.parameters())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="freeze.encoder")
        frozen = BagpiperLitModule(**tiny, encoder=pretrained, freeze={"encoder": True})
        BagpiperLitModule(**tiny, encoder={"name": "mel", "n_mels": 32}, freeze={"encoder": False})
    assert not any(p.requires_grad for p in frozen.model.encoder.parameters())


def test_fit_standardizes_the_encoder_over_the_first_training_clips(straight):
    """demo.yaml's ``standardize_clips`` sets the mel encoder's affine from the first training clips
    before the first step (all 24 of the short run's)."""
    from bagpiper_lib import encoders

    tmp, cli = straight
    records = cli.datamodule.train_records
    assert len(records) == 24 and cli.model.standardize_clips > 24
    mean, std = cli.model.standardized
    spec = dict(cli.config.fit.model.encoder)
    fresh = encoders.build(spec)
    expected_mean, expected_std = fresh.standardize([r.audio for r in records])
    torch.testing.assert_close(mean, expected_mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(std, expected_std, rtol=0, atol=1e-9)
    assert (std > 0.05).sum() > 100  # the mel bins and most extras vary


def test_standardize_clips_is_checked_and_kept_from_the_previous_stage(tmp_path):
    from bagpiper_lib.model import PRESETS
    from recipes.module import BagpiperLitModule

    tiny = {k: v for k, v in PRESETS["tiny"].items() if k in ("codec", "backbone", "tokenizer")}
    mel = {"name": "mel", "n_mels": 32}
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="model.standardize_clips must be an integer >= 0"):
            BagpiperLitModule(**tiny, encoder=mel, standardize_clips=bad)
    with pytest.raises(ValueError, match="standardize_clips=8 needs an encoder with standardize"):
        BagpiperLitModule(**tiny, encoder=PRESETS["tiny"]["encoder"], standardize_clips=8)
    previous = BagpiperLitModule(**tiny, encoder=mel)
    with torch.no_grad():
        previous.model.encoder.scale.fill_(3.0)
        for p in previous.model.backbone.parameters():
            p.add_(0.5)
    previous.model.save_pretrained(tmp_path / "stage1")
    lit = BagpiperLitModule(**tiny, encoder=mel, init_from=str(tmp_path / "stage1"), standardize_clips=8)
    lit.setup("fit")  # with init_from the previous stage's normalisation stays
    assert lit.standardized is None and (lit.model.encoder.scale == 3.0).all()
    # a save_pretrained directory hands over every tensor, the components' included
    for key, value in previous.model.state_dict().items():
        assert torch.equal(lit.model.state_dict()[key], value), key
