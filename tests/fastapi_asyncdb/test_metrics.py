"""Known load on real databases, and each counter checked against it exactly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from fastapi_asyncdb import (
    ConfigurationError,
    Database,
    DatabaseSettings,
    DatabaseUnavailableError,
    Retry,
    UnavailableCause,
)
from fastapi_asyncdb.metrics import BUCKETS, Histogram
from fastapi_asyncdb.testing.forwarder import Forwarder
from tests.conftest import prepare_server

from .metric_samples import histogram, sample
from .models import Note, create_tables
from .test_retry import deadlock_pair

pytestmark = [pytest.mark.usefixtures("clean_environment")]


class BlockFailedError(Exception):
    """The block's own failure: the unit rolls back."""


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'metrics.db'}"
    return prepare_server(backend, "metrics_test")


@pytest.fixture
async def forwarder(url: str) -> AsyncIterator[Forwarder]:
    forwarder = Forwarder.for_url(url)
    await forwarder.start()
    try:
        yield forwarder
    finally:
        await forwarder.close()


def counts(database: Database) -> dict[str, float]:
    """The counters a unit of work moves, to compare before and after."""
    return {
        "commits": sample(database, "commits"),
        "rollbacks": sample(database, "rollbacks"),
        "read_ok": sample(database, "unit_duration_seconds", kind="read", outcome="ok"),
        "read_error": sample(database, "unit_duration_seconds", kind="read", outcome="error"),
        "write_commit": sample(database, "unit_duration_seconds", kind="write", outcome="commit"),
        "write_rollback": sample(
            database, "unit_duration_seconds", kind="write", outcome="rollback"
        ),
        "write_error": sample(database, "unit_duration_seconds", kind="write", outcome="error"),
        "fast_path_ok": sample(database, "unit_duration_seconds", kind="fast_path", outcome="ok"),
    }


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before if after[key] != before[key]}


async def test_units_of_work_are_counted_by_kind_and_outcome(url: str) -> None:
    async with Database(url=url, pool_name="ledger") as database:
        await create_tables(database)
        before = counts(database)
        for number in range(5):
            async with database.transaction() as session:
                session.add(Note(id=number + 1, body=f"note {number}"))
        for number in range(3):
            with pytest.raises(BlockFailedError):
                async with database.transaction() as session:
                    session.add(Note(id=100 + number, body=f"undone {number}"))
                    raise BlockFailedError
        # A commit that fails (a duplicate body): rolled back, counted as an error.
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            async with database.transaction() as session:
                session.add(Note(id=200, body="note 0"))
        for number in range(4):
            await database.run_statement(
                insert(Note).values(id=300 + number, body=f"fast {number}")
            )
        for _ in range(6):
            async with database.read_connection() as connection:
                await connection.execute(select(1))
        for _ in range(2):
            with pytest.raises(BlockFailedError):
                async with database.read_session():
                    raise BlockFailedError
        assert moved(before, counts(database)) == {
            "commits": 5 + 4,
            "rollbacks": 3 + 1,
            "write_commit": 5,
            "write_rollback": 3,
            "write_error": 1,
            "fast_path_ok": 4,
            "read_ok": 6,
            "read_error": 2,
        }
        assert {
            labels["pool"] for metric in database.metrics.collect() for labels, _ in metric.samples
        } == {"ledger"}


async def test_gate_waits_timeouts_and_waiters_are_counted(url: str) -> None:
    async with Database(url=url, pool_size=1, max_overflow=0, pool_timeout=0.4) as database:
        waited = histogram(database, "gate_wait_seconds", role="write").count

        async def one_unit() -> None:
            async with database.transaction() as session:
                await session.execute(select(1))

        async with database.transaction():
            waiter = asyncio.create_task(one_unit())
            await asyncio.sleep(0.1)
            assert sample(database, "gate_waiters", role="write") == 1
            assert sample(database, "connections_in_use", role="write") == 1
        await waiter
        assert sample(database, "gate_waiters", role="write") == 0
        wait = histogram(database, "gate_wait_seconds", role="write")
        # The holder entered at once; the waiter waited about 0.1 s, in a bucket above it.
        assert wait.count == waited + 2
        assert 0.1 <= wait.sum < 0.4
        assert dict(wait.buckets)[0.05] == waited + 1

        async with database.transaction():
            for _ in range(3):
                with pytest.raises(DatabaseUnavailableError) as refused:
                    await asyncio.create_task(one_unit())
                assert refused.value.cause is UnavailableCause.POOL_EXHAUSTED
        assert sample(database, "gate_timeouts", role="write") == 3
        assert sample(database, "gate_timeouts", role="read") == 0


@pytest.mark.backends("postgresql", "mysql")  # SQLite admits one writer at a time
async def test_connections_beyond_the_pool_size_are_counted_as_overflow(url: str) -> None:
    async with Database(url=url, pool_size=1, max_overflow=2) as database:
        gauges = ("connections_in_use", "connections_overflow", "connections_max")
        release = asyncio.Event()

        async def hold(entered: asyncio.Event) -> None:
            # Each unit in a task of its own, as each request has it.
            async with database.transaction() as session:
                await session.execute(select(1))
                entered.set()
                await release.wait()

        holders = []
        for held in range(1, 4):
            entered = asyncio.Event()
            holders.append(asyncio.create_task(hold(entered)))
            await asyncio.wait_for(entered.wait(), 5)
            in_use, overflow, capacity = (sample(database, g, role="write") for g in gauges)
            assert (in_use, overflow, capacity) == (held, max(0, held - 1), 3)
        release.set()
        await asyncio.gather(*holders)
        # Back in the pool, the overflow ones closed: one idle, none beyond the size.
        assert sample(database, "connections_in_use", role="write") == 0
        assert sample(database, "connections_overflow", role="write") == 0
        assert sample(database, "connections_idle", role="write") == 1


async def test_a_closed_gate_refuses_with_the_draining_cause(url: str) -> None:
    async with Database(url=url) as database:
        database.read_engine  # noqa: B018 - started
        role = database._reader
        assert role is not None
        role.gate.close("shutting down")
        with pytest.raises(DatabaseUnavailableError) as refused:
            async with database.read_connection():
                pass
        assert refused.value.cause is UnavailableCause.DRAINING


@pytest.mark.backends("postgresql", "mysql")
async def test_breaker_trip_is_counted_once_while_it_fails_fast(
    url: str, forwarder: Forwarder
) -> None:
    async with Database(url=forwarder.url_through(url), connect_timeout=2) as database:
        forwarder.refusing = True
        with pytest.raises(DatabaseUnavailableError) as first:
            async with database.transaction():
                pass
        assert first.value.cause is UnavailableCause.UNREACHABLE
        for _ in range(3):
            with pytest.raises(DatabaseUnavailableError) as fast:
                async with database.transaction():
                    pass
            assert fast.value.cause is UnavailableCause.BREAKER_OPEN
        assert sample(database, "breaker_trips", role="write") == 1
        assert sample(database, "breaker_open", role="write") == 1
        assert sample(database, "breaker_trips", role="read") == 0
        forwarder.refusing = False
        deadline = time.monotonic() + 5
        while sample(database, "breaker_open", role="write"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with database.transaction() as session:
            await session.execute(select(1))
        assert sample(database, "breaker_trips", role="write") == 1


async def test_recycled_connections_are_counted_as_churn(url: str) -> None:
    async with Database(url=url, pool_recycle=0.2) as database:
        for _ in range(3):
            async with database.transaction() as session:
                await session.execute(select(1))
            async with database.read_connection() as connection:
                await connection.execute(select(1))
            await asyncio.sleep(0.25)
        for role in ("write", "read"):
            # Each unit after the first found its connection too old: closed, and a new one.
            assert sample(database, "connections_opened", role=role) == 3
            assert sample(database, "connections_closed", role=role) == 2
            assert sample(database, "pre_ping_failures", role=role) == 0


@pytest.mark.backends("postgresql")
async def test_a_terminated_backend_is_counted_as_a_pre_ping_failure(url: str) -> None:
    async with Database(url=url, pre_ping_after_idle=0) as database:

        async def backend_pid_of_write() -> int:
            async with database.transaction() as session:
                return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())

        async def backend_pid_of_read() -> int:
            async with database.read_connection() as connection:
                return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())

        async def terminate(pid: int) -> None:
            # From a connection of its own: the pools' are the ones to kill.
            admin = create_async_engine(url, poolclass=NullPool)
            try:
                async with admin.connect() as connection:
                    await connection.execute(
                        text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
                    )
            finally:
                await admin.dispose()

        write_pid, read_pid = await backend_pid_of_write(), await backend_pid_of_read()
        await terminate(write_pid)
        await terminate(read_pid)
        await asyncio.sleep(0.2)
        # The units succeed on new connections: the stale ones failed their ping.
        assert await backend_pid_of_write() != write_pid
        assert await backend_pid_of_read() != read_pid
        assert sample(database, "pre_ping_failures", role="write") == 1
        assert sample(database, "pre_ping_failures", role="read") == 1
        assert sample(database, "unit_duration_seconds", kind="write", outcome="error") == 0


@pytest.mark.backends("postgresql", "mysql")
async def test_each_retry_of_a_deadlock_is_counted(url: str) -> None:
    async with Database(url=url, pool_size=4) as database:
        await create_tables(database)
        async with database.transaction() as session:
            session.add_all([Note(id=1, body="a"), Note(id=2, body="b")])
        runs, results = await deadlock_pair(database, Retry(attempts=3))
        assert sorted(str(result) for result in results) == ["left", "right"]
        # Every run past the first of each unit is one retry (a retry may deadlock again).
        assert sample(database, "retries", cause="retryable") == len(runs) - 2 >= 1


@pytest.mark.backends("postgresql")
async def test_a_retried_serialization_failure_is_counted_per_retry(url: str) -> None:
    failures = 2
    async with Database(url=url) as database:

        async def work(session: AsyncSession) -> str:
            nonlocal failures
            if failures:
                failures -= 1
                await session.execute(
                    text(
                        "DO $$ BEGIN RAISE EXCEPTION 'lost' USING ERRCODE = "
                        "'serialization_failure'; END $$"
                    )
                )
            return "done"

        assert await database.run_transaction(work, retry=Retry(attempts=3)) == "done"
        assert sample(database, "retries", cause="retryable") == 2
        assert sample(database, "unit_duration_seconds", kind="write", outcome="rollback") == 2
        assert sample(database, "commits") == 1


async def test_metrics_off_counts_nothing_but_reads_the_pools(url: str) -> None:
    async with Database(url=url, metrics=False) as database:
        async with database.transaction() as session:
            await session.execute(select(1))
            assert sample(database, "connections_in_use", role="write") == 1
        async with database.read_connection() as connection:
            await connection.execute(select(1))
        assert sample(database, "commits") == 0
        assert sample(database, "unit_duration_seconds", kind="read", outcome="ok") == 0
        assert sample(database, "connections_opened", role="write") == 0
        assert sample(database, "connections_idle", role="read") == 1


def test_pool_name_and_metrics_switch_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_POOL_NAME", "orders-eu.1")
    monkeypatch.setenv("DB_METRICS", "false")
    database = Database()
    assert database.metrics.pool == "orders-eu.1"
    assert not database.metrics.enabled
    database.configure(pool_name="billing", metrics=True)
    assert (database.metrics.pool, database.metrics.enabled) == ("billing", True)


@given(st.text(max_size=70))
def test_pool_names_outside_the_label_charset_are_refused(name: str) -> None:
    valid = (
        0 < len(name) <= 63
        and (name[0].isascii() and (name[0].isalpha() or name[0] == "_"))
        and all(char.isascii() and (char.isalnum() or char in "_.:-") for char in name)
    )
    if valid:
        assert DatabaseSettings(pool_name=name).pool_name == name
    else:
        with pytest.raises((ConfigurationError, ValueError)):
            DatabaseSettings(pool_name=name)


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False)))
def test_histogram_buckets_count_every_observation_at_or_below_their_bound(
    values: list[float],
) -> None:
    observed = Histogram()
    for value in values:
        observed.observe(value)
    snapshot = observed.snapshot()
    assert snapshot.count == len(values)
    assert snapshot.sum == pytest.approx(sum(values))
    for bound, count in snapshot.buckets:
        assert count == sum(value <= bound for value in values)
    assert [bound for bound, _ in snapshot.buckets] == [*BUCKETS, float("inf")]
