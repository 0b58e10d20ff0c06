"""Measuring an OpenAI SSE stream as a user feels it: time to first token (TTFT), inter-token
latency (ITL) and output tokens. Shared by the locust users and the benchmark."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StreamStats:
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    content_chunks: int = 0
    usage: dict | None = None
    finish_reason: str | None = None
    error: str | None = None

    @property
    def output_tokens(self) -> int:
        """Exact when the server sent usage; otherwise one token per content chunk."""
        if self.usage and self.usage.get("completion_tokens") is not None:
            return int(self.usage["completion_tokens"])
        return self.content_chunks

    @property
    def mean_itl_s(self) -> float | None:
        return sum(self.itl_s) / len(self.itl_s) if self.itl_s else None


def _delta_text(event: dict) -> str:
    text = ""
    for choice in event.get("choices") or []:
        delta = choice.get("delta")
        text += (delta.get("content") or "") if isinstance(delta, dict) else (choice.get("text") or "")
    return text


class StreamMeter:
    """Feed it each SSE line with the time it arrived (seconds, same clock as `started`)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.stats = StreamStats()
        self._last_token_at: float | None = None
        self.done = False

    def feed(self, line: str | bytes, now: float) -> None:
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        if not line.startswith("data:"):
            return  # blank separators, comments (": keep-alive"), event names
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            self.stats.e2e_s = now - self.started
            return
        try:
            event = json.loads(payload)
        except json.JSONDecodeError:
            self.stats.error = f"malformed SSE data: {payload[:80]}"
            return
        if "error" in event:
            self.stats.error = str(event["error"].get("message", event["error"]))
            return
        if event.get("usage"):
            self.stats.usage = event["usage"]
        for choice in event.get("choices") or []:
            self.stats.finish_reason = choice.get("finish_reason") or self.stats.finish_reason
        if _delta_text(event):
            self.stats.content_chunks += 1
            if self.stats.ttft_s is None:
                self.stats.ttft_s = now - self.started
            else:
                self.stats.itl_s.append(now - self._last_token_at)
            self._last_token_at = now

    def finish(self, now: float) -> StreamStats:
        if self.stats.e2e_s is None:
            self.stats.e2e_s = now - self.started
            if self.stats.error is None:
                self.stats.error = "stream ended without [DONE]"
        return self.stats


def prompt_of(words: int) -> str:
    """A deterministic prompt of about `words` tokens for SmolLM2/Phi tokenizers."""
    vocabulary = (
        "river stone light garden paper window music forest ocean quiet morning cloud "
        "bridge letter valley summer winter engine harbor market"
    ).split()
    body = " ".join(vocabulary[i % len(vocabulary)] for i in range(max(words - 8, 1)))
    return f"Continue this list of words: {body}"


def parse_model_mix(text: str) -> list[tuple[str, float]]:
    """'default:3,moe:1,vision' -> [('default', 3.0), ('moe', 1.0), ('vision', 1.0)]."""
    mix = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition(":")
        mix.append((name, float(weight) if weight else 1.0))
    return mix


def prompt_words_for(model_dir: Path | str, target_tokens: int) -> int:
    """Words of loadtests.sse.prompt_of that make a chat prompt of about `target_tokens` tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for words in range(8, 400):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt_of(words)}], add_generation_prompt=True, tokenize=False
        )
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= target_tokens:
            return words
    return 400
