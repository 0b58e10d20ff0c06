"""A `/metrics` exposition as tests and load tools read it: samples by exact name and labels.

One parse per scrape (an exposition of the three-model catalog holds thousands of samples), then
any number of lookups."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Exposition:
    samples: tuple[Sample, ...]

    @classmethod
    def parse(cls, text: str) -> Exposition:
        return cls(tuple(sample for family in text_string_to_metric_families(text) for sample in family.samples))

    @classmethod
    def fetch(cls, metrics_url: str, api_key: str = "", timeout_s: float = 30) -> Exposition:
        """GET `metrics_url` (an instance's `/metrics` on 127.0.0.1: no proxy from the environment)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        response = httpx.get(metrics_url, headers=headers, timeout=timeout_s, trust_env=False)
        response.raise_for_status()
        return cls.parse(response.text)

    def values(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every sample called `name` (with its suffix: `_total`, `_bucket`...)
        whose labels include `labels`."""
        return [
            (sample.labels, sample.value)
            for sample in self.samples
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
        ]

    def total(self, name: str, **labels: str) -> float:
        """The sum of those samples (0 when there are none): a counter over replicas, say."""
        return sum(value for _, value in self.values(name, **labels))

    def by(self, label: str, name: str, **labels: str) -> dict[str, float]:
        """Those samples keyed by one of their labels (`model_name`, `state`...)."""
        return {sample_labels[label]: value for sample_labels, value in self.values(name, **labels)}
