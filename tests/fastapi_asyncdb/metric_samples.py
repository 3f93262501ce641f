"""Read one sample of a database's metrics, as an exporter would see it."""

from __future__ import annotations

from fastapi_asyncdb import Database
from fastapi_asyncdb.metrics import HistogramSnapshot


def sample(database: Database, name: str, **labels: str) -> float:
    """The value of ``name`` whose labels include ``labels``; a histogram's count."""
    for metric in database.metrics.collect():
        if metric.name != name:
            continue
        for sample_labels, value in metric.samples:
            if all(sample_labels.get(key) == wanted for key, wanted in labels.items()):
                return value.count if isinstance(value, HistogramSnapshot) else value
        return 0
    raise KeyError(f"no metric {name}")


def histogram(database: Database, name: str, **labels: str) -> HistogramSnapshot:
    for metric in database.metrics.collect():
        for sample_labels, value in metric.samples:
            if metric.name == name and all(
                sample_labels.get(key) == wanted for key, wanted in labels.items()
            ):
                assert isinstance(value, HistogramSnapshot)
                return value
    raise KeyError(f"no histogram {name} with {labels}")
