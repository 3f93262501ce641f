"""The metrics of ``Database`` objects for Prometheus: a collector read at each scrape.

``register(db)`` adds ``db`` to the default registry, ``register(db, registry)`` to
yours; every database of one registry shares one collector, so each metric family
appears once, with a ``pool`` label per database (``DB_POOL_NAME``). Nothing is
counted here: a scrape reads ``db.metrics`` and the pools as they are.

Needs ``fastapi-asyncdb[prometheus]``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from .database import Database
from .exported import ExportedDatabases
from .metrics import HistogramSnapshot
from .metrics import Metric as DatabaseMetric

__all__ = ["PREFIX", "DatabaseCollector", "register"]

PREFIX = "fastapi_asyncdb_"

_collectors: weakref.WeakKeyDictionary[CollectorRegistry, DatabaseCollector] = (
    weakref.WeakKeyDictionary()
)


def register(database: Database, registry: CollectorRegistry | None = None) -> DatabaseCollector:
    """Expose ``database``'s metrics in ``registry`` (default: prometheus_client's own).

    Registering the same database again does nothing. Under a pool name already there,
    the database registered last is reported: an app built again in the same process
    reports its new database. Two databases of one app need different
    ``DB_POOL_NAME`` values; two running under one name are reported as one, with a
    warning.
    """
    target = REGISTRY if registry is None else registry
    collector = _collectors.get(target)
    if collector is None:
        collector = _collectors[target] = DatabaseCollector()
        target.register(collector)
    collector.add(database)
    return collector


class DatabaseCollector(Collector):
    """Every database registered in one registry, as ``fastapi_asyncdb_*`` families."""

    def __init__(self) -> None:
        self._databases = ExportedDatabases()

    def add(self, database: Database) -> None:
        self._databases.add(database)

    def describe(self) -> Iterable[Metric]:
        # Without describe(), registering would run a whole collect() to learn the
        # names; they are ours alone (the prefix), so there is nothing to check.
        return ()

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for database in self._databases.current():
            for metric in database.metrics.collect():
                family = families.get(metric.name)
                if family is None:
                    family = families[metric.name] = _family(metric)
                _add_samples(family, metric)
        yield from families.values()


def _family(metric: DatabaseMetric) -> Metric:
    # The label names come from the family's schema, never from its first sample: the
    # first database may have none (no 503 yet, not started) while the next has some.
    name, labels = PREFIX + metric.name, list(metric.labels)
    if metric.kind == "counter":
        return CounterMetricFamily(name, metric.help, labels=labels)
    if metric.kind == "histogram":
        return HistogramMetricFamily(name, metric.help, labels=labels)
    return GaugeMetricFamily(name, metric.help, labels=labels)


def _add_samples(family: Metric, metric: DatabaseMetric) -> None:
    for labels, value in metric.samples:
        values = [labels[name] for name in metric.labels]
        if isinstance(value, HistogramSnapshot):
            assert isinstance(family, HistogramMetricFamily)
            buckets = [(_bound(bound), count) for bound, count in value.buckets]
            family.add_metric(values, buckets, value.sum)
        else:
            assert isinstance(family, CounterMetricFamily | GaugeMetricFamily)
            family.add_metric(values, value)


def _bound(bound: float) -> str:
    # Prometheus' own spelling of bucket bounds: "0.005", "1.0", "+Inf".
    return "+Inf" if math.isinf(bound) else repr(bound)
