"""Text-generation clients: the one interface data curation and SFT simulation prompt LLMs through.

Every client offers ``generate(prompt, *, max_new_tokens, temperature, seed) -> str`` (the
:class:`TextGenerator` protocol) and raises :class:`LLMError` when no text came back, so callers count
failures instead of catching transport-specific exceptions.

* :class:`OpenAICompatibleClient`: any server speaking the OpenAI chat-completions API (vLLM, SGLang,
  llama.cpp, TGI, OpenAI itself), posted to ``{base_url}/v1/chat/completions`` with the standard
  library only (``urllib.request``); the key, when given, goes in an ``Authorization: Bearer`` header.
* :class:`LocalHFClient`: a transformers causal LM and its tokenizer read from a local directory
  (``local_files_only=True``; remote code is never trusted). The chat template is used when the
  tokenizer has one; sampling is seeded without touching the global RNG.
* :class:`ScriptedClient`: canned answers (a list, or a function of the prompt) for tests and
  offline runs; it records every prompt it was sent.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "LLMError",
    "TextGenerator",
    "OpenAICompatibleClient",
    "LocalHFClient",
    "ScriptedClient",
    "post_json",
]


class LLMError(RuntimeError):
    """A text-generation call returned no usable text (transport error, HTTP error, bad payload)."""


@runtime_checkable
class TextGenerator(Protocol):
    """What curation and SFT simulation need from an LLM: one prompt in, one completion out."""

    def generate(
        self, prompt: str, *, max_new_tokens: int = 512, temperature: float = 0.0, seed: int | None = None
    ) -> str: ...


def post_json(
    url: str,
    payload: Any,
    *,
    api_key: str | None = None,
    timeout: float,
    max_retries: int,
    delay: Callable[[int], float],
    error: Callable[[str], Exception] = LLMError,
    http_message: str = "{url}: HTTP {status}: {detail}",
    transport_message: str = "{url}: {reason}",
) -> bytes:
    """POST ``payload`` as JSON to ``url`` (``urllib`` only) and return the raw response body.

    The one HTTP request path of the OpenAI-compatible clients (:class:`OpenAICompatibleClient`,
    ``bagpiper_lib.evaluation.answerers.HTTPChatAnswerer``). ``api_key``, when given, goes in an
    ``Authorization: Bearer`` header. A connection error, timeout, HTTP 429 or HTTP 5xx is retried up to
    ``max_retries`` times, sleeping ``delay(attempt)`` seconds after failed attempt ``attempt``
    (0-based); any other HTTP error raises at once. Giving up raises ``error(message)`` chained to the
    transport exception, where the message is ``http_message`` (fields ``url``, ``status``, ``detail``:
    the first 300 bytes of the error body) or ``transport_message`` (fields ``url``, ``reason``: the
    exception, ``attempts``: requests sent) formatted.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
    data = json.dumps(payload).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    attempt = 0
    while True:
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace")
            if (err.code != 429 and err.code < 500) or attempt == max_retries:
                raise error(http_message.format(url=url, status=err.code, detail=detail)) from err
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            if attempt == max_retries:
                message = transport_message.format(url=url, reason=err, attempts=attempt + 1)
                raise error(message) from err
        time.sleep(delay(attempt))
        attempt += 1


class OpenAICompatibleClient:
    """Chat-completions client for an OpenAI-compatible HTTP server.

    Args:
        base_url: server root, e.g. ``"http://127.0.0.1:8000"`` (a trailing ``/v1`` is accepted too).
        model: model name the server serves.
        api_key: optional bearer token.
        timeout: seconds per HTTP request.
        system_prompt: optional system message put before every prompt.
        max_retries: extra attempts after a connection error, HTTP 429 or HTTP 5xx (linear back-off).
        retry_delay: seconds before the first retry (multiplied by the attempt number).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        system_prompt: str | None = None,
        max_retries: int = 2,
        retry_delay: float = 1.0,
    ) -> None:
        root = base_url.rstrip("/")
        self.url = f"{root}/chat/completions" if root.endswith("/v1") else f"{root}/v1/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.system_prompt = system_prompt
        self.max_retries = max_retries
        self.retry_delay = retry_delay

    def payload(self, prompt: str, max_new_tokens: int, temperature: float, seed: int | None) -> dict:
        """The JSON body of one request."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_new_tokens,
            "temperature": temperature,
        }
        if seed is not None:
            body["seed"] = seed
        return body

    def generate(
        self, prompt: str, *, max_new_tokens: int = 512, temperature: float = 0.0, seed: int | None = None
    ) -> str:
        raw = post_json(
            self.url,
            self.payload(prompt, max_new_tokens, temperature, seed),
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
            delay=lambda attempt: self.retry_delay * (attempt + 1),
        )
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise LLMError(f"{self.url}: unexpected response {raw[:300]!r}") from err
        if not isinstance(content, str):
            raise LLMError(f"{self.url}: response content is {type(content).__name__}, not text")
        return content


class LocalHFClient:
    """A transformers causal LM from a local directory (no download, no remote code).

    Args:
        pretrained_dir: directory holding both the model (``config.json`` + weights) and the tokenizer.
        device: where the model runs.
        dtype: torch dtype of the weights (``None`` keeps the checkpoint's default).
    """

    def __init__(self, pretrained_dir: str, device: str = "cpu", dtype: Any = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"local_files_only": True, "trust_remote_code": False}
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained_dir, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(pretrained_dir, dtype=dtype, **kwargs)
        self.model.to(device).eval()
        self.device = device

    def _input_ids(self, prompt: str):
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        return self.tokenizer(prompt, return_tensors="pt").input_ids

    def generate(
        self, prompt: str, *, max_new_tokens: int = 512, temperature: float = 0.0, seed: int | None = None
    ) -> str:
        import torch

        input_ids = self._input_ids(prompt).to(self.device)
        sampling = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                **sampling,
            )
        return self.tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)


class ScriptedClient:
    """Canned completions: ``responses[i]`` answers the i-th call, or ``responses(prompt)`` every call.

    Args:
        responses: a sequence of completions (served in order) or a function ``prompt -> completion``.
        cycle: start again from the first completion when the sequence runs out (else :class:`LLMError`).

    ``prompts`` lists every prompt received, in order.
    """

    def __init__(self, responses: Sequence[str] | Callable[[str], str], cycle: bool = False) -> None:
        self.responses = responses
        self.cycle = cycle
        self.prompts: list[str] = []

    def generate(
        self, prompt: str, *, max_new_tokens: int = 512, temperature: float = 0.0, seed: int | None = None
    ) -> str:
        self.prompts.append(prompt)
        if callable(self.responses):
            return self.responses(prompt)
        index = len(self.prompts) - 1
        if self.cycle and self.responses:
            index %= len(self.responses)
        if index >= len(self.responses):
            raise LLMError(f"ScriptedClient: no response scripted for call {index + 1}")
        return self.responses[index]
