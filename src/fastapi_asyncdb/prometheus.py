"""The metrics of ``Database`` objects for Prometheus: a collector read at each scrape.

``register(db)`` adds ``db`` to the default registry, ``register(db, registry)`` to
yours; every database of one registry shares one collector, so each metric family
appears once, with a ``pool`` label per database (``DB_POOL_NAME``). Nothing is
counted here: a scrape reads ``db.metrics`` and the pools as they are.

Needs ``fastapi-asyncdb[prometheus]``.
"""

from __future__ import annotations

import logging
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
from .metrics import HistogramSnapshot
from .metrics import Metric as DatabaseMetric

__all__ = ["PREFIX", "DatabaseCollector", "register"]

PREFIX = "fastapi_asyncdb_"

logger = logging.getLogger(__name__)

_collectors: weakref.WeakKeyDictionary[CollectorRegistry, DatabaseCollector] = (
    weakref.WeakKeyDictionary()
)


def register(database: Database, registry: CollectorRegistry | None = None) -> DatabaseCollector:
    """Expose ``database``'s metrics in ``registry`` (default: prometheus_client's own).

    Registering the same database again does nothing. Another database registered
    under a pool name already there replaces the first: an app built again in the same
    process reports its new database. Two databases of one app need different
    ``DB_POOL_NAME`` values.
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
        self._databases: list[Database] = []

    def add(self, database: Database) -> None:
        pool = database.metrics.pool
        for known in self._databases:
            if known is database:
                return
            if known.metrics.pool == pool:
                # An app built again in the same process (a test suite, a reload) brings
                # a new Database under the same name: it takes the old one's place.
                logger.info("metrics of pool %r now come from another Database", pool)
                self._databases.remove(known)
                break
        self._databases.append(database)

    def describe(self) -> Iterable[Metric]:
        # Without describe(), registering would run a whole collect() to learn the
        # names; they are ours alone (the prefix), so there is nothing to check.
        return ()

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for database in self._databases:
            for metric in database.metrics.collect():
                family = families.get(metric.name)
                if family is None:
                    family = families[metric.name] = _family(metric)
                _add_samples(family, metric)
        yield from families.values()


def _family(metric: DatabaseMetric) -> Metric:
    name = PREFIX + metric.name
    labels = list(metric.samples[0][0]) if metric.samples else []
    if metric.kind == "counter":
        return CounterMetricFamily(name, metric.help, labels=labels)
    if metric.kind == "histogram":
        return HistogramMetricFamily(name, metric.help, labels=labels)
    return GaugeMetricFamily(name, metric.help, labels=labels)


def _add_samples(family: Metric, metric: DatabaseMetric) -> None:
    for labels, value in metric.samples:
        values = list(labels.values())
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
