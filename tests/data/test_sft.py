"""SFT simulation (prompts, lenient parsing, judge filter, failure counting) and text-generation clients."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from bagpiper_lib.data import sft
from bagpiper_lib.data.llm import (
    LLMError,
    LocalHFClient,
    OpenAICompatibleClient,
    ScriptedClient,
    TextGenerator,
)
from bagpiper_lib.data.records import Record

CAPTION = (
    "A slow jazz piano melody in a minor key at 70 BPM plays over a soft brushed drum beat, while a calm "
    "female voice says 'good evening' close to the microphone in a small reverberant room."
)


def scores(*values) -> str:
    return json.dumps(dict(zip(sft.JUDGE_DIMENSIONS, values)))


# ---------------------------------------------------------------- attributes and prompts


def test_pick_attributes_from_caption_content_and_compositional():
    present = {a.name for a in sft.caption_attributes(CAPTION)}
    assert {
        "tempo and meter",
        "instrumentation",
        "key and harmony",
        "spoken content and transcript",
    } <= present
    assert "sound event identity" not in present
    sizes = set()
    for seed in range(40):
        picked = sft.pick_attributes(CAPTION, random.Random(seed))
        assert 1 <= len(picked) <= 3 and {a.name for a in picked} <= present
        assert len({a.name for a in picked}) == len(picked)
        sizes.add(len(picked))
    assert sizes == {1, 2, 3}
    assert {a.group for a in sft.pick_attributes("Zzz.", random.Random(0))} == {"general"}


def test_prompt_builders_carry_caption_and_choices():
    attrs = sft.pick_attributes(CAPTION, random.Random(1), max_attributes=1)
    prompt = sft.understanding_request_prompt(CAPTION, attrs)
    assert CAPTION in prompt and attrs[0].name in prompt and '"request"' in prompt and '"answer"' in prompt
    two = sft.understanding_request_prompt(CAPTION, sft.ATTRIBUTES[:2])
    assert "compositional" in two
    cot = sft.understanding_cot_prompt(CAPTION, "What tempo?", "70 BPM.")
    assert "Self-Check" in cot and "What tempo?" in cot and "70 BPM." in cot
    persona = sft.PERSONAS[3]
    imaginary = sft.generation_request_prompt(CAPTION, persona, "imaginary")
    explicit = sft.generation_request_prompt(CAPTION, persona, "explicit")
    assert persona in imaginary and "atmosphere" in imaginary and "concrete sounds" in explicit
    assert "Generation Plan" in sft.generation_cot_prompt(CAPTION, "Make me a rainy evening.")
    with pytest.raises(ValueError, match="style"):
        sft.generation_request_prompt(CAPTION, persona, "vague")
    assert len(sft.PERSONAS) == 12
    sample = sft.SFTSample("r", "generation", "req", CAPTION, "plan")
    judge = sft.judge_prompt(sample)
    assert all(d in judge for d in sft.JUDGE_DIMENSIONS) and judge.index("[reasoning]") < judge.index(
        "[caption]"
    )


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"request": "q"}', {"request": "q"}),
        (
            'Sure! ```json\n{"request": "q", "n": {"a": 1}}\n``` hope this helps',
            {"request": "q", "n": {"a": 1}},
        ),
        ('Here: {"request": "a {brace} inside"} and more text {not json}', {"request": "a {brace} inside"}),
        ('{broken: json} then {"ok": 1}', {"ok": 1}),
        ("no json at all", None),
        ("[1, 2, 3]", None),
    ],
)
def test_parse_json_object(text, expected):
    assert sft.parse_json_object(text) == expected


def test_parse_fields_and_scores_are_lenient_but_strict_on_content():
    assert sft.parse_fields('{"reasoning": ["Intent: x", "Plan: y"]}', ("reasoning",)) == {
        "reasoning": "Intent: x\nPlan: y"
    }
    assert sft.parse_fields('{"request": "q"}', ("request", "answer")) is None
    assert sft.parse_fields('{"request": "  ", "answer": "a"}', ("request", "answer")) is None
    assert sft.parse_fields('{"request": 5}', ("request",)) is None
    good = '{"scores": {"request_diversity": "4/5", "request_response_alignment": 5, "reasoning_coherence": "3.5",'
    good += ' "caption_quality": 4, "training_value": "2 - weak"}}'
    assert sft.parse_scores(good) == dict(zip(sft.JUDGE_DIMENSIONS, [4.0, 5.0, 3.5, 4.0, 2.0]))
    assert sft.parse_scores(scores(4, 4, 4, 4, "great")) is None
    assert sft.parse_scores(scores(4, 4, 4, 4, 7)) is None
    assert sft.parse_scores(scores(4, 4, 4, 4)) is None
    assert sft.parse_scores(scores(4, 4, 4, 4, True)) is None


# ---------------------------------------------------------------- the driver


def test_judge_keeps_mean_above_three_and_drops_the_rest():
    responses = [
        '{"request": "What tempo is the piano?", "answer": "About 70 BPM."}',
        '{"reasoning": "User Intent: tempo. Evidence: 70 BPM."}',
        '{"request": "Is the speaker calm?", "answer": "Yes."}',
        '{"reasoning": "The voice is described as calm."}',
        '{"request": "A cozy late-night lounge scene, please."}',
        '{"reasoning": "Plan: slow jazz piano, brushed drums, a calm greeting."}',
        scores(4, 4, 4, 4, 4),  # understanding 1: mean 4 -> kept
        scores(3, 3, 3, 3, 3),  # understanding 2: mean 3 -> judged out (must exceed 3)
        scores(4, 4, 3, 3, 2),  # generation: mean 3.2 -> kept
    ]
    client = ScriptedClient(responses)
    record = Record("rec0", CAPTION, "music")
    kept, report = sft.simulate([record], client, seed=0, understanding_per_record=2, generation_per_record=1)
    assert [(s.kind, s.request) for s in kept] == [
        ("understanding", "What tempo is the piano?"),
        ("generation", "A cozy late-night lounge scene, please."),
    ]
    assert kept[0].answer == "About 70 BPM." and kept[0].caption == CAPTION and kept[0].record_id == "rec0"
    assert kept[1].answer == "" and kept[1].meta["style"] in sft.GENERATION_STYLES and kept[1].score == 3.2
    assert 1 <= len(kept[0].meta["attributes"]) <= 3
    assert report.to_dict()["totals"] == {
        "generated": 3, "parse_failures": 0, "client_errors": 0, "judged_out": 1, "kept": 2,
    }  # fmt: skip
    assert report.judged_out == {"understanding": 1} and len(client.prompts) == 9
    assert json.loads(json.dumps(kept[1].to_dict()))["scores"]["training_value"] == 2.0


def test_malformed_outputs_are_counted_and_skipped():
    responses = [
        'Sure!\n```json\n{"request": "Which instrument leads?", "answer": "The piano."}\n```\nAnything else?',
        '{"reasoning": {"User Intent": "instrument", "Answering Plan": "name the piano"}} trailing',
        "I cannot produce JSON today.",  # understanding 2: request unparseable
        '{"request": ""}',  # generation: empty request
        scores(5, 5, 5, 5, "excellent"),  # judge of understanding 1: non-numeric score
    ]
    kept, report = sft.simulate(
        [{"id": "d0", "caption": CAPTION}], ScriptedClient(responses), understanding_per_record=2
    )
    assert kept == []
    assert report.generated == {"understanding": 1}
    assert report.parse_failures == {"understanding.request": 1, "generation.request": 1, "judge": 1}
    # a client that fails every call: counted per stage, nothing raised
    kept, report = sft.simulate([{"id": "d1", "caption": CAPTION}], ScriptedClient([]))
    assert kept == [] and report.client_errors == {"understanding.request": 1, "generation.request": 1}


def test_simulate_without_judge_is_reproducible():
    def responder(prompt: str) -> str:
        if '"answer"' in prompt:
            return '{"request": "q", "answer": "a"}'
        return '{"reasoning": "r"}' if '"reasoning"' in prompt else '{"request": "g"}'

    runs = [sft.simulate([Record(f"r{i}", CAPTION, "music") for i in range(3)], ScriptedClient(responder),
                         seed=7, judge=False) for _ in range(2)]  # fmt: skip
    assert [s.to_dict() for s in runs[0][0]] == [s.to_dict() for s in runs[1][0]]
    assert runs[0][1].kept == {"understanding": 3, "generation": 3}


# ---------------------------------------------------------------- clients


class _Handler(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append((self.path, self.headers.get("Authorization"), body))
        prompt = body["messages"][-1]["content"]
        if prompt == "fail":
            status, payload = 400, b'{"error": "bad request"}'
        elif prompt == "garbage":
            status, payload = 200, b'{"choices": []}'
        else:
            status, payload = (
                200,
                json.dumps({"choices": [{"message": {"content": f"echo: {prompt}"}}]}).encode(),
            )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A chat-completions stub on 127.0.0.1 (ephemeral port), shut down after the test."""
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _Handler.seen = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_openai_compatible_client_against_local_server(server):
    client = OpenAICompatibleClient(
        server, "tiny-model", api_key="k", timeout=5, max_retries=0, system_prompt="S"
    )
    assert isinstance(client, TextGenerator)
    assert client.generate("hello", max_new_tokens=7, temperature=0.5, seed=3) == "echo: hello"
    path, auth, body = _Handler.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k"
    assert body == {"model": "tiny-model", "max_tokens": 7, "temperature": 0.5, "seed": 3,
                    "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hello"}]}  # fmt: skip
    assert OpenAICompatibleClient(server + "/v1/", "m", max_retries=0).generate("x") == "echo: x"
    assert _Handler.seen[1][0] == "/v1/chat/completions" and _Handler.seen[1][1] is None
    with pytest.raises(LLMError, match="HTTP 400"):
        client.generate("fail")
    with pytest.raises(LLMError, match="unexpected response"):
        client.generate("garbage")
    with pytest.raises(LLMError):
        OpenAICompatibleClient("http://127.0.0.1:9", "m", timeout=2, max_retries=0).generate("x")


def test_scripted_client_sequence_cycle_and_function():
    client = ScriptedClient(["a", "b"], cycle=True)
    assert [client.generate(p) for p in "xyz"] == ["a", "b", "a"] and client.prompts == ["x", "y", "z"]
    with pytest.raises(LLMError, match="call 2"):
        once = ScriptedClient(["a"])
        once.generate("1")
        once.generate("2")
    assert ScriptedClient(str.upper).generate("hi") == "HI"


def test_local_hf_client_loads_a_local_directory(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", "hello", "sound", "music", "speech"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")  # fmt: skip
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, eos_token_id=1)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    client = LocalHFClient(str(tmp_path))
    greedy = [client.generate("hello sound", max_new_tokens=4) for _ in range(2)]
    assert greedy[0] == greedy[1] and isinstance(greedy[0], str)
    sampled = [client.generate("hello", max_new_tokens=4, temperature=1.0, seed=5) for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert set(" ".join(greedy + sampled).split()) <= set(vocab) - {"<pad>", "<eos>"}
