"""Replica choice for an engine deployment: prefix affinity, session affinity, least loaded, with a
load guard. A Ray Serve request router (`ray.serve.request_router.RequestRouter`), so it drives both
the direct-mode ReplicaPicker's pick and the routed-mode PlatformIngress's handle calls.

- Load is what each engine replica reports (`record_routing_stats`: requests it holds, KV-cache
  usage, refreshed about once a second) plus what this router sent it that the report does not hold. Serve's
  own queue-length cache cannot be used: in direct mode responses bypass this process.
- prefix-affinity: the prompt (chat messages as role and text, or the completion prompt) is cut
  into blocks of `block_chars` characters with chained hashes; a replica's index holds the block
  hashes of prompts it was sent recently (LRU, at most `index_blocks` per replica). The replica
  with the longest run of leading matching blocks wins, unless the load guard trips. Where no
  prefix matches, a session header picks the replica as in `session`, else the least loaded.
- session: rendezvous hashing of the session id over the replicas, unguarded, so a conversation
  stays on one replica; only the sessions of a replica that went away move, and a replica that
  joins takes over about 1/N of them.
- least-loaded: the lowest load; ties broken at random.
- LoRA adapters (a model with `lora:`): a request for an adapter prefers the replicas that hold it
  (in their last report's engine LoRA cache, or sent it since), least loaded first, within the
  load guard, before any session or least-loaded fallback; prefix blocks are hashed per adapter,
  as the engine's prefix cache keys them.
- Responses API follow-ups (`previous_response_id`) and lookups by response id go to the replica
  whose id the response id carries (services/routing/response_ids.py), unguarded: no other
  replica holds that response. A replica that is gone leaves them to the rules below.
- The load guard: the preferred replica is skipped when its KV cache is above `guard_kv_usage`
  (for the least loaded replica below it, if any), or when it holds `guard_imbalance` more
  requests than the least loaded other replica (for that one).

No call leaves this process on the routing path: the index and the loads are local state.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from services.core.timing import ADAPTER_LOAD_S, IN_TRANSIT_S, SENT_WINDOW_S
from services.routing import arrivals, decisions
from services.routing.response_ids import owner_of, referenced_response
from services.routing.session import bounded

# The engine deployment's methods the router calls for itself (adapter lists, schemas, info): they pick
# the least loaded replica but are neither booked as load nor counted as routing decisions.
CONTROL_METHODS = frozenset({"adapter_names", "info", "request_schemas", "num_unfinished_requests"})


@dataclass
class RoutingKnobs:
    policy: str = "prefix-affinity"
    block_chars: int = 256
    index_blocks: int = 4096
    guard_imbalance: int = 8
    guard_kv_usage: float = 0.9
    base_names: tuple[str, ...] = ()  # set where adapter affinity applies (ModelEntry.adapter_affinity):
    # any other `model` is a LoRA adapter


def _messages_text(messages: list[Any]) -> str:
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        parts.append(f"<{message.get('role')}>{content if isinstance(content, str) else ''}")
    return "".join(parts)


def prompt_text(body: dict[str, Any]) -> str:
    """What the engine will see first, as text: the chat messages (role and text parts), the prompt,
    or a Responses API request's instructions and input."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return _messages_text(messages)
    if "input" in body:
        instructions, given = body.get("instructions"), body.get("input")
        text = given if isinstance(given, str) else _messages_text(given) if isinstance(given, list) else ""
        return f"<system>{instructions}{text}" if isinstance(instructions, str) else text
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def block_hashes(text: str, block_chars: int, salt: str = "") -> list[int]:
    """Chained hashes of the complete leading blocks: block i's hash covers blocks 0..i (and the
    salt: a LoRA adapter's name, since the same text under another adapter is another KV cache)."""
    hashes, previous = [], salt.encode()
    for start in range(0, len(text) - block_chars + 1, block_chars):
        previous = hashlib.blake2b(previous + text[start : start + block_chars].encode(), digest_size=8).digest()
        hashes.append(int.from_bytes(previous, "little"))
    return hashes


def rendezvous(session_id: str, replicas: Sequence[Any]) -> Any:
    def weight(replica: Any) -> bytes:
        name = getattr(replica.replica_id, "unique_id", replica.replica_id)  # stable across router restarts
        return hashlib.blake2b(f"{session_id}|{name}".encode(), digest_size=8).digest()

    return max(replicas, key=weight)


class PrefixIndex:
    """Per replica, the block hashes of prompts sent there recently; bounded, LRU."""

    def __init__(self, blocks_per_replica: int) -> None:
        self.cap = blocks_per_replica
        self.blocks: dict[Any, OrderedDict[int, None]] = {}

    def matched(self, replica_id: Any, hashes: list[int]) -> int:
        index = self.blocks.get(replica_id)
        if not index:
            return 0
        count = 0
        for block in hashes:  # chained hashes: the first miss ends the common prefix
            if block not in index:
                break
            count += 1
        return count

    def add(self, replica_id: Any, hashes: list[int]) -> None:
        index = self.blocks.setdefault(replica_id, OrderedDict())
        for block in hashes:
            index[block] = None
            index.move_to_end(block)
        while len(index) > self.cap:
            index.popitem(last=False)

    def keep_only(self, replica_ids: set[Any]) -> None:
        for replica_id in set(self.blocks) - replica_ids:
            del self.blocks[replica_id]

    @property
    def size(self) -> int:
        return sum(len(index) for index in self.blocks.values())


def _request_body(pending: PendingRequest | None) -> dict[str, Any] | None:
    """The OpenAI body among the request's arguments: the ReplicaPicker passes it alone, the
    routed-mode PlatformIngress an `EngineCall` (services/engine/protocol.py) that holds it."""
    if pending is None:
        return None
    for argument in pending.args:
        body = getattr(argument, "body", argument)
        if isinstance(body, dict):
            return body
    return None


def _replica_named(replicas: Sequence[Replica], name: str) -> Replica | None:
    return next((r for r in replicas if getattr(r.replica_id, "unique_id", r.replica_id) == name), None)


class Replica(Protocol):
    """What the chooser reads of a replica (Ray's RunningReplica has both)."""

    @property
    def replica_id(self) -> Any: ...
    @property
    def routing_stats(self) -> dict[str, Any]: ...


class ReplicaChooser:
    """The policy itself, free of Ray: local state only, so it is tested directly."""

    def __init__(self, knobs: RoutingKnobs) -> None:
        self.knobs = knobs
        self.index = PrefixIndex(knobs.index_blocks)
        self.recent_sends: dict[Any, deque[float]] = defaultdict(deque)  # replica -> send times, SENT_WINDOW_S
        self.sent_count: dict[Any, int] = defaultdict(int)  # replica -> sends ever
        self.count_offsets: dict[Any, int] = {}  # replica -> its arrival count less this chooser's sends in it
        self.adapters_sent: dict[Any, dict[str, float]] = defaultdict(dict)  # replica -> adapter -> last send
        self.report_times: dict[Any, float] = {}

    def forget_all_but(self, alive: set[Any]) -> None:
        """Replicas that went away leave the index and the load book."""
        self.index.keep_only(alive)
        books: tuple[dict[Any, Any], ...] = (
            self.recent_sends,
            self.sent_count,
            self.count_offsets,
            self.adapters_sent,
            self.report_times,
        )
        for book in books:
            for gone in set(book) - alive:
                del book[gone]

    def load(self, replica: Replica) -> tuple[int, float]:
        """(requests held, KV-cache usage): as last reported, plus the sends the report does not hold.

        Where the replica counts this picker's requests (services/routing/arrivals.py), those are the
        sends it had not received: exact, whenever the report was made. Elsewhere (a policy outside a
        ReplicaPicker, the routed plane), sends made less than IN_TRANSIT_S before the report. Either
        way only sends of the last SENT_WINDOW_S: when reports stop arriving (a busy replica misses the
        stats call's timeout) or a send never arrives, old sends must not pile up into an imbalance
        that pushes conversations away."""
        replica_id = replica.replica_id
        stats = replica.routing_stats or {}
        reported_at = float(stats.get("at", 0.0))
        if self.report_times.get(replica_id) != reported_at:  # a fresh report lists the engine's LoRA cache
            self.report_times[replica_id] = reported_at
            adapters_at = float(stats.get("adapters_at", 0.0))  # when the engine's LoRA cache was listed
            adapters = self.adapters_sent[replica_id]
            listed = set(stats.get("adapters", ()))
            for adapter in [
                name for name, at in adapters.items() if name in listed or at <= adapters_at - ADAPTER_LOAD_S
            ]:
                del adapters[adapter]
        sends = self.recent_sends[replica_id]
        arrived = self._arrived(replica_id, stats)
        horizon = time.time() - SENT_WINDOW_S
        counted_before = reported_at - IN_TRANSIT_S if arrived is None else -math.inf
        while sends and (sends[0] < horizon or sends[0] <= counted_before):
            sends.popleft()
        if arrived is None:
            in_transit = len(sends)
        else:  # the sends before the window were made IN_TRANSIT_S before the report: they had arrived
            settled = reported_at - IN_TRANSIT_S >= horizon
            in_transit = min(len(sends), self._unarrived(replica_id, arrived, len(sends), settled))
        return int(stats.get("ongoing", 0)) + in_transit, float(stats.get("kv_usage", 0.0))

    def _arrived(self, replica_id: Any, stats: dict[str, Any]) -> int | None:
        """How many of this chooser's sends the replica says it received, or None where it does not
        count them. Its count may start before this chooser did (a policy made again in the same
        picker): what it counted beyond this chooser's sends at its first count is left out."""
        count = stats.get("arrived", {}).get(arrivals.picker) if arrivals.picker else None
        if not isinstance(count, int):
            return None
        if replica_id not in self.count_offsets:
            self.count_offsets[replica_id] = max(0, count - self.sent_count[replica_id])
        return count - self.count_offsets[replica_id]

    def _unarrived(self, replica_id: Any, arrived: int, recent: int, settled: bool) -> int:
        """Sends the replica had not received when it reported. Where the report is `settled` (made
        well after every send older than the `recent` ones), one of those that never arrived (the
        client left before HAProxy forwarded it) is forgiven, or it would count forever."""
        lost = self.sent_count[replica_id] - recent - arrived
        if settled and lost > 0:
            self.count_offsets[replica_id] -= lost
            arrived += lost
        return max(0, self.sent_count[replica_id] - arrived)

    def holds(self, replica: Replica, adapter: str) -> bool:
        """Whether the replica has the adapter in its engine's LoRA cache (last report) or was sent
        a request for it that no report has yet shown it to have dropped: the report must list the
        cache ADAPTER_LOAD_S after the send, since a request in flight has not loaded it yet."""
        self.load(replica)  # brings the book up to the latest report
        return (
            adapter in (replica.routing_stats or {}).get("adapters", ())
            or adapter in self.adapters_sent[replica.replica_id]
        )

    def adapter_of(self, body: dict[str, Any] | None) -> str | None:
        model = body.get("model") if body is not None else None
        if self.knobs.base_names and isinstance(model, str) and model not in self.knobs.base_names:
            return model
        return None

    def _least_loaded(self, replicas: Sequence[Replica]) -> Replica:
        loads = [self.load(replica)[0] for replica in replicas]
        lowest = min(loads)
        return random.choice([replica for replica, load in zip(replicas, loads, strict=True) if load == lowest])

    def _guarded(self, preferred: Replica, replicas: Sequence[Replica], reason: str) -> tuple[Replica, str]:
        held, kv_usage = self.load(preferred)
        others = [replica for replica in replicas if replica is not preferred]
        if kv_usage > self.knobs.guard_kv_usage:  # its cache is nearly full: a replica with room, if any
            roomy = [replica for replica in others if self.load(replica)[1] <= self.knobs.guard_kv_usage]
            if roomy:
                return self._least_loaded(roomy), "load_guard"
        least = self._least_loaded(others)
        if held - self.load(least)[0] >= self.knobs.guard_imbalance:
            return least, "load_guard"
        return preferred, reason

    def choose(
        self, replicas: Sequence[Replica], body: dict[str, Any] | None, session_id: str | None
    ) -> tuple[Replica, str]:
        """The replica for one request, and why (the routing-decision metric's `reason`); books the
        request on it."""
        adapter = self.adapter_of(body)
        chosen, reason = self._pick(replicas, body, session_id, adapter)
        now = time.time()
        self.recent_sends[chosen.replica_id].append(now)
        self.sent_count[chosen.replica_id] += 1
        if adapter is not None:
            self.adapters_sent[chosen.replica_id][adapter] = now
        if body is not None and self.knobs.policy == "prefix-affinity":
            self.index.add(chosen.replica_id, block_hashes(prompt_text(body), self.knobs.block_chars, adapter or ""))
        return chosen, reason

    def _pick(
        self, replicas: Sequence[Replica], body: dict[str, Any] | None, session_id: str | None, adapter: str | None
    ) -> tuple[Replica, str]:
        if len(replicas) == 1:
            return replicas[0], "single_replica"
        owner = owner_of(referenced_response(body))
        if owner is not None and (holder := _replica_named(replicas, owner)) is not None:
            return holder, "response_owner"  # unguarded: no other replica has the response
        policy = self.knobs.policy
        session_id = bounded(session_id)
        if policy == "session" and session_id:  # a pin, unguarded: every turn on one replica
            return rendezvous(session_id, replicas), "session"
        if policy == "prefix-affinity" and body is not None:
            hashes = block_hashes(prompt_text(body), self.knobs.block_chars, adapter or "")
            matched = [self.index.matched(replica.replica_id, hashes) for replica in replicas]
            best = max(matched, default=0)
            if best > 0:
                tied = [replica for replica, count in zip(replicas, matched, strict=True) if count == best]
                return self._guarded(self._least_loaded(tied), replicas, "prefix_hit")
        if adapter is not None:
            holders = [replica for replica in replicas if self.holds(replica, adapter)]
            if 0 < len(holders) < len(replicas):  # held everywhere: nothing to prefer
                return self._guarded(self._least_loaded(holders), replicas, "adapter_hit")
        if policy == "prefix-affinity" and body is not None:
            if session_id:  # nothing cached yet: the session's replica, so its later turns meet there
                return self._guarded(rendezvous(session_id, replicas), replicas, "session")
        return self._least_loaded(replicas), "least_loaded" if policy == "least-loaded" else "fallback"


class AffinityPolicy(RequestRouter):  # type: ignore[misc]  # Ray reads as untyped
    """Ray Serve's request-router interface over `ReplicaChooser`; configured per engine deployment
    from the catalog's `routing:` block (services/app.py)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self.chooser = ReplicaChooser(RoutingKnobs(**{**kwargs, "base_names": tuple(kwargs.get("base_names", ()))}))

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.chooser.forget_all_but({replica.replica_id for replica in replicas})

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        method = getattr(pending_request.metadata, "call_method", "") if pending_request else ""
        if method in CONTROL_METHODS:  # not a request: no booking, no decision counted
            return [sorted(candidate_replicas, key=lambda replica: self.chooser.load(replica)[0])]
        session_id = getattr(pending_request.metadata, "session_id", None) if pending_request else None
        chosen, reason = self.chooser.choose(candidate_replicas, _request_body(pending_request), session_id or None)
        decisions.count(self._deployment_id.name, self.chooser.knobs.policy, reason)
        rest = [replica for replica in candidate_replicas if replica is not chosen]
        return [[chosen], rest] if rest else [[chosen]]


def routing_stats(
    ongoing: int, kv_usage: float, adapters: list[str] | None = None, adapters_at: float = 0.0
) -> dict[str, Any]:
    """What an engine replica reports for `ReplicaChooser` (its `record_routing_stats`): requests it
    holds and KV-cache usage now, the LoRA adapters its engine's cache held at `adapters_at`."""
    return {
        "ongoing": ongoing,
        "kv_usage": kv_usage,
        "adapters": adapters or [],
        "adapters_at": adapters_at,
        "at": time.time(),
    }
