"""The metrics of a ``Database`` for OpenTelemetry, from the same counters as Prometheus'.

``instrument(db)`` (or ``instrument(db, meter_provider=...)``) creates the instruments.
Where OpenTelemetry's database client conventions name a metric, it is used:

- ``db.client.connection.count`` (``db.client.connection.state``: ``used``, ``idle``),
  ``db.client.connection.max``, ``db.client.connection.pending_requests`` and
  ``db.client.connection.timeouts``: observed from the pools and counters at collection;
- ``db.client.connection.wait_time`` and ``db.client.operation.duration``: recorded as
  they happen, since OpenTelemetry has no asynchronous histogram. The duration is that
  of a unit of work, not of a statement: timing statements needs SQLAlchemy's execution
  events, which turn the fast path off.

The rest are ``fastapi_asyncdb.*`` instruments under the Prometheus names. Every
instrument has ``db.client.connection.pool.name`` (``DB_POOL_NAME``) and, where it
applies, ``fastapi_asyncdb.role`` (``write``, ``read``): a pool name alone would not be
unique, each database having two pools.

Needs ``fastapi-asyncdb[otel]`` and, to export, the OpenTelemetry SDK.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
from opentelemetry.metrics import get_meter_provider as global_meter_provider

from .database import Database
from .metrics import BUCKETS, DatabaseMetrics, HistogramSnapshot, Metric

__all__ = ["instrument"]

POOL = "db.client.connection.pool.name"
ROLE = "fastapi_asyncdb.role"

# Prometheus name -> (OpenTelemetry name, unit, fixed attributes). Both in-use and
# idle feed db.client.connection.count, told apart by state as the conventions say.
_OBSERVED: Mapping[str, tuple[str, str, Mapping[str, str]]] = {
    "connections_in_use": ("db.client.connection.count", "{connection}", {"state": "used"}),
    "connections_idle": ("db.client.connection.count", "{connection}", {"state": "idle"}),
    "connections_max": ("db.client.connection.max", "{connection}", {}),
    "gate_waiters": ("db.client.connection.pending_requests", "{request}", {}),
    "gate_timeouts": ("db.client.connection.timeouts", "{timeout}", {}),
}
_STATE = "db.client.connection.state"
_LABELS = {"pool": POOL, "role": ROLE, "cause": "fastapi_asyncdb.cause"}
# The providers each database's metrics are already in: a second instrument() with the
# same provider would record every duration twice.
_instrumented: weakref.WeakKeyDictionary[DatabaseMetrics, list[MeterProvider]] = (
    weakref.WeakKeyDictionary()
)


def instrument(database: Database, meter_provider: MeterProvider | None = None) -> None:
    """Create the instruments of ``database``'s metrics in ``meter_provider`` (default: global).

    Calling it again with the same provider does nothing.
    """
    provider = meter_provider or global_meter_provider()
    metrics = database.metrics
    providers = _instrumented.setdefault(metrics, [])
    if any(known is provider for known in providers):
        return
    providers.append(provider)
    meter = provider.get_meter("fastapi_asyncdb")

    def observe(names: Iterable[str]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        wanted = set(names)

        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            for metric in metrics.collect():
                if metric.name in wanted:
                    yield from _observations(metric)

        return callback

    by_instrument: dict[str, list[str]] = {}
    for name, (otel_name, _unit, _attributes) in _OBSERVED.items():
        by_instrument.setdefault(otel_name, []).append(name)
    for otel_name, names in by_instrument.items():
        unit = _OBSERVED[names[0]][1]
        callbacks = [observe(names)]
        if otel_name == "db.client.connection.timeouts":
            meter.create_observable_counter(otel_name, callbacks, unit=unit)
        else:
            meter.create_observable_up_down_counter(otel_name, callbacks, unit=unit)
    for metric in metrics.collect():
        if metric.name in _OBSERVED or metric.kind == "histogram":
            continue
        name = f"fastapi_asyncdb.{metric.name}"
        if metric.kind == "counter":
            meter.create_observable_counter(name, [observe([metric.name])], description=metric.help)
        else:
            meter.create_observable_gauge(name, [observe([metric.name])], description=metric.help)

    wait_time = meter.create_histogram(
        "db.client.connection.wait_time",
        unit="s",
        description="Time a unit of work waited for admission, once admitted.",
        explicit_bucket_boundaries_advisory=list(BUCKETS),
    )
    duration = meter.create_histogram(
        "db.client.operation.duration",
        unit="s",
        description="Duration of units of work, from admission to the connection's return.",
        explicit_bucket_boundaries_advisory=list(BUCKETS),
    )
    system = database.backend.name
    for role in metrics.roles.values():
        base = {POOL: metrics.pool, ROLE: role.role}
        role.gate_wait.observers += (_recorder(wait_time, base),)
        for (kind, outcome), histogram in role.units.items():
            attributes = {
                **base,
                "db.system.name": system,
                "fastapi_asyncdb.unit.kind": kind,
                "fastapi_asyncdb.unit.outcome": outcome,
            }
            if outcome == "error":
                attributes["error.type"] = "_OTHER"
            histogram.observers += (_recorder(duration, attributes),)


def _recorder(histogram: Histogram, attributes: Mapping[str, str]) -> Callable[[float], None]:
    frozen = dict(attributes)

    def record(seconds: float) -> None:
        histogram.record(seconds, frozen)

    return record


def _observations(metric: Metric) -> Iterable[Observation]:
    extra = _OBSERVED.get(metric.name, ("", "", {}))[2]
    for labels, value in metric.samples:
        assert not isinstance(value, HistogramSnapshot)
        attributes = {_LABELS.get(key, key): label for key, label in labels.items()}
        if "state" in extra:
            attributes[_STATE] = extra["state"]
        yield Observation(value, attributes)
