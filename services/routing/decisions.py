"""Routing decisions taken in this process, by (engine deployment, policy, reason), until the
process's RecordBuffer ships them to the metrics hub (the ReplicaPicker's, or the PlatformIngress's).

A module of its own because Ray pickles a deployment's request-router class by value: the class's
methods see a copy of their own module's globals, but a module they reference is the live one."""

from __future__ import annotations

from collections import Counter, defaultdict

from services.metrics.records import DecisionTimeRecord, Record, RoutingRecord

_counts: Counter[tuple[str, str, str]] = Counter()
_seconds: defaultdict[str, list[float]] = defaultdict(list)  # deployment -> each choice's time


def count(deployment: str, policy: str, reason: str) -> None:
    _counts[(deployment, policy, reason)] += 1


def timed(deployment: str, seconds: float) -> None:
    _seconds[deployment].append(seconds)


def drain() -> list[Record]:
    records: list[Record] = [RoutingRecord(*key, value) for key, value in _counts.items()]
    records += [DecisionTimeRecord(deployment, seconds) for deployment, seconds in _seconds.items()]
    _counts.clear()
    _seconds.clear()
    return records
