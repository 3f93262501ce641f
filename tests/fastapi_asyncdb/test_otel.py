"""The OpenTelemetry path, read with the SDK's in-memory reader, agrees with the counters."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from sqlalchemy import select

from fastapi_asyncdb import Database, DatabaseUnavailableError
from fastapi_asyncdb.otel import instrument
from tests.conftest import prepare_server

from .metric_samples import sample

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
            "db.client.operation.duration",
            **write,
            **{"fastapi_asyncdb.unit.kind": "write", "fastapi_asyncdb.unit.outcome": "commit"},
        )
        assert commits.count == 4
        assert commits.explicit_bounds[:2] == (0.0005, 0.001)
        assert one(found, "db.client.operation.duration", **read).count == 2
        assert {
            attributes["db.system.name"] for attributes, _ in found["db.client.operation.duration"]
        } == {database.backend.name}
        # Four admissions; the unit refused after the timeout was never admitted.
        assert one(found, "db.client.connection.wait_time", **write).count == 4
        assert one(found, "fastapi_asyncdb.commits", **pool) == sample(database, "commits") == 4
