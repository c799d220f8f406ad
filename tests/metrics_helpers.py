"""Scraping a Prometheus endpoint over real HTTP, and reading its samples."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """The metric families of one scrape, by family name."""

    families: dict[str, Metric]

    @classmethod
    def of(cls, families: Iterable[Metric]) -> Scrape:
        return cls({f.name: f for f in families})

    def value(self, sample: str, **labels: str) -> float:
        """The value of the one sample named ``sample`` with exactly these labels
        (a histogram's ``le`` included)."""
        family = sample
        for suffix in ("_total", "_bucket", "_count", "_sum"):
            if sample.endswith(suffix) and sample.removesuffix(suffix) in self.families:
                family = sample.removesuffix(suffix)
        found = [s.value for s in self.families[family].samples
                 if s.name == sample and s.labels == labels]  # fmt: skip
        assert len(found) == 1, (sample, labels, self.families[family].samples)
        return found[0]

    def labels(self, family: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.families[family].samples}


def scrape_blocking(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=20) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return Scrape.of(text_string_to_metric_families(text))


async def scrape(url: str | None) -> Scrape:
    """GET ``url`` in a worker thread (the event loop keeps running) and parse it."""
    assert url is not None
    return await anyio.to_thread.run_sync(scrape_blocking, url)
