"""Overload: ten times the pool's connections of clients, each asking for a slow query.

Pass (docs/benchmark.md): every answer is a 2xx or a 503 carrying Retry-After, none takes
longer than the acquire timeout + 0.5 s (the query time and a grace), and PostgreSQL
never sees more connections from the server than its pool allows. A contender that
serves ``/metrics`` (the fast way) is scraped before and after the load, and so is the
OpenTelemetry in-memory reader it keeps beside (``BENCH_OTEL_METRICS``): in each, the 503s,
gate timeouts, units admitted and ended, statements, connections in use and the pool's
capacity must be what its clients' answers say (``FIGURES``).

Run: .venv/bin/python -m bench.overload            (fastapi-asyncdb's fast way, judged)
     .venv/bin/python -m bench.overload --contender default   (its default way)
     .venv/bin/python -m bench.overload --contender recipe    (for comparison)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from bench.apps.otel import OTEL_METRICS_PATH
from bench.config import BENCH_DB, COUNT_APP_CONNECTIONS_SQL
from bench.contenders import ALL_CONTENDERS, LIBRARY_CONTENDERS, Contender, contender
from bench.pg import DatabaseWatch, connect
from bench.rawhttp import HttpClientError, RawHttpConnection
from bench.report import RESULTS_DIR
from bench.schema import prepare
from bench.server import Server, ServerFailedError, cpu_seconds

SAMPLE_INTERVAL_S: Final = 0.05
CLIENT_ERROR: Final = 0  # status recorded when no HTTP answer came at all


@dataclass
class Answer:
    status: int
    seconds: float
    retry_after: str | None
    error: str | None = None  # why no HTTP answer came


@dataclass
class OverloadReport:
    contender: str
    concurrency: int
    pool_capacity: int
    acquire_timeout_s: float
    query_seconds: float
    latency_limit_s: float
    answers: int
    statuses: dict[int, int]
    client_errors: dict[str, int]
    share_503: float
    every_503_has_retry_after: bool
    p50_2xx_s: float | None
    p99_2xx_s: float | None
    p50_503_s: float | None
    p99_503_s: float | None
    fastest_503_s: float | None
    slowest_s: float
    over_limit: dict[int, int]  # status -> answers slower than latency_limit_s
    max_connections_seen: int
    failures: list[str] = field(default_factory=list)
    # Context for the latencies: the client shares the machine's two cores.
    worst_client_lag_s: float = 0.0
    server_cpu_s: float = 0.0
    # The server's own count, from a /metrics scrape after the load (None: no route).
    metrics_503s_by_cause: dict[str, float] | None = None
    # Each exporter's figures over the load (levels: after it), beside the clients'.
    exporter_figures: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


def _pool_env(name: str, size: int, overflow: int, timeout: float) -> dict[str, str]:
    if name in LIBRARY_CONTENDERS:
        return {
            "DB_POOL_SIZE": str(size), "DB_MAX_OVERFLOW": str(overflow),
            "DB_READ_POOL_SIZE": str(size), "DB_READ_MAX_OVERFLOW": str(overflow),
            "DB_POOL_TIMEOUT": str(timeout),
        }  # fmt: skip
    if name == "recipe":
        return {"POOL": str(size), "POOL_OVERFLOW": str(overflow), "POOL_TIMEOUT": str(timeout)}
    return {"POOL": str(size + overflow)}  # asyncpg: a fixed pool, no acquire timeout


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def _client(
    entrant: Contender, path: str, deadline: float, timeout_s: float, answers: list[Answer]
) -> None:
    """One simulated user on its own keep-alive connection, asking again at once."""
    async with RawHttpConnection("127.0.0.1", entrant.port) as connection:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                async with asyncio.timeout(timeout_s):
                    status, headers = await connection.get(path)
            except (HttpClientError, TimeoutError) as error:
                await connection.close()
                elapsed = time.monotonic() - started
                answers.append(Answer(CLIENT_ERROR, elapsed, None, str(error) or "timeout"))
                continue
            answers.append(Answer(status, time.monotonic() - started, headers.get("retry-after")))


async def _sample_connections(stop: asyncio.Event, application_name: str) -> int:
    highest = 0
    conn: asyncpg.Connection | None = None
    while not stop.is_set():
        try:
            if conn is None or conn.is_closed():
                conn = await connect()
            count = await conn.fetchval(COUNT_APP_CONNECTIONS_SQL, BENCH_DB, application_name)
            highest = max(highest, count)
        except Exception:
            # PostgreSQL restarted under us (another session's fault test); the run is
            # flagged by the DatabaseWatch. Keep sampling on a new connection.
            if conn is not None:
                conn.terminate()
            conn = None
        await asyncio.sleep(SAMPLE_INTERVAL_S)
    if conn is not None:
        await conn.close()
    return highest


async def _worst_client_lag(stop: asyncio.Event, tick_s: float = 0.01) -> float:
    """How late the load generator's own event loop woke up: its latencies include this."""
    worst = 0.0
    while not stop.is_set():
        began = time.monotonic()
        await asyncio.sleep(tick_s)
        worst = max(worst, time.monotonic() - began - tick_s)
    return worst


async def load(
    entrant: Contender, concurrency: int, seconds: float, duration: float, client_timeout: float
) -> tuple[list[Answer], int, float]:
    """Returns the answers, the most server connections seen and the client's worst lag."""
    answers: list[Answer] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_connections(stop, entrant.application_name))
    lag = asyncio.create_task(_worst_client_lag(stop))
    path = f"/slow?seconds={seconds}"
    deadline = time.monotonic() + duration
    # Bounded: each client stops starting requests at the deadline, and each request is
    # bounded by the client timeout.
    await asyncio.gather(
        *(_client(entrant, path, deadline, client_timeout, answers) for _ in range(concurrency))
    )
    stop.set()
    return answers, await sampler, await lag


def scrape_prometheus(entrant: Contender) -> list[tuple[str, dict[str, str], float]] | None:
    """Every sample of the server's /metrics; None if it serves none."""
    try:
        with urllib.request.urlopen(f"{entrant.base_url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None  # a contender without the route
        raise
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def read_otel(entrant: Contender) -> list[dict[str, Any]] | None:
    """The points of the server's OpenTelemetry in-memory reader; None if it has none."""
    try:
        url = f"{entrant.base_url}{OTEL_METRICS_PATH}"
        with urllib.request.urlopen(url, timeout=5) as response:
            points: list[dict[str, Any]] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None  # a contender without the reader
        raise
    return points


# Each figure the overload checks, in both exporters, for the read role: how to find it
# in a Prometheus scrape (sample name, labels) and in OpenTelemetry's points (instrument
# name, attributes, field). Every one has a value the clients' answers predict.
_READ = {"role": "read"}
_OTEL_READ = {"fastapi_asyncdb.role": "read"}
FIGURES: Final[dict[str, tuple[str, dict[str, str], str, dict[str, str], str]]] = {
    "503 answers": (
        "fastapi_asyncdb_unavailable_responses_total", {},
        "fastapi_asyncdb.unavailable_responses", {}, "value",
    ),
    "gate timeouts": (
        "fastapi_asyncdb_gate_timeouts_total", _READ,
        "db.client.connection.timeouts", _OTEL_READ, "value",
    ),
    "units admitted": (
        "fastapi_asyncdb_gate_wait_seconds_count", _READ,
        "db.client.connection.wait_time", _OTEL_READ, "count",
    ),
    "units ended": (
        "fastapi_asyncdb_unit_duration_seconds_count", _READ,
        "fastapi_asyncdb.unit.duration", _OTEL_READ, "count",
    ),
    "statements": (
        "fastapi_asyncdb_statement_duration_seconds_count", _READ,
        "db.client.operation.duration", _OTEL_READ, "count",
    ),
    "connections in use": (
        "fastapi_asyncdb_connections_in_use", _READ,
        "db.client.connection.count", {**_OTEL_READ, "db.client.connection.state": "used"},
        "value",
    ),
    "connections max": (
        "fastapi_asyncdb_connections_max", _READ,
        "db.client.connection.max", _OTEL_READ, "value",
    ),
}  # fmt: skip
# Figures read as they stand after the load; the others are counted over the load.
LEVELS: Final = ("connections in use", "connections max")


def _summed(
    rows: Iterable[tuple[str, Mapping[str, Any], float]], name: str, wanted: Mapping[str, str]
) -> float | None:
    """The sum of the rows of ``name`` whose labels include ``wanted``; None if none."""
    values = [
        value for row, labels, value in rows if row == name and wanted.items() <= labels.items()
    ]
    return sum(values) if values else None


def _present(figures: dict[str, float | None]) -> dict[str, float]:
    return {figure: value for figure, value in figures.items() if value is not None}


def prometheus_figures(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, float]:
    """Each figure, summed over its matching samples; absent when none matches."""
    return _present(
        {figure: _summed(samples, name, labels) for figure, (name, labels, *_) in FIGURES.items()}
    )


def otel_figures(points: list[dict[str, Any]]) -> dict[str, float]:
    """Each figure, summed over its matching points; absent when none matches."""
    return _present(
        {
            figure: _summed(
                ((p["name"], p["attributes"], p[field]) for p in points if field in p),
                name,
                attributes,
            )
            for figure, (*_, name, attributes, field) in FIGURES.items()
        }
    )


def expected_figures(answers: list[Answer], capacity: int) -> dict[str, float]:
    """What the clients saw says each figure: a 2xx was one unit of work with one
    statement; a 503 was a unit that waited the whole acquire timeout."""
    ok = sum(1 for answer in answers if 200 <= answer.status < 300)
    unavailable = sum(1 for answer in answers if answer.status == 503)
    return {
        "503 answers": unavailable,
        "gate timeouts": unavailable,
        "units admitted": ok,
        "units ended": ok,
        "statements": ok,
        "connections in use": 0,
        "connections max": capacity,
    }


def over_the_load(figure: str, before: dict[str, float], after: dict[str, float]) -> float:
    """A level as it stands after the load; a count as it moved over it."""
    return after[figure] if figure in LEVELS else after[figure] - before.get(figure, 0.0)


def compare_exporters(
    expected: dict[str, float],
    exporters: dict[str, tuple[dict[str, float], dict[str, float]]],
) -> list[str]:
    """Each exporter's figures (before, after the load) against what clients saw."""
    failures = []
    for exporter, (before, after) in exporters.items():
        for figure, wanted in expected.items():
            if figure not in after:
                # A counter with labels appears with its first count: none of a
                # cause that never happened is right; a missing figure otherwise is not.
                if wanted == 0 and figure not in LEVELS:
                    continue
                failures.append(f"{exporter} has no {figure} at all")
                continue
            got = over_the_load(figure, before, after)
            if got != wanted:
                failures.append(f"{exporter} says {figure} = {got:g}, the clients' say {wanted:g}")
    return failures


def judge(
    name: str, answers: list[Answer], highest: int, args: argparse.Namespace
) -> OverloadReport:
    capacity = args.pool_size + args.max_overflow
    limit = args.pool_timeout + args.seconds + args.grace
    statuses = Counter(answer.status for answer in answers)
    unavailable = [a for a in answers if a.status == 503]
    ok = [a.seconds for a in answers if 200 <= a.status < 300]
    waited = [a.seconds for a in unavailable]
    slowest = max((a.seconds for a in answers), default=0.0)
    failures = []
    other = {s: n for s, n in statuses.items() if not (200 <= s < 300 or s == 503)}
    if other:
        failures.append(f"answers neither 2xx nor 503: {other} (0 = no answer)")
    if any(a.retry_after is None for a in unavailable):
        failures.append("a 503 without Retry-After")
    if slowest > limit:
        failures.append(f"slowest answer {slowest:.3f} s > {limit:.3f} s")
    if highest > capacity:
        failures.append(f"{highest} server connections seen > {capacity} configured")
    if not answers:
        failures.append("no answers at all")
    return OverloadReport(
        contender=name, concurrency=args.concurrency or 10 * capacity, pool_capacity=capacity,
        acquire_timeout_s=args.pool_timeout, query_seconds=args.seconds, latency_limit_s=limit,
        answers=len(answers), statuses=dict(sorted(statuses.items())),
        client_errors=dict(Counter(a.error for a in answers if a.error is not None)),
        share_503=len(unavailable) / len(answers) if answers else 0.0,
        every_503_has_retry_after=all(a.retry_after is not None for a in unavailable),
        p50_2xx_s=statistics.median(ok) if ok else None, p99_2xx_s=_p99(ok),
        p50_503_s=statistics.median(waited) if waited else None, p99_503_s=_p99(waited),
        fastest_503_s=min(waited, default=None),
        slowest_s=slowest, max_connections_seen=highest, failures=failures,
        over_limit=dict(Counter(a.status for a in answers if a.seconds > limit)),
    )  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--contender", choices=ALL_CONTENDERS, default="fast")
    parser.add_argument("--pool-size", type=int, default=5)
    parser.add_argument("--max-overflow", type=int, default=5)
    parser.add_argument("--pool-timeout", type=float, default=2.0, help="acquire timeout, s")
    # 0.25 + 0.25: every answer within the acquire timeout + 0.5 s.
    parser.add_argument("--seconds", type=float, default=0.25, help="pg_sleep per request")
    parser.add_argument(
        "--grace",
        type=float,
        default=0.25,
        help="seconds allowed past acquire timeout + query time (a 2xx that waited almost "
        "the whole timeout ends a few ms past the two)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=0, help="default: 10 x pool capacity")
    return parser.parse_args(argv)


def _read_exporters(entrant: Contender) -> dict[str, Any]:
    """The server's figures in each exporter it serves, read now."""
    read: dict[str, Any] = {}
    samples = scrape_prometheus(entrant)
    if samples is not None:
        read["prometheus_samples"] = samples
        read["prometheus"] = prometheus_figures(samples)
    points = read_otel(entrant)
    if points is not None:
        read["opentelemetry"] = otel_figures(points)
    return read


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    capacity = args.pool_size + args.max_overflow
    concurrency = args.concurrency or 10 * capacity
    asyncio.run(prepare())
    entrant = contender(
        args.contender,
        args.pool_size,
        {
            **_pool_env(args.contender, args.pool_size, args.max_overflow, args.pool_timeout),
            "BENCH_OTEL_METRICS": "1",
        },
    )
    print(
        f"overload {entrant.name}: {concurrency} clients, "
        f"pool {args.pool_size}+{args.max_overflow}, acquire timeout {args.pool_timeout} s, "
        f"pg_sleep({args.seconds}), {args.duration} s",
        flush=True,
    )
    # The client waits well past the limit so that a too-slow answer is measured, not cut.
    client_timeout = args.pool_timeout + args.seconds + 10.0
    try:
        with DatabaseWatch() as watch, Server(entrant) as server:
            exporters_before = _read_exporters(entrant)
            cpu_before = cpu_seconds(server.pid)
            answers, highest, client_lag = asyncio.run(
                load(entrant, concurrency, args.seconds, args.duration, client_timeout)
            )
            server_cpu = cpu_seconds(server.pid) - cpu_before
            exporters_after = _read_exporters(entrant)
    except ServerFailedError as error:
        print(f"FAILED: {error}", flush=True)
        return 1
    report = judge(entrant.name, answers, highest, args)
    report.worst_client_lag_s = client_lag
    report.server_cpu_s = server_cpu
    scraped = exporters_after.get("prometheus_samples")
    if scraped is not None:
        report.metrics_503s_by_cause = {
            labels["cause"]: value
            for name, labels, value in scraped
            if name == "fastapi_asyncdb_unavailable_responses_total"
        }
    expected = expected_figures(answers, capacity)
    compared: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for exporter in ("prometheus", "opentelemetry"):
        if (exporter in exporters_before) != (exporter in exporters_after):
            report.failures.append(f"{exporter} was served only before or only after the load")
        elif exporter in exporters_after:
            compared[exporter] = (exporters_before[exporter], exporters_after[exporter])
    report.exporter_figures = {"clients": expected} | {
        exporter: {
            figure: over_the_load(figure, before, after) for figure in expected if figure in after
        }
        for exporter, (before, after) in compared.items()
    }
    report.failures.extend(compare_exporters(expected, compared))
    if entrant.name == "fast" and set(compared) != {"prometheus", "opentelemetry"}:
        report.failures.append(f"the fast way must serve both exporters, it served {set(compared)}")
    if not compared:
        print(f"{entrant.name} serves no metrics: its figures are not checked", flush=True)
    if watch.disturbance is not None:
        # Someone else's fault test hit PostgreSQL: the numbers say nothing about overload.
        report.failures.append(f"{watch.disturbance} during the run: run it again")
    payload: dict[str, Any] = {**asdict(report), "passed": report.passed}
    print(json.dumps(payload, indent=2), flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"overload-{entrant.name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(
        ("PASS" if report.passed else "FAIL: " + "; ".join(report.failures)) + f" (wrote {path})",
        flush=True,
    )
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
