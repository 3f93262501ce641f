"""The metrics of a ``Database`` for OpenTelemetry, from the same counters as Prometheus'.

``instrument(db)`` (or ``instrument(db, meter_provider=...)``) reports ``db`` through
the provider's instruments, created with its first database and shared by the rest:
one series per pool name, as in Prometheus (see ``exported``). Where OpenTelemetry's
database client conventions name a metric, it is used:

- ``db.client.connection.count`` (``db.client.connection.state``: ``used``, ``idle``),
  ``db.client.connection.max``, ``db.client.connection.pending_requests`` and
  ``db.client.connection.timeouts``: observed from the pools and counters at collection;
- ``db.client.connection.wait_time`` and ``db.client.operation.duration`` (one
  statement, on either path, with ``db.namespace`` and ``server.address`` as the
  conventions ask): recorded as they happen, since OpenTelemetry has no asynchronous
  histogram, as is ``fastapi_asyncdb.unit.duration``, that of a unit of work.

The rest are ``fastapi_asyncdb.*`` instruments under the Prometheus names. Every
instrument has ``db.client.connection.pool.name`` (``DB_POOL_NAME``) and, where it
applies, ``fastapi_asyncdb.role`` (``write``, ``read``): a pool name alone would not be
unique, each database having two pools.

Needs ``fastapi-asyncdb[otel]`` and, to export, the OpenTelemetry SDK.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    Meter,
    MeterProvider,
    Observation,
)
from opentelemetry.metrics import get_meter_provider as global_meter_provider

from .database import Database
from .exported import ExportedDatabases
from .metrics import BUCKETS, DatabaseMetrics, HistogramSnapshot, Metric
from .statements import server_attributes

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


class _Instruments:
    """The instruments of one meter provider, and the databases they report.

    One set per provider: the SDK answers a second ``create_*`` of a name with the
    instrument it already has and drops the new callbacks, so instruments made per
    database would report the first database only.
    """

    def __init__(self, meter: Meter, schema: Iterable[Metric]) -> None:
        self.databases = ExportedDatabases()
        self.hooked: weakref.WeakSet[DatabaseMetrics] = weakref.WeakSet()
        by_instrument: dict[str, list[str]] = {}
        for name, (otel_name, _unit, _attributes) in _OBSERVED.items():
            by_instrument.setdefault(otel_name, []).append(name)
        for otel_name, names in by_instrument.items():
            unit = _OBSERVED[names[0]][1]
            callbacks = [self._observe(names)]
            if otel_name == "db.client.connection.timeouts":
                meter.create_observable_counter(otel_name, callbacks, unit=unit)
            else:
                meter.create_observable_up_down_counter(otel_name, callbacks, unit=unit)
        for metric in schema:
            if metric.name in _OBSERVED or metric.kind == "histogram":
                continue
            name, callbacks = f"fastapi_asyncdb.{metric.name}", [self._observe([metric.name])]
            if metric.kind == "counter":
                meter.create_observable_counter(name, callbacks, description=metric.help)
            else:
                meter.create_observable_gauge(name, callbacks, description=metric.help)
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="Time a unit of work waited for admission, once admitted.",
            explicit_bucket_boundaries_advisory=list(BUCKETS),
        )
        self.unit_duration = meter.create_histogram(
            "fastapi_asyncdb.unit.duration",
            unit="s",
            description="Duration of units of work, from admission to the connection's return.",
            explicit_bucket_boundaries_advisory=list(BUCKETS),
        )
        self.operation_duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of statements, from the driver's call to its answer.",
            explicit_bucket_boundaries_advisory=list(BUCKETS),
        )

    def _observe(self, names: Iterable[str]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        wanted = set(names)

        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            for database in self.databases.current():
                for metric in database.metrics.collect():
                    if metric.name in wanted:
                        yield from _observations(metric)

        return callback

    def hook(self, database: Database) -> None:
        """Feed the histograms from ``database``'s, once per provider."""
        metrics = database.metrics
        if metrics in self.hooked:
            return
        self.hooked.add(metrics)
        # Weakly: the recorders live on the database's own histograms.
        ref = weakref.ref(database)
        for role in metrics.roles.values():
            base = {ROLE: role.role}
            role.gate_wait.observers += (self._recorder(self.wait_time, ref, base, system=False),)
            for (kind, outcome), histogram in role.units.items():
                attributes = {
                    **base,
                    "fastapi_asyncdb.unit.kind": kind,
                    "fastapi_asyncdb.unit.outcome": outcome,
                }
                if outcome == "error":
                    attributes["error.type"] = "_OTHER"
                histogram.observers += (self._recorder(self.unit_duration, ref, attributes),)
            for (kind, outcome), histogram in role.statements.items():
                attributes = {**base, "fastapi_asyncdb.statement.kind": kind}
                if outcome == "error":
                    attributes["error.type"] = "_OTHER"
                recorder = self._recorder(self.operation_duration, ref, attributes, server=True)
                histogram.observers += (recorder,)

    def _recorder(
        self,
        histogram: Histogram,
        ref: weakref.ref[Database],
        fixed: Mapping[str, str],
        *,
        system: bool = True,
        server: bool = False,
    ) -> Callable[[float], None]:
        # The pool name and the settings are read as each duration is recorded, so that
        # configure() applies; the attributes are built again only when they change.
        built: tuple[str, object, dict[str, str | int]] | None = None

        def record(seconds: float) -> None:
            nonlocal built
            database = ref()
            if database is None or not self.databases.reports(database):
                return  # a database another one replaced under its pool name
            pool, settings = database.metrics.pool, database.settings
            if built is None or built[0] != pool or built[1] is not settings:
                attributes: dict[str, str | int] = {POOL: pool, **fixed}
                if system:
                    attributes["db.system.name"] = database.backend.name
                if server:
                    url = settings.sqlalchemy_url
                    attributes.update(server_attributes(url, database.backend.name))
                built = (pool, settings, attributes)
            histogram.record(seconds, built[2])

        return record


_providers: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()


def instrument(database: Database, meter_provider: MeterProvider | None = None) -> None:
    """Report ``database``'s metrics in ``meter_provider`` (default: global).

    Calling it again with the same provider does nothing. Every database of one
    provider shares its instruments, one series per pool name (``DB_POOL_NAME``); under
    a name already there, the database instrumented last is reported.
    """
    provider = meter_provider or global_meter_provider()
    instruments = _providers.get(provider)
    if instruments is None:
        meter = provider.get_meter("fastapi_asyncdb")
        instruments = _providers[provider] = _Instruments(meter, database.metrics.collect())
    instruments.databases.add(database)
    instruments.hook(database)


def _observations(metric: Metric) -> Iterable[Observation]:
    extra = _OBSERVED.get(metric.name, ("", "", {}))[2]
    for labels, value in metric.samples:
        assert not isinstance(value, HistogramSnapshot)
        attributes = {_LABELS.get(key, key): label for key, label in labels.items()}
        if "state" in extra:
            attributes[_STATE] = extra["state"]
        yield Observation(value, attributes)
