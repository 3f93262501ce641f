"""The OpenTelemetry path, read with the SDK's in-memory reader, agrees with the counters."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import DBAPIError

from fastapi_asyncdb import Database, DatabaseUnavailableError, Prepared
from fastapi_asyncdb.otel import instrument
from tests.conftest import prepare_server

from .metric_samples import sample
from .models import Note, create_tables

POOL = "db.client.connection.pool.name"
NOTE_BY_ID = Prepared(select(Note.body).where(Note.id == bindparam("id")))

pytestmark = [pytest.mark.usefixtures("clean_environment")]


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'metrics.db'}"
    return prepare_server(backend, "metrics_test")


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Data points by instrument name: (attributes, value or histogram point)."""
    found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    shown = point if isinstance(point, HistogramDataPoint) else point.value  # type: ignore[union-attr]
                    attributes = dict(point.attributes or {})
                    found.setdefault(metric.name, []).append((attributes, shown))
    return found


def one(found: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **attributes: str) -> Any:
    matches = [
        shown
        for point_attributes, shown in found.get(name, [])
        if all(point_attributes.get(key) == wanted for key, wanted in attributes.items())
    ]
    assert len(matches) == 1, (name, attributes, found.get(name))
    return matches[0]


async def test_in_memory_reader_sees_the_semantic_convention_metrics(url: str) -> None:
    reader = InMemoryMetricReader()
    database = Database(url=url, pool_name="otel", pool_size=1, max_overflow=0, pool_timeout=0.2)
    provider = MeterProvider(metric_readers=[reader])
    instrument(database, provider)
    instrument(database, provider)  # again: nothing is recorded twice
    pool = {"db.client.connection.pool.name": "otel"}
    async with database:
        for _ in range(3):
            async with database.transaction() as session:
                await session.execute(select(1))
        for _ in range(2):
            async with database.read_connection() as connection:
                await connection.execute(select(1))

        async def refused() -> None:
            async with database.transaction():
                pass

        async with database.transaction():
            found = points(reader)
            used = {**pool, "fastapi_asyncdb.role": "write", "db.client.connection.state": "used"}
            assert one(found, "db.client.connection.count", **used) == 1
            with pytest.raises(DatabaseUnavailableError):
                await asyncio.create_task(refused())
        found = points(reader)
        write = {**pool, "fastapi_asyncdb.role": "write"}
        read = {**pool, "fastapi_asyncdb.role": "read"}
        assert (
            one(
                found,
                "db.client.connection.count",
                **write,
                **{"db.client.connection.state": "used"},
            )
            == 0
        )
        assert (
            one(
                found,
                "db.client.connection.count",
                **read,
                **{"db.client.connection.state": "idle"},
            )
            == 1
        )
        assert one(found, "db.client.connection.max", **write) == 1
        assert one(found, "db.client.connection.pending_requests", **write) == 0
        assert one(found, "db.client.connection.timeouts", **write) == 1
        commits = one(
            found,
            "fastapi_asyncdb.unit.duration",
            **write,
            **{"fastapi_asyncdb.unit.kind": "write", "fastapi_asyncdb.unit.outcome": "commit"},
        )
        assert commits.count == 4
        assert commits.explicit_bounds[:2] == (0.0005, 0.001)
        assert one(found, "fastapi_asyncdb.unit.duration", **read).count == 2
        assert {
            attributes["db.system.name"] for attributes, _ in found["fastapi_asyncdb.unit.duration"]
        } == {database.backend.name}
        statement = {"fastapi_asyncdb.statement.kind": "read", **read}
        assert one(found, "db.client.operation.duration", **statement).count == 2
        for role in ("write", "read"):
            kinds = {
                attributes["fastapi_asyncdb.statement.kind"]
                for attributes, _ in found["db.client.operation.duration"]
                if attributes["fastapi_asyncdb.role"] == role
            }
            assert kinds == {role}  # SQLite's BEGIN IMMEDIATE is a write statement too
            counted = sum(
                point.count
                for attributes, point in found["db.client.operation.duration"]
                if attributes["fastapi_asyncdb.role"] == role
            )
            assert counted == sample(
                database, "statement_duration_seconds", role=role, kind=role, outcome="ok"
            )
        # Four admissions; the unit refused after the timeout was never admitted.
        assert one(found, "db.client.connection.wait_time", **write).count == 4
        assert one(found, "fastapi_asyncdb.commits", **pool) == sample(database, "commits") == 4


async def read_once(database: Database) -> None:
    async with database.read_connection() as connection:
        await connection.execute(select(1))


def pools_of(found: dict[str, list[tuple[dict[str, Any], Any]]], name: str) -> set[Any]:
    return {attributes.get(POOL) for attributes, _ in found.get(name, [])}


async def test_two_databases_in_one_provider_are_both_reported(url: str) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    a = Database(url=url, pool_name="a")
    b = Database(url=url, pool_name="b")
    instrument(a, provider)
    instrument(b, provider)
    async with a, b:
        await read_once(a)
        for _ in range(2):
            await read_once(b)
        found = points(reader)
    for name in (
        "db.client.connection.count",
        "db.client.connection.max",
        "db.client.connection.pending_requests",
        "fastapi_asyncdb.connections_opened",
        "fastapi_asyncdb.commits",
    ):
        assert pools_of(found, name) == {"a", "b"}, name
    read = {"fastapi_asyncdb.role": "read"}
    assert one(found, "fastapi_asyncdb.unit.duration", **{POOL: "a"}, **read).count == 1
    assert one(found, "fastapi_asyncdb.unit.duration", **{POOL: "b"}, **read).count == 2
    for pool, database in (("a", a), ("b", b)):
        opened = one(found, "fastapi_asyncdb.connections_opened", **{POOL: pool}, **read)
        assert opened == sample(database, "connections_opened", role="read")


async def test_a_database_rebuilt_under_its_pool_name_replaces_the_old_one(url: str) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    old = Database(url=url, pool_name="app", read_pool_size=2)
    instrument(old, provider)
    async with old:
        await read_once(old)
    new = Database(url=url, pool_name="app", read_pool_size=5)  # the app built again
    instrument(new, provider)
    async with new:
        found = points(reader)
        read = {POOL: "app", "fastapi_asyncdb.role": "read"}
        assert one(found, "db.client.connection.max", **read) == sample(
            new, "connections_max", role="read"
        )
        assert one(found, "fastapi_asyncdb.connections_opened", **read) == 0
        # The old database, still referenced here, is no longer read nor recorded.
        async with old:
            await read_once(old)
            await read_once(new)
            found = points(reader)
        assert one(found, "fastapi_asyncdb.connections_opened", **read) == sample(
            new, "connections_opened", role="read"
        )
    durations = one(found, "fastapi_asyncdb.unit.duration", **read)
    assert durations.count == 2  # the old database's first read, then the new one's


async def test_a_pool_renamed_after_instrument_is_recorded_under_its_new_name(url: str) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    database = Database(url=url, pool_name="before")
    instrument(database, provider)
    database.configure(pool_name="after")
    async with database:
        await read_once(database)
        found = points(reader)
    assert pools_of(found, "fastapi_asyncdb.unit.duration") == {"after"}
    assert pools_of(found, "db.client.operation.duration") == {"after"}
    assert pools_of(found, "db.client.connection.wait_time") == {"after"}
    assert pools_of(found, "db.client.connection.max") == {"after"}


async def test_statement_durations_follow_the_database_conventions(url: str) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    database = Database(url=url, pool_name="conventions")
    instrument(database, provider)
    async with database:
        await create_tables(database)
        async with database.read_connection() as connection:
            for _ in range(3):
                await NOTE_BY_ID.one_or_none(connection, {"id": 1})
            with pytest.raises(DBAPIError):
                await connection.execute(text("SELECT missing FROM notes"))
        found = points(reader)
    url_of = database.settings.sqlalchemy_url
    server = (
        {}
        if url_of.host is None
        else {
            "server.address": url_of.host,
            **({} if url_of.port in (None, 5432, 3306) else {"server.port": url_of.port}),
        }
    )
    fast = database.backend.name == "postgresql"
    by_kind = {
        (attributes["fastapi_asyncdb.statement.kind"], "error.type" in attributes): (
            attributes,
            point.count,
        )
        for attributes, point in found["db.client.operation.duration"]
        if attributes["fastapi_asyncdb.role"] == "read"
    }
    common = {
        POOL: "conventions",
        "fastapi_asyncdb.role": "read",
        "db.system.name": database.backend.name,
        "db.namespace": url_of.database,
        **server,
    }
    assert by_kind == {
        ("read", False): ({**common, "fastapi_asyncdb.statement.kind": "read"}, 1 if fast else 3),
        **(
            {("fast_path", False): ({**common, "fastapi_asyncdb.statement.kind": "fast_path"}, 2)}
            if fast
            else {}
        ),
        ("read", True): (
            {**common, "fastapi_asyncdb.statement.kind": "read", "error.type": "_OTHER"},
            1,
        ),
    }
