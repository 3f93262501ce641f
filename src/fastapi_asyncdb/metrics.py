"""What a ``Database`` counts while it works, read whole by an exporter at scrape time.

One ``DatabaseMetrics`` per ``Database`` (``db.metrics``), one ``RoleMetrics`` per role
(``write``: the primary, ``read``: the read path). The hooks in the admission control,
the engines and the units of work bump plain integers and fixed-bucket histograms:
everything runs on the event loop's thread, so an increment needs no lock, and a
bucket is found by bisection over a short tuple. The connections in use, idle, the
capacity and the gate's waiters are not counted at all: they are read from the pools
and the gate when an exporter asks, so they cannot drift.

Durations are kept per unit of work and per statement. Statements are timed where the
slow-statement log times them (``statements``): on SQLAlchemy's path by the library's
own execution listeners, which the fast path recognises and stands in for, so timing
leaves it on.

Exporters (``prometheus``, ``otel``) read ``collect()``; nothing here imports them.
Label values are fixed words or the operator's ``DB_POOL_NAME``: never a statement,
a parameter or anything a client sent.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import Engine

from .errors import DatabaseUnavailableError, ErrorKind

if TYPE_CHECKING:
    from .role import Role

__all__ = [
    "BUCKETS",
    "DatabaseMetrics",
    "Histogram",
    "HistogramSnapshot",
    "Metric",
    "RoleMetrics",
]

# Seconds. From a cached read on a warm connection to the longest a request should
# take; the same bounds for the gate's wait, units of work and statements, so that
# they can be compared bucket by bucket.
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Unit-of-work kinds and their outcomes. "fast_path" is run_statement: one statement
# that is its own transaction, sent without BEGIN and COMMIT where the driver allows.
UNIT_OUTCOMES: dict[str, tuple[str, ...]] = {
    "read": ("ok", "error"),
    "write": ("commit", "rollback", "error"),
    "fast_path": ("ok", "error"),
}

# Statement kinds: what SQLAlchemy ran on the role's engine ("read" on the reader,
# "write" on the primary), or what the library ran on the driver itself ("fast_path":
# Prepared, run_statement), on either role.
STATEMENT_OUTCOMES = ("ok", "error")

Observer = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Cumulative counts per upper bound (the last bound is infinity), their count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


class Histogram:
    """Counts of observations per bucket of ``BUCKETS``, and their sum.

    ``observers`` are called with each observation: how an exporter that needs every
    value (OpenTelemetry's histograms have no asynchronous form) is fed.
    """

    __slots__ = ("counts", "observers", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.observers: tuple[Observer, ...] = ()

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        for observer in self.observers:
            observer(seconds)

    def observe_zero(self) -> None:
        """``observe(0.0)`` without the search: the gate admits most units at once."""
        self.counts[0] += 1
        for observer in self.observers:
            observer(0.0)

    def snapshot(self) -> HistogramSnapshot:
        cumulative: list[tuple[float, int]] = []
        total = 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            cumulative.append((bound, total))
        return HistogramSnapshot(tuple(cumulative), total, self.sum)


class RoleMetrics:
    """The counters of one role; the hooks hold it, so it outlives restarts of the engines."""

    __slots__ = (
        "breaker_trips",
        "connections_closed",
        "connections_opened",
        "gate_timeouts",
        "gate_wait",
        "ping_failures",
        "role",
        "statements",
        "units",
    )

    def __init__(self, role: str) -> None:
        self.role = role
        self.gate_wait = Histogram()
        self.gate_timeouts = 0
        self.breaker_trips = 0
        self.connections_opened = 0
        self.connections_closed = 0
        self.ping_failures = 0
        kinds = ("read",) if role == "read" else ("write", "fast_path")
        self.units = {
            (kind, outcome): Histogram() for kind in kinds for outcome in UNIT_OUTCOMES[kind]
        }
        self.statements = {
            (kind, outcome): Histogram()
            for kind in (role, "fast_path")
            for outcome in STATEMENT_OUTCOMES
        }

    def unit(self, kind: str, outcome: str, seconds: float) -> None:
        self.units[kind, outcome].observe(seconds)

    def watch(self, engine: Engine) -> None:
        """Count the connections the engine's pool opens and closes (churn)."""

        def opened(*_args: Any) -> None:
            self.connections_opened += 1

        def closed(*_args: Any) -> None:
            self.connections_closed += 1

        event.listen(engine, "connect", opened)
        # Pool events, not execution events: they leave the fast path on. A warm read
        # connection is detached from the pool before it is closed: close_detached.
        event.listen(engine, "close", closed)
        event.listen(engine, "close_detached", closed)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: ``name`` carries its unit; counters have no ``_total`` here.

    ``labels`` are the family's label names, fixed whatever the samples: a family with
    no samples yet (no 503 served, a database not started) still has them, so an
    exporter merging several databases never has to guess them from a sample.
    """

    name: str
    kind: Literal["gauge", "counter", "histogram"]
    help: str
    labels: tuple[str, ...]
    samples: Sequence[tuple[dict[str, str], float | HistogramSnapshot]]


ROLE_NAMES = {"primary": "write", "read": "read"}

# The label names of the families, in the order of each sample's labels.
_PER_POOL = ("pool",)
_PER_ROLE = ("pool", "role")
_PER_CAUSE = ("pool", "cause")


class DatabaseMetrics:
    """The counters of one ``Database``, and the gauges of its live pools.

    ``enabled`` False (``DB_METRICS=false``) gives the hooks nothing to bump: no
    counter moves, and the gauges read at scrape time still work.
    """

    def __init__(self, pool: str, *, enabled: bool = True) -> None:
        self.pool = pool
        self.enabled = enabled
        self.roles = {name: RoleMetrics(name) for name in ROLE_NAMES.values()}
        self.unavailable: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.disconnect_cancellations = 0
        self._live: tuple[Role, ...] = ()

    def __repr__(self) -> str:
        return f"DatabaseMetrics(pool={self.pool!r}, enabled={self.enabled})"

    def for_role(self, name: str) -> RoleMetrics | None:
        """What the hooks of role ``name`` bump; None when metrics are off."""
        return self.roles[ROLE_NAMES[name]] if self.enabled else None

    def attach(self, roles: Sequence[Role]) -> None:
        """The roles whose pools the gauges read, from start to stop."""
        self._live = tuple(roles)

    def served_unavailable(self, error: BaseException, kind: ErrorKind) -> None:
        """A 503 was answered; counted by why the database was unavailable."""
        if not self.enabled:
            return
        cause = str(error.cause) if isinstance(error, DatabaseUnavailableError) else str(kind)
        self.unavailable[cause] = self.unavailable.get(cause, 0) + 1

    def retried(self, kind: ErrorKind) -> None:
        if self.enabled:
            self.retries[str(kind)] = self.retries.get(str(kind), 0) + 1

    def cancelled_on_disconnect(self) -> None:
        if self.enabled:
            self.disconnect_cancellations += 1

    def collect(self) -> Iterator[Metric]:
        """Every metric family, read now; cheap enough to scrape every second.

        Safe from an exporter's own thread: every collection is copied in one step
        (``dict()``, ``tuple()`` in C, under the GIL) before it is iterated.
        """
        pool = {"pool": self.pool}
        yield from self._pool_gauges()
        per_role = [({**pool, "role": name}, role) for name, role in self.roles.items()]
        yield Metric(
            "gate_wait_seconds",
            "histogram",
            "Time a unit of work waited for admission, once admitted.",
            _PER_ROLE,
            [(labels, role.gate_wait.snapshot()) for labels, role in per_role],
        )
        yield Metric(
            "gate_timeouts",
            "counter",
            "Units of work that waited the whole acquire timeout and were refused.",
            _PER_ROLE,
            [(labels, role.gate_timeouts) for labels, role in per_role],
        )
        for name, attribute, text in _ROLE_COUNTERS:
            yield Metric(
                name,
                "counter",
                text,
                _PER_ROLE,
                [(labels, getattr(role, attribute)) for labels, role in per_role],
            )
        yield Metric(
            "unit_duration_seconds",
            "histogram",
            "Duration of units of work, from admission to the connection's return.",
            (*_PER_ROLE, "kind", "outcome"),
            [
                ({**labels, "kind": kind, "outcome": outcome}, histogram.snapshot())
                for labels, role in per_role
                for (kind, outcome), histogram in role.units.items()
            ],
        )
        yield Metric(
            "statement_duration_seconds",
            "histogram",
            "Duration of statements, from the driver's call to its answer.",
            (*_PER_ROLE, "kind", "outcome"),
            [
                ({**labels, "kind": kind, "outcome": outcome}, histogram.snapshot())
                for labels, role in per_role
                for (kind, outcome), histogram in role.statements.items()
            ],
        )
        write = self.roles["write"].units
        yield Metric(
            "commits",
            "counter",
            "Units of work committed (run_statement's included).",
            _PER_POOL,
            [(pool, _count(write, ("write", "commit"), ("fast_path", "ok")))],
        )
        yield Metric(
            "rollbacks",
            "counter",
            "Units of work rolled back, or whose commit failed.",
            _PER_POOL,
            [(pool, _count(write, ("write", "rollback"), ("write", "error")))],
        )
        yield Metric(
            "unavailable_responses",
            "counter",
            "503 answers served, by why the database was unavailable.",
            _PER_CAUSE,
            [({**pool, "cause": cause}, n) for cause, n in sorted(dict(self.unavailable).items())],
        )
        yield Metric(
            "retries",
            "counter",
            "Units of work repeated by run_transaction, by the kind of failure.",
            _PER_CAUSE,
            [({**pool, "cause": cause}, n) for cause, n in sorted(dict(self.retries).items())],
        )
        yield Metric(
            "disconnect_cancellations",
            "counter",
            "Requests cancelled because their client went away.",
            _PER_POOL,
            [(pool, self.disconnect_cancellations)],
        )

    def _pool_gauges(self) -> Iterator[Metric]:
        states = [
            ({"pool": self.pool, "role": ROLE_NAMES[role.name]}, role.status())
            for role in self._live
        ]
        for name, key, text in _POOL_GAUGES:
            yield Metric(
                name, "gauge", text, _PER_ROLE, [(labels, status[key]) for labels, status in states]
            )
        yield Metric(
            "breaker_open",
            "gauge",
            "1 while the breaker fails requests fast, else 0.",
            _PER_ROLE,
            [(labels, 0 if status["reachable"] else 1) for labels, status in states],
        )


_POOL_GAUGES = (
    ("connections_in_use", "checked_out", "Connections lent to units of work."),
    ("connections_idle", "idle", "Connections open and ready."),
    ("connections_max", "capacity", "Units of work (and connections) admitted at most at once."),
    ("connections_overflow", "overflow", "Connections open beyond the pool size."),
    ("gate_waiters", "waiting", "Units of work waiting for admission."),
)

_ROLE_COUNTERS = (
    ("breaker_trips", "breaker_trips", "Times the breaker opened."),
    ("connections_opened", "connections_opened", "Connections made to the server."),
    ("connections_closed", "connections_closed", "Connections closed: recycled, stale, lost."),
    ("pre_ping_failures", "ping_failures", "Idle connections that failed their ping."),
)


def _count(units: dict[tuple[str, str], Histogram], *keys: tuple[str, str]) -> int:
    return sum(sum(units[key].counts) for key in keys)
