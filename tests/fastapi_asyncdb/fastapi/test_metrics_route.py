"""``/metrics`` through ``install``: scraped, parsed, and matching the load the app served."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text

from fastapi_asyncdb import Database, ReadConnectionDep, ReadSessionDep, SessionDep, install
from fastapi_asyncdb.testing.forwarder import Forwarder
from tests.conftest import prepare_server

from ..metric_samples import sample
from .test_disconnect import leave_after, served

pytestmark = [pytest.mark.usefixtures("clean_environment")]


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'metrics.db'}"
    return prepare_server(backend, "metrics_test")


def metrics_app(database: Database, **options: object) -> FastAPI:
    app = FastAPI(lifespan=database.lifespan)
    install(app, database, **options)  # type: ignore[arg-type]

    @app.get("/write")
    async def write(session: SessionDep) -> int:
        return int((await session.execute(select(1))).scalar_one())

    @app.get("/read")
    async def read(connection: ReadConnectionDep) -> int:
        return int((await connection.execute(select(1))).scalar_one())

    @app.get("/read-fails")
    async def read_fails(connection: ReadConnectionDep) -> int:
        return int((await connection.execute(text("SELECT * FROM no_such_table"))).scalar_one())

    @app.get("/read-session-fails")
    async def read_session_fails(session: ReadSessionDep) -> int:
        return int((await session.execute(text("SELECT * FROM no_such_table"))).scalar_one())

    @app.get("/slow")
    async def slow(_connection: ReadConnectionDep) -> None:
        await asyncio.sleep(30)

    return app


def scraped(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels, through prometheus_client's parser."""
    return {
        (item.name, frozenset(item.labels.items())): item.value
        for family in text_string_to_metric_families(text)
        for item in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_a_scrape_shows_the_units_and_the_503s_the_app_served(url: str) -> None:
    registry = CollectorRegistry()
    database = Database(url=url, pool_name="shop", pool_size=1, max_overflow=0, pool_timeout=0.2)
    app = metrics_app(database, metrics=registry)
    transport = httpx.ASGITransport(app=app)
    async with database, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(3):
            assert (await client.get("/write")).status_code == 200
        for _ in range(2):
            assert (await client.get("/read")).status_code == 200
        async with database.transaction():
            for _ in range(4):
                refused = await asyncio.create_task(client.get("/write"))
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = scraped(response.text)
    pool = {"pool": "shop"}
    assert value(samples, "fastapi_asyncdb_commits_total", **pool) == 3 + 1
    assert value(samples, "fastapi_asyncdb_rollbacks_total", **pool) == 0
    assert (
        value(
            samples, "fastapi_asyncdb_unavailable_responses_total", cause="pool_exhausted", **pool
        )
        == 4
    )
    assert value(samples, "fastapi_asyncdb_gate_timeouts_total", role="write", **pool) == 4
    assert (
        value(
            samples,
            "fastapi_asyncdb_unit_duration_seconds_count",
            kind="read",
            outcome="ok",
            role="read",
            **pool,
        )
        == 2
    )
    assert value(samples, "fastapi_asyncdb_connections_max", role="write", **pool) == 1
    in_use = [count for (name, _), count in samples.items() if name.endswith("_in_use")]
    assert in_use == [0, 0]


async def test_a_failed_read_the_app_answered_is_counted_as_an_error(url: str) -> None:
    # install()'s handlers answer the error inside the app: the unit of work sees a
    # response, not an exception, yet its statement failed.
    registry = CollectorRegistry()
    database = Database(url=url, pool_name="shop")
    app = metrics_app(database, metrics=registry)
    transport = httpx.ASGITransport(app=app)
    async with database, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/read")).status_code == 200
        assert (await client.get("/read-fails")).status_code == 500
        assert (await client.get("/read-session-fails")).status_code == 500
        assert (await client.get("/read")).status_code == 200
        samples = scraped((await client.get("/metrics")).text)
    counted = {
        outcome: value(
            samples,
            "fastapi_asyncdb_unit_duration_seconds_count",
            kind="read",
            outcome=outcome,
            role="read",
            pool="shop",
        )
        for outcome in ("ok", "error")
    }
    assert counted == {"ok": 2, "error": 2}


@pytest.mark.backends("postgresql", "mysql")
async def test_503s_of_an_unreachable_database_are_counted_by_cause(url: str) -> None:
    forwarder = Forwarder.for_url(url)
    await forwarder.start()
    database = Database(url=forwarder.url_through(url), connect_timeout=2)
    app = metrics_app(database, metrics=CollectorRegistry())
    transport = httpx.ASGITransport(app=app)
    try:
        async with database, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            forwarder.refusing = True
            statuses = [(await client.get("/write")).status_code for _ in range(3)]
            forwarder.refusing = False
    finally:
        await forwarder.close()
    assert statuses == [503, 503, 503]
    assert sample(database, "unavailable_responses", cause="unreachable") == 1
    assert sample(database, "unavailable_responses", cause="breaker_open") == 2


async def test_the_default_registry_serves_at_the_path_chosen(url: str) -> None:
    database = Database(url=url, pool_name="default_registry_test")
    app = metrics_app(database, metrics=True, metrics_path="/internal/metrics")
    transport = httpx.ASGITransport(app=app)
    async with database, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/read")).status_code == 200
        response = await client.get("/internal/metrics")
        assert (await client.get("/metrics")).status_code == 404
    samples = scraped(response.text)
    assert (
        value(
            samples,
            "fastapi_asyncdb_connections_idle",
            pool="default_registry_test",
            role="read",
        )
        == 1
    )
    assert (
        REGISTRY.get_sample_value(
            "fastapi_asyncdb_commits_total", {"pool": "default_registry_test"}
        )
        == 0
    )


async def test_metrics_are_not_served_unless_asked_for(url: str) -> None:
    database = Database(url=url)
    app = metrics_app(database)
    transport = httpx.ASGITransport(app=app)
    async with database, httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/metrics")).status_code == 404
    assert "/metrics" not in app.openapi()["paths"]


@pytest.mark.backends("sqlite", "postgresql")
async def test_a_client_leaving_is_counted_as_one_cancellation(url: str) -> None:
    database = Database(url=url)
    app = metrics_app(database, disconnect_watch_after=0.1)
    async with served(app) as port:
        await leave_after(port, b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n", 0.4)
        deadline = time.monotonic() + 3
        while sample(database, "disconnect_cancellations") == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert sample(database, "disconnect_cancellations") == 1
