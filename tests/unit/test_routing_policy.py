"""The replica-choice policy on its own (services/routing/policies.py); the live behaviour across real
engine replicas is in tests/live/two_replicas/test_routing.py."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from services.core.timing import ADAPTER_LOAD_S, IN_TRANSIT_S
from services.routing.policies import PrefixIndex, ReplicaChooser, RoutingKnobs, block_hashes, prompt_text
from services.routing.response_ids import new_response_id, owner_of

SYSTEM = "You are a careful assistant. " * 40  # ~1,100 characters: four 256-character blocks


@dataclass
class FakeReplica:
    replica_id: str
    routing_stats: dict = field(default_factory=dict)


def chat(system: str, *turns: str) -> dict:
    return {
        "model": "m",
        "messages": [{"role": "system", "content": system}, *({"role": "user", "content": turn} for turn in turns)],
    }


def report(replica: FakeReplica, ongoing: int, kv_usage: float = 0.0) -> None:
    replica.routing_stats = {"ongoing": ongoing, "kv_usage": kv_usage, "at": time.time()}


def chooser(**knobs) -> ReplicaChooser:
    return ReplicaChooser(RoutingKnobs(**knobs))


def test_block_hashes_are_chained_over_complete_blocks():
    a, b = block_hashes("x" * 600, 256), block_hashes("x" * 512 + "y" * 88, 256)
    assert len(a) == 2 and a == b  # the incomplete tail block is not hashed
    changed_first = block_hashes("y" + "x" * 599, 256)
    assert changed_first[0] != a[0] and changed_first[1] != a[1]  # a block's hash covers all before it


def test_prompt_text_reads_roles_and_text_parts_and_survives_junk():
    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}],
            },
            "junk",
            {"role": "assistant", "content": None},
        ]
    }
    assert prompt_text(body) == "<user>hi<assistant>"
    assert prompt_text({"prompt": "once upon"}) == "once upon"
    assert prompt_text({"prompt": [1, 2, 3]}) == "" and prompt_text({}) == ""


def test_later_turns_follow_the_first_and_new_conversations_spread():
    replicas = [FakeReplica("a"), FakeReplica("b")]
    policy = chooser()
    first, reason = policy.choose(replicas, chat(SYSTEM, "turn 1"), None)
    assert reason == "fallback"  # nothing cached anywhere yet: the least loaded
    for turn in range(2, 6):
        chosen, reason = policy.choose(replicas, chat(SYSTEM, *(f"turn {n}" for n in range(1, turn + 1))), None)
        assert (chosen, reason) == (first, "prefix_hit")
    # A new conversation goes where fewer requests were sent since the last report.
    other, reason = policy.choose(replicas, chat("Another system prompt entirely. " * 40, "hello"), None)
    assert other is not first and reason == "fallback"


def test_sends_a_replica_never_reported_on_stop_counting_after_the_window(monkeypatch):
    """A replica too busy to answer the stats call sends no report: what was sent to it counts as its
    load for SENT_WINDOW_S only, so a conversation is not pushed away by sends long finished (seen in
    CI: conversations left their replica on a loaded 2-core machine)."""
    clock = [1000.0]
    monkeypatch.setattr("services.routing.policies.time.time", lambda: clock[0])
    a, b = FakeReplica("a"), FakeReplica("b")
    policy = chooser(guard_imbalance=8)
    home, _ = policy.choose([a, b], chat(SYSTEM, "1"), None)
    for turn in range(2, 16):  # a turn a second to the home replica, no report from anyone
        clock[0] += 1.0
        assert policy.choose([a, b], chat(SYSTEM, *map(str, range(1, turn + 1))), None) == (home, "prefix_hit")
    assert policy.load(home)[0] == 6  # the sends of the last five seconds (t-5 .. t), not all fifteen
    clock[0] += policy_window() + 1
    assert policy.load(home)[0] == 0


def policy_window() -> float:
    from services.core.timing import SENT_WINDOW_S

    return SENT_WINDOW_S


def test_the_load_guard_sends_a_preferred_but_busy_replica_s_work_elsewhere():
    a, b = FakeReplica("a"), FakeReplica("b")
    policy = chooser(guard_imbalance=8, guard_kv_usage=0.9)
    report(a, 0)
    report(b, 0)
    assert policy.choose([a, b], chat(SYSTEM, "1"), None)[0].replica_id in ("a", "b")
    home = a if policy.index.matched("a", block_hashes(prompt_text(chat(SYSTEM)), 256)) else b
    away = b if home is a else a
    report(home, 20)  # the replica holding the prefix reports a long queue
    assert policy.choose([a, b], chat(SYSTEM, "2"), None) == (away, "load_guard")
    # Now both hold the prefix: the less loaded of them, within the guard.
    report(home, 2)
    report(away, 5)
    assert policy.choose([a, b], chat(SYSTEM, "3"), None) == (home, "prefix_hit")
    report(home, 0, kv_usage=0.97)
    report(away, 9)
    assert policy.choose([a, b], chat("Another prompt. " * 40, "x"), None)[1] == "fallback"
    policy.index.keep_only({home.replica_id})  # only `home` holds the prefix; its cache is nearly full
    assert policy.choose([a, b], chat(SYSTEM, "4"), None) == (away, "load_guard")


def test_what_was_sent_since_the_last_report_counts_as_load(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("services.routing.policies.time.time", lambda: clock[0])
    a, b = FakeReplica("a"), FakeReplica("b")
    report(a, 0)
    report(b, 0)
    policy = chooser(policy="least-loaded")
    picks = [policy.choose([a, b], None, None)[0].replica_id for _ in range(10)]
    assert sorted(picks.count(name) for name in "ab") == [5, 5]  # alternates although reports are stale
    report(a, 0)  # a report made at once may not show them yet: they still count
    assert policy.load(a) == (5, 0.0)
    clock[0] += IN_TRANSIT_S
    report(a, 0)  # a report made once they had arrived replaces what was booked before it
    assert policy.load(a) == (0, 0.0) and policy.load(b) == (5, 0.0)


def test_a_session_picks_the_first_replica_and_the_prefix_keeps_it_there():
    replicas = [FakeReplica(name) for name in "abcd"]
    policy = chooser()
    first, reason = policy.choose(replicas, chat(SYSTEM, "1"), "conversation-7")
    assert reason == "session"
    assert policy.choose(replicas, chat(SYSTEM, "1", "2"), "conversation-7") == (first, "prefix_hit")


def test_sessions_stay_put_and_only_a_gone_replica_s_sessions_move():
    replicas = [FakeReplica(name) for name in "abcd"]
    policy = chooser(policy="session")
    homes = {f"s{n}": policy.choose(replicas, None, f"s{n}")[0].replica_id for n in range(40)}
    assert len(set(homes.values())) == 4
    for _ in range(3):
        assert all(policy.choose(replicas, None, s)[0].replica_id == home for s, home in homes.items())
    survivors = [replica for replica in replicas if replica.replica_id != "d"]
    policy.forget_all_but({replica.replica_id for replica in survivors})
    moved = {s for s, home in homes.items() if policy.choose(survivors, None, s)[0].replica_id != home}
    assert moved == {s for s, home in homes.items() if home == "d"}


@pytest.mark.parametrize("session_id", [None, "", "x" * 100_000])
@pytest.mark.parametrize(
    "body", [None, {}, {"messages": []}, {"messages": "nope"}, {"prompt": ""}, chat("", "image only"), {"prompt": 7}]
)
def test_odd_input_falls_back_cleanly(body, session_id):
    replicas = [FakeReplica("a"), FakeReplica("b")]
    for policy in ("prefix-affinity", "session", "least-loaded"):
        chosen, reason = chooser(policy=policy).choose(replicas, body, session_id or None)
        assert chosen in replicas and reason in ("fallback", "session", "least_loaded")


def test_the_index_is_bounded_and_forgets_replicas_that_left():
    index = PrefixIndex(blocks_per_replica=64)
    for n in range(1000):
        index.add("a", block_hashes(f"conversation {n} " * 100, 256))
        index.add("b", block_hashes(f"other {n} " * 100, 256))
    assert index.size == 128
    index.keep_only({"b"})
    assert index.size == 64 and index.matched("a", block_hashes("conversation 999 " * 100, 256)) == 0
    assert index.matched("b", block_hashes("other 999 " * 100, 256)) > 0  # the most recent stays


def adapter_chooser(**knobs) -> ReplicaChooser:
    return chooser(base_names=("m", "m-alias"), **knobs)


def ask(model: str, text: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def test_an_adapter_s_requests_go_where_it_is_held_within_the_load_guard():
    a, b = FakeReplica("a"), FakeReplica("b")
    policy = adapter_chooser(guard_imbalance=8)  # the sends below (at most 6) never trip it
    report(a, 0)
    b.routing_stats = {
        "ongoing": 0,
        "kv_usage": 0.0,
        "adapters": ["sql"],
        "adapters_at": time.time(),
        "at": time.time(),
    }
    assert policy.choose([a, b], ask("sql", "short"), None) == (b, "adapter_hit")  # b's engine holds it
    # An adapter nobody holds goes to the least loaded, which then counts as holding it.
    first, reason = policy.choose([a, b], ask("poet", "short"), None)
    assert first is a and reason == "fallback"  # b has one request booked
    assert all(policy.choose([a, b], ask("poet", f"q{n}"), None) == (a, "adapter_hit") for n in range(3))
    report(a, 0)  # a report listed before those requests does not undo them ...
    a.routing_stats["adapters_at"] = time.time() - 60
    assert policy.choose([a, b], ask("poet", "again"), None) == (a, "adapter_hit")
    # ... nor one listed while those requests may still be on their way to a's engine ...
    a.routing_stats = {**a.routing_stats, "adapters": [], "adapters_at": time.time(), "at": time.time() + 0.001}
    assert policy.choose([a, b], ask("poet", "in flight"), None) == (a, "adapter_hit")
    # ... one listed after the engine has had the time to load it, does
    later = time.time() + ADAPTER_LOAD_S + 1
    a.routing_stats = {**a.routing_stats, "adapters": [], "adapters_at": later, "at": later}
    assert policy.choose([a, b], ask("poet", "after"), None)[1] == "fallback"
    report(b, 20)  # the holder is overloaded: the guard sends the adapter's work elsewhere
    b.routing_stats["adapters"] = ["sql"]
    assert policy.choose([a, b], ask("sql", "busy"), None) == (a, "load_guard")


def test_base_model_requests_and_models_without_adapters_ignore_adapter_affinity():
    a, b = FakeReplica("a"), FakeReplica("b")
    for replica in (a, b):
        report(replica, 0)
    b.routing_stats["adapters"] = ["sql"]
    policy = adapter_chooser()
    assert {policy.choose([a, b], ask(name, f"q{n}"), None)[1] for n, name in enumerate(["m", "m-alias"] * 3)} == {
        "fallback"
    }
    assert chooser().choose([a, b], ask("sql", "q"), None)[1] == "fallback"  # no base_names: no adapters


def test_prefix_blocks_of_one_text_under_two_adapters_are_two_cache_entries():
    assert block_hashes(SYSTEM, 256, "sql") != block_hashes(SYSTEM, 256, "poet") != block_hashes(SYSTEM, 256)
    a, b = FakeReplica("a"), FakeReplica("b")
    policy = adapter_chooser()
    home, _ = policy.choose([a, b], {**chat(SYSTEM, "1"), "model": "sql"}, None)
    assert policy.choose([a, b], {**chat(SYSTEM, "2"), "model": "sql"}, None) == (home, "prefix_hit")
    assert policy.choose([a, b], {**chat(SYSTEM, "2"), "model": "m"}, None)[1] != "prefix_hit"


def test_a_report_counts_the_sends_before_it_and_not_those_after(monkeypatch):
    """A report made between two sends replaces only the first (CI saw the flake where a report that
    predated in-flight sends wiped them, so a busy replica looked idle)."""
    clock = [1000.0]
    monkeypatch.setattr("services.routing.policies.time.time", lambda: clock[0])
    a, b = FakeReplica("a"), FakeReplica("b")
    policy = chooser(policy="least-loaded")
    report(b, 50)
    policy.choose([a, b], None, None)  # to a, at t=1000
    clock[0] += 1.0
    policy.choose([a, b], None, None)  # to a, at t=1001
    clock[0] += IN_TRANSIT_S
    policy.choose([a, b], None, None)  # to a, at t=1002
    a.routing_stats = {"ongoing": 1, "kv_usage": 0.0, "at": 1001.5}  # made between them, arriving now
    # the first send is in the report; the second, made less than IN_TRANSIT_S before it, may not
    # have reached the engine yet; the third came after it
    assert policy.load(a)[0] == 3


def test_a_follow_up_goes_to_the_replica_its_response_id_names_whatever_the_load():
    a, b = FakeReplica("abcd1234"), FakeReplica("wxyz9876")
    report(a, 0)
    report(b, 50, kv_usage=0.99)  # b is far busier, yet only b holds the response
    parent = new_response_id("wxyz9876")
    assert owner_of(parent) == "wxyz9876"
    policy = chooser(guard_imbalance=4)
    follow_up = {"model": "m", "input": "and then?", "previous_response_id": parent}
    assert policy.choose([a, b], follow_up, "session-on-a") == (b, "response_owner")
    assert policy.choose([a, b], {"response_id": parent}, None) == (b, "response_owner")  # a lookup by id
    # A replica that is gone, or an id the platform did not make: the usual rules (its 404 is vLLM's).
    for previous in (new_response_id("gone0000"), "resp_0123", "resp_wxyz9876-not-hex", 7):
        assert policy.choose([a, b], {**follow_up, "previous_response_id": previous}, None)[1] != "response_owner"


def test_a_responses_request_s_instructions_and_input_are_its_prompt_for_prefix_affinity():
    long = "You answer in French. " * 20
    as_text = prompt_text({"model": "m", "instructions": long, "input": "hello"})
    as_items = prompt_text({"model": "m", "instructions": long, "input": [{"role": "user", "content": "hello"}]})
    assert as_text.startswith(f"<system>{long}") and as_items.startswith(f"<system>{long}")
    assert block_hashes(as_text, 256)[:2] == block_hashes(as_items, 256)[:2]  # one cached system prompt


def test_a_report_drops_the_sends_it_counts_arrived_and_keeps_those_on_their_way(monkeypatch):
    """A ReplicaPicker names itself on each request; the replica counts what reached it per picker
    (services/routing/arrivals.py), so a report counts each send once whatever the timing."""
    monkeypatch.setattr("services.routing.arrivals.picker", "p1")
    a, b = FakeReplica("a"), FakeReplica("b")
    policy = chooser(policy="least-loaded")
    report(b, 50)
    a.routing_stats = {"ongoing": 0, "kv_usage": 0.0, "at": time.time(), "arrived": {"p1": 7}}
    assert policy.load(a) == (0, 0.0)  # the first count only says where this replica's starts
    for _ in range(5):
        assert policy.choose([a, b], None, None)[0] is a
    # three reached the engine (and are in `ongoing`), two are on their way; another picker's don't count
    a.routing_stats = {"ongoing": 3, "kv_usage": 0.0, "at": time.time(), "arrived": {"p1": 10, "p2": 40}}
    assert policy.load(a)[0] == 5
    a.routing_stats = {"ongoing": 1, "kv_usage": 0.0, "at": time.time(), "arrived": {"p1": 12, "p2": 41}}
    assert policy.load(a)[0] == 1  # all arrived; four have ended


def test_the_engine_replica_counts_requests_by_the_picker_named_in_them():
    import asyncio

    from services.routing.arrivals import HEADER, MAX_PICKERS, ArrivalCounter, Arrivals

    seen: list[str] = []

    async def app(scope, receive, send) -> None:
        seen.append(scope["type"])

    arrivals = Arrivals()
    counts = arrivals.counts
    counter = ArrivalCounter(app, arrivals)

    async def requests() -> None:
        for name in ["p1", "p1", "p2"]:
            await counter({"type": "http", "headers": [(HEADER.encode(), name.encode())]}, None, None)
        await counter({"type": "http", "headers": [(b"x-other", b"p1")]}, None, None)  # placed by no picker
        await counter({"type": "lifespan"}, None, None)
        for index in range(MAX_PICKERS):
            await counter({"type": "http", "headers": [(HEADER.encode(), f"n{index}".encode())]}, None, None)

    asyncio.run(requests())
    assert seen.count("http") == 3 + 1 + MAX_PICKERS and "lifespan" in seen  # every request passes on
    assert len(counts) == MAX_PICKERS and "p1" not in counts and "p2" not in counts  # the oldest went first
    assert counts[f"n{MAX_PICKERS - 1}"] == 1 and counts["n0"] == 1
    assert arrivals.holding == 0  # each was answered


def test_a_placed_request_is_held_from_its_arrival_until_its_answer_ends():
    """It leaves the picker's sends when it arrives, so the replica's load must count it from then,
    before its engine has it (the edge's checks, rendering) and until its stream ends or fails."""
    import asyncio

    from services.routing.arrivals import HEADER, ArrivalCounter, Arrivals

    arrivals = Arrivals()

    async def scenario() -> list[int]:
        release = asyncio.Event()

        async def app(scope, receive, send) -> None:
            await release.wait()
            if scope["path"] == "/fails":
                raise RuntimeError("the stream broke")

        counter = ArrivalCounter(app, arrivals)
        placed = [(HEADER.encode(), b"p1")]
        tasks = [
            asyncio.create_task(counter({"type": "http", "path": path, "headers": placed}, None, None))
            for path in ("/ok", "/fails")
        ]
        unplaced = asyncio.create_task(counter({"type": "http", "path": "/ok", "headers": []}, None, None))
        await asyncio.sleep(0)
        during = arrivals.holding
        release.set()
        await asyncio.gather(*tasks, unplaced, return_exceptions=True)
        return [during, arrivals.holding]

    assert asyncio.run(scenario()) == [2, 0]  # the unplaced one is not the picker's to count


def test_sends_a_replica_counted_before_its_first_report_of_them_are_not_held_twice(monkeypatch):
    """tests/live/two_replicas: two sends reached a replica before the first report that counted them;
    they stayed booked as on their way for the whole window, so its idle peer looked loaded and the
    load guard never sent a burst's streams there."""
    monkeypatch.setattr("services.routing.arrivals.picker", "p1")
    a, b = FakeReplica("a"), FakeReplica("b")
    policy = chooser(policy="least-loaded")
    report(b, 50)
    for _ in range(2):
        assert policy.choose([a, b], None, None)[0] is a
    a.routing_stats = {"ongoing": 0, "kv_usage": 0.0, "at": time.time(), "arrived": {"p1": 2}}  # both done
    assert policy.load(a)[0] == 0
    policy.choose([a, b], None, None)
    assert policy.load(a)[0] == 1  # a later send is on its way until a count shows it


def test_a_send_that_never_arrived_stops_counting_once_the_window_has_passed(monkeypatch):
    monkeypatch.setattr("services.routing.arrivals.picker", "p1")
    clock = [1000.0]
    monkeypatch.setattr("services.routing.policies.time.time", lambda: clock[0])
    a, b = FakeReplica("a"), FakeReplica("b")
    policy = chooser(policy="least-loaded")
    report(b, 50)
    a.routing_stats = {"ongoing": 0, "kv_usage": 0.0, "at": clock[0], "arrived": {"p1": 0}}
    for _ in range(3):  # one of them is lost before it reaches the replica
        policy.choose([a, b], None, None)
    clock[0] += 10
    a.routing_stats = {"ongoing": 2, "kv_usage": 0.0, "at": clock[0], "arrived": {"p1": 2}}
    assert policy.load(a)[0] == 2
    policy.choose([a, b], None, None)
    assert policy.load(a)[0] == 3  # the new send counts; the lost one does not
    clock[0] += 1
    a.routing_stats = {"ongoing": 3, "kv_usage": 0.0, "at": clock[0], "arrived": {"p1": 3}}
    assert policy.load(a)[0] == 3
