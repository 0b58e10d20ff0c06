"""Replica routing across two real engine replicas of the embedded model (direct mode, prefix
affinity, the catalog's defaults; the package's instance), driven over HTTP as a chat client would
(issue 17). The replica that answered is read from `X-Slmserve-Replica`; cache hits from the
engines' own vLLM counters."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import Counter

import httpx
import openai
import pytest
from openai.types.responses import Response

from services.core.timing import ENGINE_SERIES_PERIOD_S
from testkit.conversations import cache_counts_covering, hit_rate, prefix_cache_counts, run_conversations, system_prompt
from testkit.exposition import Exposition
from testkit.serving import ServerProcess

from .instance import BOUND, MODEL

pytestmark = pytest.mark.live


def _metrics(server: ServerProcess) -> str:
    return httpx.get(f"{server.base_url}/metrics", timeout=30).text


def _wait_until_idle(server: ServerProcess, timeout_s: float = 60) -> None:
    """Until the engines hold nothing: the streams a test left are aborted and their admission slots
    free (a replica frees the slot where it aborts the request), so the next test starts from zero."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = Exposition.parse(_metrics(server))
        held = sum(metrics.total(name, model_name=MODEL) for name in ("num_requests_running", "num_requests_waiting"))
        if held == 0:
            time.sleep(1.5)  # the engines' snapshots are a second old: one more, to be sure
            return
        assert time.monotonic() < deadline, f"the engines still hold {held} requests after {timeout_s:.0f}s"
        time.sleep(0.5)


def _decisions(server: ServerProcess) -> Counter[str]:
    counts: Counter[str] = Counter()
    metrics = Exposition.parse(_metrics(server))
    for labels, value in metrics.values("slmserve_routing_decisions_total", model_name=MODEL):
        counts[labels["reason"]] += int(value)
    return counts


def _decision_times(server: ServerProcess) -> tuple[float, float]:
    """(count, sum in seconds) of the ReplicaPicker's timed choices for MODEL."""
    metrics, name = Exposition.parse(_metrics(server)), "slmserve_routing_decision_seconds"
    return metrics.total(f"{name}_count", model_name=MODEL), metrics.total(f"{name}_sum", model_name=MODEL)


def test_each_conversation_stays_on_one_replica_and_hits_the_cache(server):
    _wait_until_idle(server)
    time.sleep(ENGINE_SERIES_PERIOD_S + 1)  # the counters of the tests before this one have reached /metrics
    before, decided, timed = prefix_cache_counts(_metrics(server)), _decisions(server), _decision_times(server)
    turns, _ = asyncio.run(
        run_conversations(
            server.base_url, MODEL, conversations=6, turns=3, system_words=600, max_tokens=8, concurrency=2
        )
    )
    assert [turn.status for turn in turns] == [200] * 18
    homes = {conversation: {t.replica for t in turns if t.conversation == conversation} for conversation in range(6)}
    assert all(len(replicas) == 1 for replicas in homes.values()), homes
    assert len(set().union(*homes.values())) == 2  # new conversations spread over both replicas
    rate = hit_rate(before, cache_counts_covering(lambda: _metrics(server), before, turns))
    assert rate >= 0.5, rate  # the first turn of each conversation cannot hit: about 0.63 at most here
    assert _decisions(server)["prefix_hit"] - decided["prefix_hit"] >= 12  # turns 2 and 3
    count, seconds = (now - then for now, then in zip(_decision_times(server), timed, strict=True))
    assert count >= 18 and 0 < seconds / count < 1.0, (count, seconds)  # each choice timed, none near a second


def test_a_session_header_picks_the_replica_a_new_conversation_starts_on(server):
    def replica_for(session: str, question: str) -> str:
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            timeout=60,
            headers={"X-Session-Id": session},
            json={"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": f"{question} " * 150}]},
        )
        assert response.status_code == 200
        return response.headers["x-slmserve-replica"]

    # Prompts that share no prefix with anything sent before: the session alone decides.
    homes = {session: replica_for(session, f"first question of {session}") for session in ("s1", "s2", "s3", "s4")}
    assert all(replica_for(session, f"an unrelated question for {session}") == home for session, home in homes.items())


def test_new_work_goes_to_the_idle_peer_of_a_saturated_replica(server):
    long_body = {
        "model": MODEL,
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
        "messages": [
            {"role": "system", "content": system_prompt(99, 300)},
            {"role": "user", "content": "Tell a long story."},
        ],
    }

    def long_stream(_: int) -> str | None:
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=long_body, timeout=300) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    return response.headers.get("x-slmserve-replica")  # leave once the stream runs
        return None

    _wait_until_idle(server)  # the guard compares loads: start from none
    before = _decisions(server)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        streams = list(pool.map(long_stream, range(10)))
    held = Counter(streams)
    _wait_until_idle(server)
    assert sum(held.values()) == 10 and len(held) == 2, held  # the load guard split the prefix's streams
    assert max(held.values()) >= 8
    assert _decisions(server)["load_guard"] > before["load_guard"]


def test_the_in_flight_bound_holds_across_both_replicas(server):
    """16 streams held open at once: the catalog's bound of 12 admits 12 in all (a bound per replica
    would admit all 16, 12 on each), the other 4 get 429 queue_full."""
    body = {
        "model": MODEL,
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell a long story."}],
    }
    everyone_answered = threading.Barrier(16, timeout=120)

    def hold(_: int) -> tuple[int, str | None]:
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=300) as response:
            if response.status_code == 200:
                lines = response.iter_lines()
                assert any('"content"' in next(lines) for _ in range(8))
            else:
                response.read()
            everyone_answered.wait()  # keep the admitted streams open until all 16 have an answer
            code = response.json()["error"]["code"] if response.status_code == 429 else None
            return response.status_code, code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(hold, range(16)))
    _wait_until_idle(server)
    assert sorted(answers, key=str) == sorted([(200, None)] * BOUND + [(429, "queue_full")] * 4, key=str), answers


@pytest.mark.parametrize("headers", [{}, {"X-Session-Id": ""}, {"X-Session-Id": "s" * 8000}])
@pytest.mark.parametrize(
    ("route", "body", "statuses"),
    [
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, {200}),
        ("completions", {"prompt": "", "max_tokens": 2}, {200, 400}),  # vLLM's answer, whatever routing did
        ("chat/completions", {"messages": [], "max_tokens": 2}, {200, 400}),
        (
            "chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
                    }
                ]
            },
            {400},
        ),
    ],
)
def test_odd_routing_input_gets_the_usual_answer(server, headers, route, body, statuses):
    """Bad or missing routing input is a clean fallback: the answer is what the request itself earns."""
    response = httpx.post(f"{server.base_url}/v1/{route}", json={"model": MODEL, **body}, headers=headers, timeout=60)
    assert response.status_code in statuses, response.text
    assert response.headers["x-slmserve-served-by"] == "engine"


def _turn(client: openai.OpenAI, question: str, previous: str | None, stream: bool) -> tuple[Response, str]:
    """One Responses API turn and the replica that answered it (X-Slmserve-Replica)."""
    options = {"model": MODEL, "input": question, "max_output_tokens": 8, "temperature": 0}
    if previous is not None:
        options["previous_response_id"] = previous
    if not stream:
        raw = client.responses.with_raw_response.create(**options)
        return raw.parse(), raw.headers["x-slmserve-replica"]
    with client.responses.with_streaming_response.create(stream=True, **options) as raw:
        replica = raw.headers["x-slmserve-replica"]
        events = list(raw.parse())
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    return events[-1].response, replica


def test_responses_conversations_by_previous_response_id_follow_their_replica(server):
    """Six three-turn conversations, streamed and not: each turn lands on the replica holding its parent,
    carries the conversation so far (its prompt grows), and the conversations use both replicas."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=120)
    decided, homes = _decisions(server), []
    for n in range(6):
        previous, replicas, prompts = None, [], []
        for question in (f"My number is {n}. Say hi.", "What is my number?", "Say it again."):
            response, replica = _turn(client, question, previous, stream=n % 2 == 1)
            assert response.id.startswith(f"resp_{replica}-") and response.usage is not None
            previous, prompts = response.id, [*prompts, response.usage.input_tokens]
            replicas.append(replica)
        assert len(set(replicas)) == 1, replicas
        assert prompts == sorted(prompts) and prompts[0] < prompts[-1], prompts
        assert client.responses.retrieve(previous).id == previous  # GET by id, placed by the platform
        homes.append(replicas[0])
    assert len(set(homes)) == 2, homes
    time.sleep(1.5)  # the routing metric ships with the ReplicaPicker's next flush
    assert _decisions(server)["response_owner"] - decided["response_owner"] >= 6 * 2 + 6


@pytest.mark.parametrize(
    ("request_", "status", "param"),
    [
        ({"previous_response_id": "resp_gone0000-" + "0" * 32}, 404, "response_id"),  # its replica is gone
        ({"previous_response_id": "resp_../../etc"}, 404, "response_id"),
        ({"previous_response_id": 7}, 400, "previous_response_id"),
        ({"store": "yes"}, 400, "store"),
        ({"background": True}, 400, "background"),
        ({"max_output_tokens": -1}, 400, None),
        ({"input": {"nested": ["x"] * 3}}, 400, None),
    ],
)
def test_bad_responses_requests_get_a_clear_error(server, request_, status, param):
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 2, **request_}
    response = httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and (param is None or error["param"] == param), error


@pytest.mark.parametrize("response_id", ["resp_gone0000-" + "0" * 32, "x" * 5000, "..%2F..%2Fmetrics", "%00"])
def test_looking_up_a_response_nobody_holds_is_a_404(server, response_id):
    for method, path in (("GET", f"/v1/responses/{response_id}"), ("POST", f"/v1/responses/{response_id}/cancel")):
        response = httpx.request(method, f"{server.base_url}{path}", timeout=60)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["type"] == "not_found_error"
