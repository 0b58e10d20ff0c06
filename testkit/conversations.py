"""The multi-turn workload that routing is measured on (issue 17): conversations, each with a long
system prompt of its own, sent turn by turn, round-robin across the conversations, so that a replica
serving every conversation cycles through more prefixes than its KV cache holds.

Each turn's prompt is the whole conversation so far (system prompt, earlier user turns and the
assistant's answers), as a chat client sends it. Results carry the replica that answered (direct
mode's `X-Slmserve-Replica`) and the TTFT of each turn.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from testkit.exposition import Exposition

WORDS = (
    "river stone lantern orchard harbor meadow copper violet signal thunder marble willow canyon "
    "ember falcon glacier velvet prism harvest beacon summit cobalt saffron timber"
).split()


def system_prompt(conversation: int, words: int) -> str:
    """A distinct, reproducible system prompt of about `words` words (roughly 1.3 tokens each)."""
    rng = random.Random(conversation)
    return f"Conversation {conversation}. " + " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass
class Turn:
    conversation: int
    turn: int
    status: int
    replica: str | None
    ttft_s: float | None
    output_tokens: int
    prompt_tokens: int


@dataclass
class Conversation:
    index: int
    messages: list[dict] = field(default_factory=list)


async def _send_turn(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    conversation: Conversation,
    turn: int,
    max_tokens: int,
    headers: dict[str, str],
    extra_body: dict,
) -> Turn:
    conversation.messages.append({"role": "user", "content": f"Question {turn}: say something about {turn}."})
    body = {
        "model": model,
        "messages": conversation.messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra_body,
    }
    started, first, text, tokens, prompt_tokens = time.perf_counter(), None, [], 0, 0
    async with client.stream("POST", url, json=body, headers=headers) as response:
        replica = response.headers.get("x-slmserve-replica")
        if response.status_code != 200:
            await response.aread()
            return Turn(conversation.index, turn, response.status_code, replica, None, 0, 0)
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
                prompt_tokens = chunk["usage"]["prompt_tokens"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    first = first or time.perf_counter() - started
                    text.append(choice["delta"]["content"])
    conversation.messages.append({"role": "assistant", "content": "".join(text)})
    return Turn(conversation.index, turn, 200, replica, first, tokens, prompt_tokens)


async def run_conversations(
    base_url: str,
    model: str,
    *,
    conversations: int,
    turns: int,
    system_words: int,
    max_tokens: int,
    concurrency: int,
    session_header: str | None = None,
    api_key: str = "",
    extra_body: dict | None = None,
) -> tuple[list[Turn], float]:
    """All turns, round-robin across conversations (turn t of every conversation before turn t+1),
    `concurrency` requests at a time; returns the turns and the wall time."""
    chats = [
        Conversation(n, [{"role": "system", "content": system_prompt(n, system_words)}]) for n in range(conversations)
    ]
    url = f"{base_url}/v1/chat/completions"
    results: list[Turn] = []
    limits = httpx.Limits(max_connections=concurrency)
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:
        for turn in range(1, turns + 1):

            async def one(chat: Conversation, turn: int = turn) -> Turn:
                headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
                if session_header:
                    headers[session_header] = f"conversation-{chat.index}"
                async with gate:
                    return await _send_turn(client, url, model, chat, turn, max_tokens, headers, extra_body or {})

            results += await asyncio.gather(*(one(chat) for chat in chats))
    return results, time.perf_counter() - started


def prefix_cache_counts(metrics_text: str) -> tuple[float, float]:
    """(hits, queries) of vLLM's prefix cache, summed over every engine replica, from /metrics."""
    metrics = Exposition.parse(metrics_text)
    return metrics.total("vllm:prefix_cache_hits_total"), metrics.total("vllm:prefix_cache_queries_total")


def cache_counts_covering(
    read_metrics: Callable[[], str], before: tuple[float, float], turns: list[Turn], timeout_s: float = 30
) -> tuple[float, float]:
    """The prefix-cache counters once /metrics holds every one of `turns`: vLLM counts each new
    request's prompt tokens as queries, and the engines' series reach /metrics only every
    ENGINE_SERIES_PERIOD_S, so a read right after the last answer can miss the last seconds of turns."""
    expected = sum(turn.prompt_tokens for turn in turns)
    deadline = time.monotonic() + timeout_s
    while True:
        after = prefix_cache_counts(read_metrics())
        if after[1] - before[1] >= expected:
            return after
        assert time.monotonic() < deadline, f"/metrics holds {after[1] - before[1]:.0f} of {expected} queried tokens"
        time.sleep(0.5)


def hit_rate(before: tuple[float, float], after: tuple[float, float]) -> float:
    hits, queries = after[0] - before[0], after[1] - before[1]
    return hits / queries if queries else float("nan")
