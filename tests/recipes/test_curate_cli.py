"""``python -m recipes.curate``: end to end on a small manifest, YAML config, clear manifest errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from recipes.curate import main

CUES = {
    "speech": "A woman speaks and says",
    "music": "A piano melody with soft chords and",
    "sound": "A loud beep and",
}


def caption(seed: int, cat: str) -> str:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "vo", "de", "pu", "gan", "tor"]
    return CUES[cat] + " " + " ".join("".join(rng.choices(syllables, k=3)) for _ in range(40))


def write_manifest(path: Path) -> list[dict]:
    lines = []
    for i in range(24):
        cat = ("speech", "music", "sound")[i % 3]
        lines.append({"id": f"clip{i}", "caption": caption(i, cat), "category": None if i % 4 == 0 else cat,
                      "quality": {"audio": float(i % 5), "alignment": float(i % 3)}, "audio": f"/a/{i}.wav"})  # fmt: skip
    lines.append({"id": "rep", "caption": "again again again " + caption(99, "sound"), "category": "sound"})
    lines[5]["quality"] = {"audio": 9.0, "alignment": 9.0}  # the best of its category: survives truncation
    lines.append(
        {"id": "twin", "caption": lines[5]["caption"], "category": "music", "quality": {"audio": 9.0}}
    )
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    return lines


def test_cli_end_to_end(tmp_path, capsys):
    lines = write_manifest(tmp_path / "in.jsonl")
    out = tmp_path / "out"
    argv = ["--manifest", str(tmp_path / "in.jsonl"), "--out", str(out), "--no-length-filter", "--seed", "1"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    kept = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    ids = {item["id"] for item in kept}
    assert "rep" not in ids and "twin" not in ids and "clip5" in ids
    assert report["stages"][1]["rejected"] == {"rep": ["word_repetition"]}
    assert report["stages"][-1]["duplicates"] == {"twin": "clip5"}
    assert sum(report["kept"].values()) == len(kept) < len(lines)
    by_id = {line["id"]: line for line in lines}
    for item in kept:
        assert item["category"] in ("speech", "music", "sound") and "fused" in item["quality"]
        assert item["audio"] == by_id[item["id"]]["audio"]
    assert {item["category"] for item in kept if by_id[item["id"]]["category"] is None} <= {
        "speech",
        "music",
        "sound",
    }
    assert (out / "fused_scores.png").stat().st_size > 0 and (out / "caption_lengths.png").stat().st_size > 0
    assert "gumbel_truncation" in stdout and f"kept {len(kept)} of {len(lines)}" in stdout


def test_cli_yaml_config_and_overrides(tmp_path, capsys):
    write_manifest(tmp_path / "in.jsonl")
    config = tmp_path / "curation.yaml"
    config.write_text(
        "filters:\n  min_tokens: 5\n  max_tokens: 20\ntruncation:\n  preset: generation\nseed: 3\n"
    )
    argv = ["--manifest", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "a"), "--config", str(config)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["kept"] == {} and "token_count" in report["stages"][1]["rejections"]
    assert main([*argv[:3], str(tmp_path / "b"), *argv[4:], "--max-tokens", "100", "--no-dedup",
                 "--no-truncation"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["classification", "caption_filters", "quality_fusion"]
    assert sum(report["kept"].values()) == 25
    config.write_text("filter: {}\n")
    assert main(argv) == 2 and "unknown curation config keys" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ({"id": "x", "category": "sound"}, "line 3: missing field 'caption'"),
        ({"id": "x", "caption": "a beep"}, "line 3: missing field 'category'"),
        ({"caption": "a beep", "category": None}, "line 3: missing field 'id'"),
        ({"id": "x", "caption": "a beep", "category": "noise"}, "line 3: field 'category' must be one of"),
    ],
)
def test_cli_names_missing_field_and_line(tmp_path, capsys, bad_line, message):
    good = {"id": "g", "caption": "A loud beep.", "category": "sound"}
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in (good, good, bad_line)) + "\n")
    assert main(["--manifest", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "in.jsonl" in err
    assert not (tmp_path / "out").exists()
