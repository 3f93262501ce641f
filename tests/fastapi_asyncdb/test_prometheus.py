"""Several databases in one registry, scraped and read back with prometheus_client's parser."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from fastapi_asyncdb import Database, DatabaseUnavailableError, ErrorKind, UnavailableCause
from fastapi_asyncdb.prometheus import PREFIX, register
from tests.conftest import prepare_server

from .metric_samples import sample

pytestmark = [pytest.mark.usefixtures("clean_environment")]

ROLE = ("pool", "role")
# The label names of each family, as docs/metrics.md lists them.
LABELS = {
    "connections_in_use": ROLE,
    "connections_idle": ROLE,
    "connections_max": ROLE,
    "connections_overflow": ROLE,
    "gate_waiters": ROLE,
    "breaker_open": ROLE,
    "gate_wait_seconds": ROLE,
    "gate_timeouts": ROLE,
    "breaker_trips": ROLE,
    "connections_opened": ROLE,
    "connections_closed": ROLE,
    "pre_ping_failures": ROLE,
    "unit_duration_seconds": (*ROLE, "kind", "outcome"),
    "statement_duration_seconds": (*ROLE, "kind", "outcome"),
    "commits": ("pool",),
    "rollbacks": ("pool",),
    "unavailable_responses": ("pool", "cause"),
    "retries": ("pool", "cause"),
    "disconnect_cancellations": ("pool",),
}

Series = tuple[str, tuple[tuple[str, str], ...]]


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'metrics.db'}"
    return prepare_server(backend, "metrics_test")


def scrape(registry: CollectorRegistry) -> list[tuple[str, Series]]:
    """Each sample as (family, series), after checking its labels against the family's."""
    found: list[tuple[str, Series]] = []
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        name = family.name.removeprefix(PREFIX)
        for one in family.samples:
            labels = {key: value for key, value in one.labels.items() if key != "le"}
            assert set(labels) == set(LABELS[name]), (one.name, one.labels)
            found.append((name, (one.name, tuple(sorted(one.labels.items())))))
    return found


def value(registry: CollectorRegistry, family: str, **labels: str) -> float:
    values = [
        sample.value
        for parsed in text_string_to_metric_families(generate_latest(registry).decode())
        if parsed.name == PREFIX + family
        for sample in parsed.samples
        if labels.items() <= sample.labels.items()
    ]
    assert len(values) == 1, (family, labels, values)
    return values[0]


def pools(found: list[tuple[str, Series]], family: str) -> set[str]:
    return {dict(labels)["pool"] for name, (_, labels) in found if name == family}


database_cases = st.lists(
    st.tuples(
        st.booleans(),  # started
        st.sets(st.sampled_from(list(UnavailableCause))),  # 503s served
        st.sets(st.sampled_from([ErrorKind.RETRYABLE, ErrorKind.TIMEOUT])),  # retries
    ),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cases=database_cases)
async def test_every_sample_has_its_family_labels_whichever_databases_have_samples(
    url: str, cases: list[tuple[bool, set[UnavailableCause], set[ErrorKind]]]
) -> None:
    registry = CollectorRegistry()
    databases = [Database(url=url, pool_name=f"db{index}") for index in range(len(cases))]
    for database in databases:
        register(database, registry)
    async with AsyncExitStack() as stack:
        for database, (started, causes, retries) in zip(databases, cases, strict=True):
            if started:
                await stack.enter_async_context(database)
            for cause in causes:
                error = DatabaseUnavailableError("refused", retry_after=1, cause=cause)
                database.metrics.served_unavailable(error, ErrorKind.UNAVAILABLE)
            for kind in retries:
                database.metrics.retried(kind)
        found = scrape(registry)
    series = [one for _, one in found]
    assert len(series) == len(set(series)), "duplicate series"
    running = {f"db{index}" for index, (run, _, _) in enumerate(cases) if run}
    assert pools(found, "connections_max") == running
    assert pools(found, "commits") == {database.metrics.pool for database in databases}
    with_503s = {f"db{index}" for index, (_, causes, _) in enumerate(cases) if causes}
    assert pools(found, "unavailable_responses") == with_503s
    served = {
        (dict(labels)["pool"], dict(labels)["cause"])
        for name, (_, labels) in found
        if name == "unavailable_responses"
    }
    expected = {(f"db{index}", str(cause)) for index, (_, c, _) in enumerate(cases) for cause in c}
    assert served == expected


async def test_a_database_registered_again_under_its_pool_name_replaces_the_stopped_one(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    old = Database(url=url, pool_name="app", read_pool_size=2)
    register(old, registry)
    async with old:
        pass
    new = Database(url=url, pool_name="app", read_pool_size=5)
    with caplog.at_level(logging.INFO, logger="fastapi_asyncdb"):
        register(new, registry)
        async with new:
            found = scrape(registry)
            scraped = value(registry, "connections_max", role="read")
            own = sample(new, "connections_max", role="read")
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    maxima = [dict(labels) for name, (_, labels) in found if name == "connections_max"]
    assert sorted(labels["role"] for labels in maxima) == ["read", "write"]  # no duplicate
    assert scraped == own > 0  # the new database's figure


async def test_two_running_databases_under_one_pool_name_warn_naming_db_pool_name(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    first, second = Database(url=url), Database(url=url)  # both DB_POOL_NAME=default
    register(first, registry)
    register(second, registry)
    with caplog.at_level(logging.WARNING, logger="fastapi_asyncdb"):
        async with first, second:
            found = scrape(registry)
            scrape(registry)  # warned once, not at every scrape
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1, warnings
    assert "DB_POOL_NAME" in warnings[0]
    series = [one for _, one in found]
    assert len(series) == len(set(series))
    assert pools(found, "connections_max") == {"default"}


async def test_a_pool_renamed_after_register_is_scraped_under_its_new_name_once(
    url: str,
) -> None:
    registry = CollectorRegistry()
    a, b, c = (Database(url=url, pool_name=name) for name in "abc")
    for database in (a, b, c):
        register(database, registry)
    b.configure(pool_name="a")  # onto a name already registered
    c.configure(pool_name="renamed")
    async with a, b, c:
        found = scrape(registry)
        b.metrics.retried(ErrorKind.RETRYABLE)
        retried = scrape(registry)
    series = [one for _, one in found]
    assert len(series) == len(set(series)), "duplicate series"
    assert pools(found, "connections_max") == {"a", "renamed"}
    # Under "a", the database registered last: b, whose retry shows.
    assert pools(retried, "retries") == {"a"}


async def test_statements_are_scraped_per_role_kind_and_outcome(url: str) -> None:
    registry = CollectorRegistry()
    database = Database(url=url, pool_name="scraped")
    register(database, registry)
    async with database:
        for _ in range(3):
            async with database.read_connection() as connection:
                await connection.execute(select(1))
        async with database.read_connection() as connection:
            with pytest.raises(DBAPIError):
                await connection.execute(text("SELECT missing FROM nowhere"))
        found = scrape(registry)
        counts = {
            (sample.labels["role"], sample.labels["kind"], sample.labels["outcome"]): sample.value
            for parsed in text_string_to_metric_families(generate_latest(registry).decode())
            for sample in parsed.samples
            if sample.name == f"{PREFIX}statement_duration_seconds_count"
        }
    assert (counts["read", "read", "ok"], counts["read", "read", "error"]) == (3, 1)
    assert counts["read", "fast_path", "ok"] == 0
    kinds = {
        (labels["role"], labels["kind"], labels["outcome"])
        for name, (sample_name, series) in found
        if name == "statement_duration_seconds" and sample_name.endswith("_count")
        for labels in [dict(series)]
    }
    assert (
        set(counts)
        == kinds
        == {
            (role, kind, outcome)
            for role in ("read", "write")
            for kind in (role, "fast_path")
            for outcome in ("ok", "error")
        }
    )
