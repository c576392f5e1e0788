"""Curation stages: caption rules, percentile fusion, Gumbel top-k, MinHash dedup, classification, report."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from bagpiper_lib.data import curation
from bagpiper_lib.data.curation import (
    CaptionFilterConfig,
    CurationConfig,
    DedupConfig,
    KeywordCategoryClassifier,
    LLMCategoryClassifier,
    TruncationConfig,
    caption_violations,
)
from bagpiper_lib.data.llm import ScriptedClient
from bagpiper_lib.data.records import Record

BASE = "A calm female voice says hello while soft rain falls on the metal roof of a quiet house."
SHORT = CaptionFilterConfig(min_tokens=5, max_tokens=400)  # paper thresholds, short captions allowed


def pseudo_words(n: int, seed: int) -> str:
    """``n`` pronounceable, mostly distinct words: a caption that passes every content rule."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "vo", "de", "pu", "gan", "tor", "bel", "fin"]
    return " ".join("".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(n))


# ---------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("rule", "passing", "failing"),
    [
        ("non_latin", BASE + " Für das Café, naïve.", BASE + " 你好 world"),
        ("char_repetition", "Soooo " + BASE, "Sooooo " + BASE),
        ("word_repetition", "very very " + BASE, "very very very " + BASE),
        ("ngram_repetition", BASE, "the dog barks at the red door tonight " * 2 + BASE),
        ("unique_word_ratio", "cat dog bird cat dog fish", "cat dog cat dog cat dog cat dog cat dog"),
        ("word_length", BASE, "a b c d e f g h i j"),
        ("word_length", BASE, "antidisestablishmentarianism pneumonoultramicroscopically " * 3),
    ],
)
def test_rule_rejects_failing_and_passes_passing(rule, passing, failing):
    assert caption_violations(passing, SHORT) == []
    assert rule in caption_violations(failing, SHORT)


def test_incomplete_flag_from_manifest_field_and_record_params():
    items = [
        {"id": "ok", "caption": BASE, "category": "speech"},
        {"id": "cut", "caption": BASE, "category": "speech", "incomplete": True},
        Record("rec", BASE, "sound", params={"incomplete": True}),
    ]
    kept, report = curation.filter_captions(items, SHORT)
    assert [curation._get(item, "id") for item in kept] == ["ok"]
    assert report.details["rejected"] == {"cut": ["incomplete"], "rec": ["incomplete"]}
    assert report.details["rejections"]["incomplete"] == {"sound": 1, "speech": 1}
    assert caption_violations(BASE, SHORT, incomplete=True) == ["incomplete"]


def test_token_count_rule_paper_bounds_and_pluggable_tokenizer():
    good = pseudo_words(300, seed=0)
    assert caption_violations(good) == []  # paper defaults: 200..800 whitespace tokens
    assert caption_violations(pseudo_words(150, seed=1)) == ["token_count"]
    assert caption_violations(pseudo_words(900, seed=2)) == ["token_count"]
    assert caption_violations(BASE, CaptionFilterConfig(disabled_rules=("token_count",))) == []
    by_chars = CaptionFilterConfig(min_tokens=10, max_tokens=50, count_tokens=len)
    assert caption_violations(BASE, by_chars) == ["token_count"]  # 88 characters > 50
    with pytest.raises(ValueError, match="unknown caption rules"):
        CaptionFilterConfig(disabled_rules=("length",))


def test_filter_counts_every_broken_rule_per_category():
    items = [
        {"id": "a", "caption": BASE, "category": "music"},
        {"id": "b", "caption": "a a a a", "category": "music"},
        {"id": "c", "caption": "Sooooo 你好 " + BASE, "category": "sound"},
    ]
    kept, report = curation.filter_captions(items, SHORT)
    assert [item["id"] for item in kept] == ["a"]
    assert report.input == {"music": 2, "sound": 1} and report.kept == {"music": 1}
    assert report.removed == {"music": 1, "sound": 1}
    assert set(report.details["rejected"]["c"]) == {"non_latin", "char_repetition"}
    assert report.details["rejections"]["word_repetition"] == {"music": 1}


# ---------------------------------------------------------------- fusion and truncation


def test_percentile_ranks_share_ties():
    np.testing.assert_allclose(curation.percentile_ranks([10, 20, 20, 30]), [0.125, 0.5, 0.5, 0.875])


def test_fused_scores_rank_within_category_and_skip_missing_keys():
    items = [
        {"id": "s1", "category": "speech", "quality": {"audio": 1.0, "text": 9.0}},
        {"id": "s2", "category": "speech", "quality": {"audio": 2.0, "text": 8.0}},
        {"id": "s3", "category": "speech", "quality": {"audio": 3.0}},
        {"id": "s4", "category": "speech", "quality": {}},
        {"id": "m1", "category": "music", "quality": {"audio": 500.0, "alignment": 0.1}},
        {"id": "m2", "category": "music", "quality": {"audio": 100.0, "alignment": 0.9}},
    ]
    scores = curation.fused_scores(items)
    # speech audio ranks (3 present): 1/6, 3/6, 5/6; text ranks (2 present): 3/4, 1/4
    assert scores[0] == pytest.approx((1 / 6 + 3 / 4) / 2)
    assert scores[1] == pytest.approx((3 / 6 + 1 / 4) / 2)
    assert scores[2] == pytest.approx(5 / 6)
    assert scores[3] is None
    assert scores[4] == pytest.approx((3 / 4 + 1 / 4) / 2) and scores[5] == pytest.approx(0.5)
    fused, report = curation.fuse_quality(items)
    assert fused[3]["quality"] == {"fused": 0.5} and report.details["unscored"] == {"speech": 1}
    assert "fused" not in items[0]["quality"]  # inputs are not mutated


def scored_items(counts: dict[str, int]) -> list[dict]:
    rng = random.Random(0)
    items = []
    for cat, n in counts.items():
        scores = [(i + 0.5) / n for i in range(n)]
        rng.shuffle(scores)
        items += [{"id": f"{cat}{i}", "category": cat, "quality": {"fused": s}} for i, s in enumerate(scores)]
    return items


def test_gumbel_keeps_exact_fraction_per_category():
    items = scored_items({"speech": 100, "music": 50, "sound": 40})
    kept, report = curation.truncate(items, TruncationConfig.preset("understanding"), seed=3)
    assert report.kept == {"music": 40, "sound": 32, "speech": 58}
    kept_g, _ = curation.truncate(items, TruncationConfig.preset("generation"), seed=3)
    assert curation._counts(kept_g) == {"music": 40, "sound": 32, "speech": 72}
    again, _ = curation.truncate(items, TruncationConfig.preset("understanding"), seed=3)
    assert [i["id"] for i in again] == [i["id"] for i in kept]


def test_gumbel_tends_to_plain_topk_as_temperature_goes_to_zero():
    items = scored_items({"speech": 100, "music": 50})
    cold = TruncationConfig(
        temperature={"speech": 1e-6, "music": 1e-6}, discard={"speech": 0.3, "music": 0.5}
    )
    kept, _ = curation.truncate(items, cold, seed=0)
    for cat, keep in (("speech", 70), ("music", 25)):
        members = [i for i in items if i["category"] == cat]
        top = sorted(members, key=lambda i: -i["quality"]["fused"])[:keep]
        assert {i["id"] for i in kept if i["category"] == cat} == {i["id"] for i in top}
    # a warm temperature keeps some of the tail but still prefers high scores
    warm = TruncationConfig(temperature={"speech": 0.3}, discard={"speech": 0.5})
    kept_warm, _ = curation.truncate([i for i in items if i["category"] == "speech"], warm, seed=0)
    mean_kept = np.mean([i["quality"]["fused"] for i in kept_warm])
    assert 0.5 < mean_kept < 0.75 and min(i["quality"]["fused"] for i in kept_warm) < 0.5


def test_truncate_requires_fused_scores():
    with pytest.raises(ValueError, match="fuse_quality"):
        curation.truncate([{"id": "x", "category": "sound", "quality": {}}])


# ---------------------------------------------------------------- dedup


def test_minhash_finds_planted_near_duplicates_and_keeps_distinct():
    items = [
        {"id": f"c{i}", "caption": pseudo_words(120, seed=10 + i), "category": "sound"} for i in range(6)
    ]
    words = items[2]["caption"].split()
    words[60] = "changedword"
    items.append({"id": "near", "caption": " ".join(words), "category": "sound"})
    items.append({"id": "exact", "caption": items[4]["caption"], "category": "music"})
    kept, report = curation.deduplicate(items, DedupConfig(threshold=0.8, num_perm=128))
    assert [i["id"] for i in kept] == [f"c{i}" for i in range(6)]
    assert report.details["duplicates"] == {"near": "c2", "exact": "c4"}
    assert report.removed == {"music": 1, "sound": 1}


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("caption", "category"),
    [
        ("A man speaks slowly and says 'good morning' in a warm voice; each vowel is clear.", "speech"),
        ("A gentle piano melody at 90 BPM over soft minor chords and a steady drum beat.", "music"),
        ("A sharp beep, then a heavy thud and a burst of static noise.", "sound"),
        ("Something happens here.", "sound"),  # no cue: the default
    ],
)
def test_keyword_classifier(caption, category):
    assert KeywordCategoryClassifier().classify(caption) == category


def test_llm_classifier_parses_answers_and_falls_back():
    client = ScriptedClient(["Music.", "I would say speech", "no idea", "sound effects"])
    clf = LLMCategoryClassifier(client, prompt="Type of: {caption}")
    captions = ["a song", "a talk", "A man says hello in a deep voice.", "a door"]
    assert [clf.classify(c) for c in captions] == ["music", "speech", "speech", "sound"]
    assert clf.failures == 1 and client.prompts[0] == "Type of: a song"


def test_classify_fills_only_missing_categories_unless_reclassify():
    items = [
        {"id": "a", "caption": "A woman speaks and says yes.", "category": None},
        {"id": "b", "caption": "A woman speaks and says yes.", "category": "music"},
    ]
    out, report = curation.classify_categories(items)
    assert [i["category"] for i in out] == ["speech", "music"] and report.details["changed"] == 0
    out, report = curation.classify_categories(items, reclassify=True)
    assert [i["category"] for i in out] == ["speech", "speech"] and report.details["changed"] == 1


# ---------------------------------------------------------------- pipeline and report


def corpus() -> list[dict]:
    items = []
    for i in range(30):
        cat = ("speech", "music", "sound")[i % 3]
        caption = pseudo_words(40, seed=100 + i)
        items.append({"id": f"x{i}", "caption": caption, "category": None if i % 5 == 0 else cat,
                      "quality": {"audio": float(i % 7), "text": float(i % 4)}})  # fmt: skip
    items.append({"id": "bad", "caption": "no no no no", "category": "speech", "quality": {}})
    items.append(
        {"id": "dup", "caption": items[1]["caption"], "category": "music", "quality": {"audio": 6.0}}
    )
    return items


def test_curate_end_to_end_and_save_report(tmp_path):
    config = CurationConfig(
        filters=CaptionFilterConfig(disabled_rules=("token_count",)),
        truncation=TruncationConfig(
            temperature={"speech": 0.3, "music": 0.3, "sound": 0.3},
            discard={"speech": 0.5, "music": 0.5, "sound": 0.5},
        ),  # fmt: skip
        dedup=DedupConfig(threshold=0.7),
    )
    kept, report = curation.curate(corpus(), config)
    names = [s.name for s in report.stages]
    assert names == [
        "classification",
        "caption_filters",
        "quality_fusion",
        "gumbel_truncation",
        "minhash_dedup",
    ]
    assert report.stages[1].details["rejected"] == {"bad": ["word_repetition", "unique_word_ratio"]}
    assert sum(report.stages[3].kept.values()) == sum((n + 1) // 2 for n in report.stages[3].input.values())
    assert all(i["category"] in ("speech", "music", "sound") and "fused" in i["quality"] for i in kept)
    paths = curation.save_report(report, tmp_path / "out")
    data = json.loads(paths["report"].read_text())
    assert data["kept"] == report.stages[-1].kept and len(data["stages"]) == 5
    for name in ("fused_scores", "caption_lengths"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "caption_filters" in report.summary()


def test_curate_records_and_config_from_dict():
    records = [
        Record(f"r{i}", pseudo_words(30, seed=i), "sound", quality={"audio": float(i)}) for i in range(10)
    ]
    config = CurationConfig.from_dict(
        {"filters": {"min_tokens": 5}, "truncation": {"preset": "generation"}, "dedup": {"enabled": False}}
    )
    assert config.truncation.temperature["speech"] == 0.1 and config.filters.max_tokens == 800
    kept, report = curation.curate(records, config)
    assert len(kept) == 8 and all(isinstance(r, Record) for r in kept)
    assert [s.name for s in report.stages][-1] == "gumbel_truncation"
    assert "fused" not in records[0].quality
    with pytest.raises(ValueError, match="unknown curation config keys"):
        CurationConfig.from_dict({"filter": {}})
