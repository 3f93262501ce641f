"""Readiness tells "unreachable" from "saturated", and needs neither a pool slot nor the
writer's lock to find out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from fastapi_asyncdb import Database, install
from fastapi_asyncdb.fastapi.health import Liveness, PoolStatus, Readiness

from ..models import Note, create_tables
from ..proxy import forwarder_for

pytestmark = pytest.mark.usefixtures("clean_environment")


def build_app(database: Database) -> FastAPI:
    app = FastAPI()
    install(app, database)
    return app


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(url=database_url, pool_size=1, max_overflow=0, pool_timeout=5)
    async with database.lifespan():
        await create_tables(database)
        yield database


async def ready(database: Database) -> httpx.Response:
    transport = httpx.ASGITransport(app=build_app(database))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/health/ready")


async def test_a_saturated_pool_is_reported_and_the_instance_stays_ready(
    database: Database,
) -> None:
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with database.transaction() as session:
            await session.execute(text("SELECT 1"))
            holding.set()
            await release.wait()

    async def wait_for_a_slot() -> None:
        async with database.transaction():
            pass

    holder = asyncio.create_task(hold())
    await holding.wait()
    waiter = asyncio.create_task(wait_for_a_slot())
    await asyncio.sleep(0.05)
    try:
        started = time.monotonic()
        response = await ready(database)
        # Well within the 5 s acquire timeout: the ping needs no pool slot.
        assert time.monotonic() - started < 1.5
        assert response.status_code == 200
        report = response.json()
        assert report["status"] == "ok"
        assert report["reachable"] is True
        assert report["saturated"] is True
        assert report["pools"]["primary"]["saturated"] is True
        assert report["pools"]["primary"]["waiting"] == 1
    finally:
        release.set()
        await asyncio.gather(holder, waiter)
    assert (await ready(database)).json()["saturated"] is False


@pytest.mark.backends("sqlite")
async def test_a_long_sqlite_write_does_not_fail_readiness(database_url: str) -> None:
    database = Database(url=database_url, health_timeout=0.5, pool_timeout=5)
    async with database.lifespan():
        await create_tables(database)
        writing = asyncio.Event()
        release = asyncio.Event()

        async def long_write() -> None:
            async with database.transaction() as session:
                session.add(Note(body="slow"))
                await session.flush()  # BEGIN IMMEDIATE: the write lock is held from here
                writing.set()
                await release.wait()

        writer = asyncio.create_task(long_write())
        await writing.wait()
        try:
            response = await ready(database)
            assert response.status_code == 200
            assert response.json()["reachable"] is True
        finally:
            release.set()
            await writer


@pytest.mark.backends("postgresql", "mysql")
async def test_an_unreachable_database_fails_readiness_within_the_health_timeout(
    database_url: str,
) -> None:
    forwarder, url = forwarder_for(database_url)
    async with forwarder.running():
        database = Database(url=url, health_timeout=0.5, connect_timeout=0.5)
        async with database.lifespan():
            assert (await ready(database)).status_code == 200
            forwarder.blackhole = True
            started = time.monotonic()
            response = await ready(database)
            assert time.monotonic() - started < 2.0
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "1"
            assert response.json()["reachable"] is False
            forwarder.blackhole = False
            assert (await ready(database)).status_code == 200


async def test_readiness_uses_one_connection_of_its_own_across_checks(
    database: Database,
) -> None:
    for _ in range(5):
        assert (await ready(database)).status_code == 200
    status = database.pool_status()
    assert status["primary"]["checked_out"] == 0
    assert status["read"]["checked_out"] == 0


@pytest.mark.backends("postgresql", "mysql")
async def test_concurrent_readiness_checks_share_one_ping_and_one_timeout(
    database_url: str,
) -> None:
    forwarder, url = forwarder_for(database_url)
    async with forwarder.running():
        database = Database(url=url, health_timeout=0.5, connect_timeout=0.5)
        async with database.lifespan():
            assert (await database.check_health())["reachable"] is True
            forwarder.blackhole = True
            started = time.monotonic()
            reports = await asyncio.gather(*(database.check_health() for _ in range(8)))
            took = time.monotonic() - started
            forwarder.blackhole = False
    assert [report["reachable"] for report in reports] == [False] * 8
    # One timeout for all eight, not eight in a row.
    assert took < 1.5


@pytest.mark.backends("postgresql")
async def test_a_full_server_is_reported_reachable_and_trips_no_breaker(
    database_url: str,
) -> None:
    """The server refuses new connections (too many): it answers, so it is up."""
    async with Database(url=database_url) as admin, admin.engine.begin() as connection:
        await connection.execute(text("DROP ROLE IF EXISTS health_limited"))
        await connection.execute(text("CREATE ROLE health_limited LOGIN CONNECTION LIMIT 2"))
    limited = make_url(database_url).set(username="health_limited").render_as_string(False)
    try:
        # Over the role's limit on purpose: the startup check would refuse it.
        database = Database(
            url=limited, pool_size=1, max_overflow=1, read_pool_size=1, budget_check="off"
        )
        async with database.lifespan():
            assert (await database.check_health())["reachable"] is True  # the probe: 1
            async with database.transaction() as session:  # the pool: 2, the limit
                await session.execute(text("SELECT 1"))
                with pytest.raises(Exception, match="too many connections"):
                    async with database.read_session() as reader:
                        await reader.execute(text("SELECT 1"))
            report = await database.check_health()
            assert report["reachable"] is True
            assert database.pool_status()["read"]["reachable"] is True  # no breaker opened
            async with database.transaction() as session:  # the pool's connection still works
                await session.execute(text("SELECT 1"))
    finally:
        async with Database(url=database_url) as admin, admin.engine.begin() as connection:
            await connection.execute(text("DROP ROLE health_limited"))


@pytest.mark.backends("sqlite")
async def test_health_answers_are_documented_in_openapi_by_their_models(
    database: Database,
) -> None:
    transport = httpx.ASGITransport(app=build_app(database))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        spec = (await client.get("/openapi.json")).json()
        answers = {
            path: (await client.get(path)).json()
            for path in ("/health/live", "/health/ready", "/health/pools")
        }

    def schema_of(path: str, status: str) -> object:
        content = spec["paths"][path]["get"]["responses"][status]["content"]
        return content["application/json"]["schema"]

    assert schema_of("/health/live", "200") == {"$ref": "#/components/schemas/Liveness"}
    assert schema_of("/health/ready", "200") == {"$ref": "#/components/schemas/Readiness"}
    assert schema_of("/health/ready", "503") == {"$ref": "#/components/schemas/Readiness"}
    pools = schema_of("/health/pools", "200")
    assert isinstance(pools, dict)
    assert pools["additionalProperties"] == {"$ref": "#/components/schemas/PoolStatus"}
    documented = spec["components"]["schemas"]
    for model in (Liveness, Readiness, PoolStatus):
        assert set(documented[model.__name__]["properties"]) == set(model.model_fields)
    # What the routes answer is what the documents say.
    Liveness.model_validate(answers["/health/live"])
    Readiness.model_validate(answers["/health/ready"])
    assert answers["/health/pools"]
    for status in answers["/health/pools"].values():
        PoolStatus.model_validate(status)
