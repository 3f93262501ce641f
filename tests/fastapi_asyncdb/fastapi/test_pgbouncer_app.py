"""A small app through a real PgBouncer, in transaction and session mode: its failures
answer 503, never hang."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from fastapi_asyncdb import Database, ReadSessionDep, SessionDep, install
from tests.servers.pgbouncer import PgBouncer

pytestmark = pytest.mark.usefixtures("clean_environment")

StartPgBouncer = Callable[..., PgBouncer]
Serve = Callable[..., contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, PgBouncer]]]
WAIT = 0.5
# Longest any one request may take: the settings' timeouts, with room.
REQUEST_BOUND = 8


def build_app(database: Database) -> FastAPI:
    app = FastAPI()
    install(app, database)

    @app.get("/read")
    async def read(session: ReadSessionDep) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    @app.post("/write")
    async def write(session: SessionDep) -> int:
        return int((await session.execute(text("SELECT 2"))).scalar_one())

    @app.post("/hold")
    async def hold(session: SessionDep) -> int:
        await session.execute(text("SELECT 1"))
        await asyncio.sleep(WAIT * 3)
        return 1

    return app


@pytest.fixture
def served(start_pgbouncer: StartPgBouncer, pgbouncer_database: str) -> Serve:
    @contextlib.asynccontextmanager
    async def serve(
        mode: str = "transaction", **pgbouncer: object
    ) -> AsyncIterator[tuple[httpx.AsyncClient, PgBouncer]]:
        bouncer = start_pgbouncer(pool_mode=mode, **pgbouncer)
        database = Database(
            url=bouncer.url(pgbouncer_database),
            pgbouncer=mode,
            pool_size=3,
            max_overflow=0,
            pool_timeout=2,
            connect_timeout=2,
        )
        transport = httpx.ASGITransport(app=build_app(database))
        async with (
            database.lifespan(),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            yield client, bouncer

    return serve


async def test_query_wait_timeout_answers_503_as_an_unavailable_database(
    served: Serve,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with served(default_pool_size=1, query_wait_timeout=WAIT) as (client, _):
        assert (await client.get("/read")).status_code == 200
        holder = asyncio.ensure_future(client.post("/hold"))
        await asyncio.sleep(WAIT / 2)
        waited = await client.get("/read")
        assert (await holder).status_code == 200
    assert waited.status_code == 503
    assert waited.headers["retry-after"] == "1"
    assert waited.json()["detail"] == "the database cannot be reached or has no free connection"
    assert_one_unavailable_503_logged(caplog)


async def test_in_session_mode_a_client_left_without_a_server_connection_answers_503(
    served: Serve,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # In session mode a server connection stays with its client connection: with one
    # server connection, held by the read pool's connection, a write's connection waits
    # in PgBouncer's queue until query_wait_timeout closes it.
    caplog.set_level(logging.WARNING)
    async with served("session", default_pool_size=1, query_wait_timeout=WAIT) as (client, _):
        assert (await client.get("/read")).status_code == 200
        started = time.monotonic()
        waited = await client.post("/write")
        assert time.monotonic() - started < REQUEST_BOUND
        assert (await client.get("/read")).status_code == 200
    assert waited.status_code == 503
    assert waited.headers["retry-after"] == "1"
    assert_one_unavailable_503_logged(caplog)


def assert_one_unavailable_503_logged(caplog: pytest.LogCaptureFixture) -> None:
    (line,) = [r.getMessage() for r in caplog.records if "answered 503" in r.getMessage()]
    # PgBouncer closed the waiting client, saying why; the driver names it so.
    assert "(unavailable)" in line
    assert "(ConnectionDoesNotExistError)" in line


@pytest.mark.parametrize("how", ["restart", "kill"])
@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_a_pgbouncer_restart_answers_503_then_recovers_without_hanging(
    served: Serve,
    how: str,
    mode: str,
) -> None:
    # In session mode each client connection holds a server connection: room for all.
    pool_size = 2 if mode == "transaction" else 20
    async with served(mode, default_pool_size=pool_size) as (client, bouncer):
        assert (await client.get("/read")).status_code == 200
        assert (await client.post("/write")).status_code == 200
        if how == "restart":
            bouncer.restart()
        else:
            bouncer.kill()
            bouncer.start()
        statuses: list[int] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and statuses[-4:] != [200] * 4:
            started = time.monotonic()
            for answer in await asyncio.gather(client.get("/read"), client.post("/write")):
                statuses.append(answer.status_code)
            assert time.monotonic() - started < REQUEST_BOUND
        ready = await client.get("/health/ready")
    assert statuses[-4:] == [200] * 4
    assert set(statuses) <= {200, 503}
    assert ready.status_code == 200
    assert ready.json()["reachable"] is True
