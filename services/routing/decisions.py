"""Routing decisions taken in this process, by (engine deployment, policy, reason), until the
process's RecordBuffer ships them to the metrics hub (the ReplicaPicker's, or the PlatformIngress's).

A module of its own because Ray pickles a deployment's request-router class by value: the class's
methods see a copy of their own module's globals, but a module they reference is the live one."""

from __future__ import annotations

from collections import Counter

from services.metrics.records import RoutingRecord

_counts: Counter[tuple[str, str, str]] = Counter()


def count(deployment: str, policy: str, reason: str) -> None:
    _counts[(deployment, policy, reason)] += 1


def drain() -> list[RoutingRecord]:
    records = [RoutingRecord(*key, value) for key, value in _counts.items()]
    _counts.clear()
    return list(records)
