"""Cancelled work and departed clients: nothing leaks, nothing stays idle in a transaction."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import StreamingResponse
from sqlalchemy import text

from fastapi_asyncdb import Database, ReadSessionDep, SessionDep, install

from ..models import Note, count_rows, create_tables

pytestmark = [pytest.mark.usefixtures("clean_environment")]


async def server_activity(database: Database, query_like: str) -> list[str]:
    """States of this app's other server sessions running a matching query right now."""
    async with database.engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT state FROM pg_stat_activity WHERE application_name = :name "
                "AND pid <> pg_backend_pid() AND query LIKE :query AND state = 'active'"
            ),
            {"name": database.settings.application_name, "query": query_like},
        )
        return [str(state) for (state,) in rows]


@pytest.mark.backends("postgresql")
async def test_cancelled_query_stops_on_the_server_within_a_second(database_url: str) -> None:
    async with Database(url=database_url, application_name="cancel-test") as database:

        async def slow_unit() -> None:
            async with database.transaction() as session:
                await session.execute(text("SELECT pg_sleep(30)"))

        task = asyncio.create_task(slow_unit())
        await asyncio.sleep(0.3)
        assert await server_activity(database, "SELECT pg_sleep%") == ["active"]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cancelled_at = time.monotonic()
        while await server_activity(database, "SELECT pg_sleep%"):
            assert time.monotonic() - cancelled_at < 1.5
            await asyncio.sleep(0.1)
        status = (await database.check_health())["pools"]["primary"]
        assert status["checked_out"] == 0
        assert status["in_use"] == 0


async def test_cancelled_unit_of_work_commits_nothing_and_returns_its_connection(
    database_url: str,
) -> None:
    async with Database(url=database_url) as database:
        await create_tables(database)
        entered = asyncio.Event()

        async def half_done() -> None:
            async with database.transaction() as session:
                session.add(Note(body="half"))
                await session.flush()
                entered.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(half_done())
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await count_rows(database, Note) == 0
        for status in (await database.check_health())["pools"].values():
            assert status["in_use"] == 0
            assert status["checked_out"] == 0


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


@pytest.mark.backends("sqlite", "postgresql", "mysql")
async def test_client_leaving_a_streaming_response_returns_the_connection(
    database_url: str,
) -> None:
    database = Database(url=database_url, application_name="stream-test")
    app = FastAPI(lifespan=database.lifespan)
    install(app, database)
    rows_sent = asyncio.Event()

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        # The request session is closed before a streaming body runs, so the body opens
        # its own unit of work, as the README says.
        async def body() -> AsyncIterator[bytes]:
            async with database.read_session() as session:
                for number in range(1000):
                    await session.execute(text("SELECT 1"))
                    yield f"{number}\n".encode()
                    rows_sent.set()
                    await asyncio.sleep(0.01)

        return StreamingResponse(body(), media_type="text/plain")

    async with served(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.wait_for(rows_sent.wait(), 5)
        writer.close()
        left_at = time.monotonic()
        while True:
            status = (await database.check_health())["pools"]["read"]
            if status["in_use"] == 0 and status["checked_out"] == 0:
                break
            assert time.monotonic() - left_at < 2
            await asyncio.sleep(0.05)


async def leave_after(port: int, request: bytes, seconds: float) -> None:
    """Send a request, then hang up before any answer, as an impatient client does."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    await asyncio.sleep(seconds)
    writer.close()
    await writer.wait_closed()


def disconnect_app(database: Database) -> FastAPI:
    app = FastAPI(lifespan=database.lifespan)
    install(app, database)

    @app.post("/notes/{note_id}/lock", status_code=201)
    async def wait_for_lock(note_id: int, note: dict[str, str], session: SessionDep) -> None:
        session.add(Note(body=note["body"]))
        await session.flush()
        await session.execute(
            text("SELECT id FROM notes WHERE id = :id FOR UPDATE"), {"id": note_id}
        )

    @app.get("/sleep")
    async def sleep(session: ReadSessionDep) -> None:
        await session.execute(text("SELECT pg_sleep(30)"))

    @app.post("/later", status_code=202)
    async def later(tasks: BackgroundTasks) -> dict[str, str]:
        async def write() -> None:
            await asyncio.sleep(0.3)
            async with database.transaction() as session:
                session.add(Note(body="written after the response"))

        tasks.add_task(write)
        return {"status": "accepted"}

    return app


async def wait_until_idle(database: Database, query_like: str) -> float:
    """Seconds until no query like this runs for the app and its pools are all returned."""
    started = time.monotonic()
    while True:
        pools = database.pool_status().values()
        running = await server_activity(database, query_like)
        if not running and all(pool["in_use"] == 0 for pool in pools):
            return time.monotonic() - started
        assert time.monotonic() - started < 3, f"still running: {running}, pools: {pools}"
        await asyncio.sleep(0.05)


@pytest.mark.backends("postgresql")
async def test_client_leaving_a_request_blocked_on_a_lock_stops_its_query(
    database_url: str,
) -> None:
    database = Database(url=database_url, application_name="disconnect-test")
    async with served(disconnect_app(database)) as port:
        await create_tables(database)
        async with database.transaction() as session:
            session.add(Note(id=1, body="locked"))
        async with database.engine.connect() as holder:
            await holder.execute(text("SELECT id FROM notes WHERE id = 1 FOR UPDATE"))
            body = b'{"body": "abandoned"}'
            await leave_after(
                port,
                b"POST /notes/1/lock HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
                0.5,
            )
            assert await wait_until_idle(database, "SELECT id FROM notes%") < 1.5
            await holder.rollback()
        assert await count_rows(database, Note) == 1


@pytest.mark.backends("postgresql")
async def test_client_leaving_a_slow_read_stops_its_query(database_url: str) -> None:
    database = Database(url=database_url, application_name="disconnect-test")
    async with served(disconnect_app(database)) as port:
        await leave_after(port, b"GET /sleep HTTP/1.1\r\nHost: t\r\n\r\n", 0.5)
        assert await wait_until_idle(database, "SELECT pg_sleep%") < 1.5


async def test_background_work_after_the_response_is_not_cancelled_by_the_client_leaving(
    database_url: str,
) -> None:
    database = Database(url=database_url)
    async with served(disconnect_app(database)) as port:
        await create_tables(database)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /later HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        assert b"202" in await reader.readline()
        writer.close()
        # The task writes 0.3 s after the response; a cancelled one never does. Polled,
        # so that a loaded machine's slower write is not taken for a cancellation.
        for _ in range(50):
            if await count_rows(database, Note):
                break
            await asyncio.sleep(0.1)
        assert await count_rows(database, Note) == 1
