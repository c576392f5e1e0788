"""LLM answerers: HTTP chat answerer against a loopback stub server; local causal-LM log-likelihoods."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from bagpiper_lib.evaluation import HTTPChatAnswerer, LocalLLMAnswerer, multiple_choice_accuracy
from bagpiper_lib.evaluation.answerers import _chat_url


class _StubHandler(BaseHTTPRequestHandler):
    """OpenAI-style chat completions. The caption steers the reply: ``REPLY:<text>`` is echoed back,
    ``MALFORMED`` returns a non-chat body, ``FLAKY`` fails with 503 on its first request, ``DENY`` 401."""

    timeout = 5

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][-1]["content"]
        if "DENY" in prompt:
            return self._send(401, b'{"error": "bad key"}')
        if "FLAKY" in prompt and not server.flaked:
            server.flaked = True
            return self._send(503, b"busy")
        if "MALFORMED" in prompt:
            return self._send(200, b"<html>not a chat completion</html>")
        text = prompt.split("REPLY:", 1)[1].split("\n", 1)[0] if "REPLY:" in prompt else "A"
        return self._send(
            200, json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        )

    def _send(self, code: int, payload: bytes):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def stub_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    server.daemon_threads = True
    server.seen, server.flaked = [], False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def _q(answer: int) -> dict:
    return {"question": "What animal is it?", "choices": ["cat", "dog", "cow"], "answer": answer}


def test_http_answerer_against_stub_server(stub_server):
    answerer = HTTPChatAnswerer(_url(stub_server), "stub-model", api_key="secret", timeout=5)
    captions = [
        "A dog barks. REPLY:The answer is (B).",  # right
        "A cow moos. REPLY:C",  # right
        "A cat purrs. REPLY:I honestly cannot tell from this.",  # unparseable -> wrong
        "MALFORMED body",  # not a chat completion -> wrong
        "A dog again. REPLY:A) cat",  # parsed, wrong
    ]
    accuracy = multiple_choice_accuracy(captions, [_q(1), _q(2), _q(0), _q(1), _q(1)], answerer)
    assert accuracy == pytest.approx(2 / 5)
    assert (answerer.num_requests, answerer.num_unparseable, answerer.num_malformed) == (5, 1, 1)
    first = stub_server.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer secret"
    body = first["body"]
    assert body["model"] == "stub-model" and body["temperature"] == 0.0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = body["messages"][1]["content"]
    assert "A dog barks." in user and "What animal is it?" in user and "A. cat\nB. dog\nC. cow" in user


def test_http_answerer_retries_then_raises(stub_server):
    flaky = HTTPChatAnswerer(_url(stub_server), "m", retry_delay=0.0, max_retries=1)
    assert flaky.answer("FLAKY REPLY:B", "q", ["x", "y"]) == 1
    assert len(stub_server.seen) == 2  # one 503, one success
    with pytest.raises(RuntimeError, match="answered HTTP 401"):
        HTTPChatAnswerer(_url(stub_server), "m", retry_delay=0.0).answer("DENY", "q", ["x", "y"])
    assert len(stub_server.seen) == 3  # 4xx is not retried
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = HTTPChatAnswerer(f"http://127.0.0.1:{port}", "m", timeout=2, max_retries=0)
    with pytest.raises(RuntimeError, match="unreachable after 1 attempt"):
        dead.answer("c", "q", ["x", "y"])


def test_http_answerer_configuration():
    assert _chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert _chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert _chat_url("https://h/api/v1/chat/completions") == "https://h/api/v1/chat/completions"
    with pytest.raises(ValueError, match="base_url must be an http"):
        HTTPChatAnswerer("localhost:8000", "m")
    with pytest.raises(ValueError, match="model must be a non-empty str"):
        HTTPChatAnswerer("http://h:1", "")
    with pytest.raises(ValueError, match="1 to 26 choices"):
        HTTPChatAnswerer("http://h:1", "m").answer("c", "q", [str(i) for i in range(27)])


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory, fast_tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(fast_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        bos_token_id=fast_tokenizer.bos_token_id, eos_token_id=fast_tokenizer.eos_token_id,
        pad_token_id=fast_tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("llm")
    model.save_pretrained(path)
    fast_tokenizer.save_pretrained(path)
    return path, model


CAPTION, QUESTION = "A dog barks loudly in a quiet park.", "What animal is it?"
LLM_CHOICES = ["dog", "slow piano melody", "cat"]


def test_local_llm_scores_are_log_likelihood_sums(llm_dir, fast_tokenizer):
    path, model = llm_dir
    answerer = LocalLLMAnswerer(path)
    scores = answerer.score_choices(CAPTION, QUESTION, LLM_CHOICES)
    assert len(scores) == 3 and all(s < 0 for s in scores)
    # by hand, one unpadded sequence for choice 1 (the longest)
    prompt = f"Description: {CAPTION}\nQuestion: {QUESTION}\nAnswer:"
    context = [fast_tokenizer.bos_token_id] + fast_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    choice = fast_tokenizer(" " + LLM_CHOICES[1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context + choice])).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    by_hand = sum(float(logprobs[len(context) + k - 1, tok]) for k, tok in enumerate(choice))
    assert len(choice) > 1 and scores[1] == pytest.approx(by_hand, abs=1e-4)
    normalized = LocalLLMAnswerer(path, length_normalize=True).score_choices(CAPTION, QUESTION, LLM_CHOICES)
    assert normalized[1] == pytest.approx(by_hand / len(choice), abs=1e-4)


def test_local_llm_answer_is_deterministic_argmax(llm_dir):
    path, _ = llm_dir
    first, second = LocalLLMAnswerer(path), LocalLLMAnswerer(path)
    scores = first.score_choices(CAPTION, QUESTION, LLM_CHOICES)
    index = first.answer(CAPTION, QUESTION, LLM_CHOICES)
    assert index == max(range(3), key=lambda j: scores[j])
    assert second.answer(CAPTION, QUESTION, LLM_CHOICES) == index
    question = {"question": QUESTION, "choices": LLM_CHOICES, "answer": index}
    assert multiple_choice_accuracy([CAPTION], [question], first) == 1.0


def test_local_llm_bad_input(llm_dir, tmp_path):
    with pytest.raises(ValueError, match="pretrained=.*cannot load a causal LM offline"):
        LocalLLMAnswerer(tmp_path / "missing")
    with pytest.raises(ValueError, match="choices is empty"):
        LocalLLMAnswerer(llm_dir[0]).score_choices(CAPTION, QUESTION, [])


def test_local_llm_prefers_the_choice_it_was_trained_on(llm_dir, fast_tokenizer, tmp_path):
    path, model = llm_dir
    trained = type(model)(model.config)
    trained.load_state_dict(model.state_dict())
    prompt = f"Description: {CAPTION}\nQuestion: {QUESTION}\nAnswer:"
    ids = [fast_tokenizer.bos_token_id] + fast_tokenizer(prompt + " dog", add_special_tokens=False)[
        "input_ids"
    ]
    batch = torch.tensor([ids])
    optimizer = torch.optim.Adam(trained.parameters(), lr=3e-2)
    trained.train()
    for _ in range(8):
        optimizer.zero_grad()
        trained(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
    trained.eval().save_pretrained(tmp_path)
    fast_tokenizer.save_pretrained(tmp_path)
    answerer = LocalLLMAnswerer(tmp_path)
    assert answerer.answer(CAPTION, QUESTION, ["cat", "dog", "piano"]) == 1
    scores = answerer.score_choices(CAPTION, QUESTION, ["cat", "dog", "piano"])
    assert scores[1] > max(scores[0], scores[2]) + 1.0
