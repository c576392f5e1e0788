"""``python -m recipes.evaluate``: a save_pretrained directory, a Lightning checkpoint, a manifest, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import pytest
import torch
import yaml

from bagpiper_lib.data import synthetic
from bagpiper_lib.data.manifest import write_manifest
from bagpiper_lib.model import BagpiperModel
from recipes.evaluate import main
from recipes.module import BagpiperLitModule

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--num-items", "4", "--max-steps", "2", "--cfg-scale", "1", "--seed", "0"]
PROBE_KEYS = {"understanding": "qa_accuracy", "generation": "fad", "cycle": "audio_cycle_cosine"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    return BagpiperModel.from_config("tiny").save_pretrained(tmp_path_factory.mktemp("tiny"))


def test_pretrained_directory_all_probes(pretrained, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(pretrained), "--out", str(out), "--data", "synthetic", *FAST]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_items"] == 4 and results["settings"]["max_steps"] == 2
    assert results["capabilities"] == {"audio_in": True, "audio_out": True}
    for name, key in PROBE_KEYS.items():
        probe = results["probes"][name]
        assert key in probe["metrics"] and len(probe["items"]) == 4
    chance = results["probes"]["understanding"]["metrics"]["attributes"]["category"]["chance"]
    assert chance == pytest.approx(1 / 3)
    pngs = {
        "attribute_accuracy_understanding.png",
        "attribute_accuracy_cycle.png",
        "spectrograms_generation.png",
        "spectrograms_cycle.png",
    }
    assert pngs <= {p.name for p in out.glob("*.png")}
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()
    assert (
        "| qa_accuracy |" in markdown
        and "| category |" in markdown
        and "(spectrograms_generation.png)" in markdown
    )
    assert "understanding" in capsys.readouterr().out


def test_lightning_checkpoint_and_manifest(tmp_path):
    model_args = yaml.safe_load((ROOT / "recipes" / "configs" / "demo.yaml").read_text())["model"]
    lit = BagpiperLitModule(**model_args)
    ckpt = tmp_path / "demo.ckpt"
    hparams = {**dict(lit.hparams), "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save(
        {
            "state_dict": lit.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": lightning.__version__,
        },
        ckpt,
    )
    manifest = write_manifest(synthetic.generate(3, seed=4, split="heldout"), tmp_path / "m" / "eval.jsonl")
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(ckpt), "--probes", "understanding", "--data", f"manifest:{manifest}", *FAST]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["probes"]) == ["understanding"] and results["num_items"] == 3
    assert results["probes"]["understanding"]["metrics"]["num_questions"] >= 9
    assert (out / "attribute_accuracy_understanding.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "/no/such/model.ckpt"], "'/no/such/model.ckpt' does not exist"),
        (["--probes", "understanding,generaton"], "did you mean 'generation'"),
        (["--data", "manifest:/no/such.jsonl"], "manifest '/no/such.jsonl' does not exist"),
        (["--data", "librispeech"], "'synthetic' or 'manifest:<path>'"),
    ],
)
def test_bad_input_fails_clearly(pretrained, tmp_path, capsys, args, message):
    argv = ["--checkpoint", str(pretrained), "--out", str(tmp_path / "out"), *FAST, *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
