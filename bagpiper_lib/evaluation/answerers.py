"""LLM answerers for caption-based question answering (see :mod:`bagpiper_lib.evaluation.qa`).

* :class:`HTTPChatAnswerer` — any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, llama.cpp,
  an API), stdlib ``urllib`` only. The reply is free text; :func:`~bagpiper_lib.evaluation.qa.parse_choice`
  reads the letter. Replies naming no single choice, and HTTP-200 bodies that are not a chat
  completion, are counted and answered ``-1`` (wrong); transport errors are retried, then raised.
* :class:`LocalLLMAnswerer` — a ``transformers`` causal LM from a local directory; each choice is
  scored by the log-likelihood of ``" " + choice`` after the prompt, the best wins (no parsing).

Both see only the caption, the question and the choices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from bagpiper_lib.data.llm import post_json
from bagpiper_lib.evaluation.qa import choice_letters, parse_choice

__all__ = ["HTTPChatAnswerer", "LocalLLMAnswerer", "SYSTEM_PROMPT", "chat_prompt"]

SYSTEM_PROMPT = (
    "You answer multiple-choice questions about an audio clip that you cannot hear. You only get a "
    "written description of the clip. Reply with the letter of the best choice."
)


def chat_prompt(caption: str, question: str, choices: Sequence[str]) -> str:
    """The user message: description, question, lettered choices, and the reply format."""
    letters = choice_letters(len(choices))
    lines = [f"{letter}. {choice}" for letter, choice in zip(letters, choices)]
    return (
        f"Description of the audio:\n{caption}\n\nQuestion: {question}\nChoices:\n"
        + "\n".join(lines)
        + f"\n\nAnswer with a single letter ({letters[0]}-{letters[-1]})."
    )


def _chat_url(base_url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` -> ``.../v1/chat/completions``."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(
            f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {base_url!r}"
        )
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


class HTTPChatAnswerer:
    """Ask an OpenAI-compatible chat-completions endpoint, greedy (``temperature=0``) by default.

    Args:
        base_url: server root or its ``/v1`` prefix (``http://127.0.0.1:8000/v1``).
        model: the ``model`` field of the request.
        api_key: sent as ``Authorization: Bearer <api_key>`` when given.
        timeout: seconds per request.
        max_retries: extra attempts after a connection error, HTTP 429 or 5xx (other HTTP errors
            raise at once); waits ``retry_delay * 2**attempt`` seconds between attempts.
        max_tokens: reply budget; raise it for reasoning models that think before answering.

    Counters: ``num_requests``, ``num_unparseable`` (reply names no single choice) and
    ``num_malformed`` (HTTP 200 whose body is not a chat completion); both kinds answer ``-1``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        retry_delay: float = 1.0,
        temperature: float = 0.0,
        max_tokens: int = 32,
        system_prompt: str = SYSTEM_PROMPT,
    ):
        self.url = _chat_url(base_url)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.model, self.api_key, self.timeout = model, api_key, float(timeout)
        self.max_retries, self.retry_delay = max_retries, float(retry_delay)
        self.temperature, self.max_tokens, self.system_prompt = temperature, max_tokens, system_prompt
        self.num_requests = self.num_unparseable = self.num_malformed = 0

    def _post(self, payload: dict) -> bytes:
        return post_json(
            self.url,
            payload,
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
            delay=lambda attempt: self.retry_delay * 2**attempt,
            error=RuntimeError,
            http_message="chat endpoint {url} answered HTTP {status}: {detail}",
            transport_message="chat endpoint {url} unreachable after {attempts} attempt(s): {reason}",
        )

    def reply(self, caption: str, question: str, choices: Sequence[str]) -> str | None:
        """The model's raw reply text, or ``None`` when the body is not a chat completion."""
        payload = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": chat_prompt(caption, question, choices)},
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        self.num_requests += 1
        body = self._post(payload)
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return content if isinstance(content, str) else None

    def answer(self, caption: str, question: str, choices: Sequence[str]) -> int:
        content = self.reply(caption, question, choices)
        if content is None:
            self.num_malformed += 1
            return -1
        index = parse_choice(content, choices)
        if index is None:
            self.num_unparseable += 1
            return -1
        return index


class LocalLLMAnswerer:
    """Pick the choice a local causal LM finds most likely after the prompt.

    ``score_choices`` returns, for each choice, ``sum_t log p(c_t | prompt, c_<t)`` over the tokens
    ``c`` of ``" " + choice`` (tokenized separately from the prompt and appended, so every choice
    shares the same prompt tokens); ``length_normalize=True`` divides by the token count. The prompt
    is ``bos`` (when the tokenizer has one) + ``"Description: {caption}\\nQuestion: {question}\\nAnswer:"``.

    Args:
        pretrained: local directory with a ``transformers`` causal LM and its tokenizer; loaded with
            ``local_files_only=True`` and no remote code.
        device, dtype: where and in which precision the model runs (default CPU, checkpoint dtype).
    """

    def __init__(
        self,
        pretrained: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        length_normalize: bool = False,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not isinstance(pretrained, (str, Path)):
            raise TypeError(
                f"pretrained must be a local directory (str or Path), got {type(pretrained).__name__}"
            )
        kwargs = {"local_files_only": True, "trust_remote_code": False}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(pretrained), **kwargs)
            model_kwargs = dict(kwargs, **({"dtype": dtype} if dtype is not None else {}))
            self.model = AutoModelForCausalLM.from_pretrained(str(pretrained), **model_kwargs)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"pretrained={str(pretrained)!r}: cannot load a causal LM offline: {err}"
            ) from err
        self.model.to(device).eval()
        self.length_normalize = bool(length_normalize)

    def prompt(self, caption: str, question: str) -> str:
        return f"Description: {caption}\nQuestion: {question}\nAnswer:"

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, caption: str, question: str) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + self._ids(self.prompt(caption, question))

    @torch.no_grad()
    def score_choices(self, caption: str, question: str, choices: Sequence[str]) -> list[float]:
        """Log-likelihood of each choice given the prompt (one batched, right-padded forward)."""
        if len(choices) == 0:
            raise ValueError("choices is empty: need at least one choice to score")
        context = self.prompt_ids(caption, question)
        continuations = [self._ids(" " + choice) for choice in choices]
        for j, ids in enumerate(continuations):
            if not ids:
                raise ValueError(f"choices[{j}]={choices[j]!r} tokenizes to nothing")
        rows = [context + ids for ids in continuations]
        width = max(len(row) for row in rows)
        device = next(self.model.parameters()).device
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        scores = []
        for i, ids in enumerate(continuations):
            positions = torch.arange(len(context), len(context) + len(ids))
            total = logprobs[i, positions - 1, torch.tensor(ids)].double().sum().item()
            scores.append(total / len(ids) if self.length_normalize else total)
        return scores

    def answer(self, caption: str, question: str, choices: Sequence[str]) -> int:
        scores = self.score_choices(caption, question, choices)
        return max(range(len(scores)), key=lambda j: (scores[j], -j))
