from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_asyncdb import (
    Database,
    Prepared,
    ReadConnectionDep,
    ReadSessionDep,
    SessionDep,
    install,
)

from ..models import Child, Note, Positive, count_rows, create_tables

pytestmark = pytest.mark.usefixtures("clean_environment")


class NoteIn(BaseModel):
    body: str


class NoteOut(BaseModel):
    id: int
    body: str


NOTE_BY_ID = select(Note.id, Note.body).where(Note.id == bindparam("id"))
PREPARED_NOTE_BY_ID = Prepared(NOTE_BY_ID)


def build_app(database: Database) -> FastAPI:
    app = FastAPI(lifespan=database.lifespan)
    install(app, database)

    @app.post("/notes", status_code=201)
    async def create_note(note: NoteIn, session: SessionDep) -> NoteOut:
        row = Note(body=note.body)
        session.add(row)
        await session.flush()
        return NoteOut(id=row.id, body=row.body)

    @app.post("/notes/unflushed", status_code=201)
    async def create_note_unflushed(note: NoteIn, session: SessionDep) -> dict[str, str]:
        # The INSERT happens in the commit, after this function has returned.
        session.add(Note(body=note.body))
        return {"status": "accepted"}

    @app.post("/orphans", status_code=201)
    async def create_orphan(session: SessionDep) -> dict[str, str]:
        # A deferred foreign key: only COMMIT itself can fail.
        session.add(Child(parent_id=424242))
        await session.flush()
        return {"status": "created"}

    @app.post("/positives", status_code=201)
    async def create_positive(value: int, session: SessionDep) -> dict[str, str]:
        session.add(Positive(value=value))
        await session.flush()
        return {"status": "created"}

    @app.post("/notes/then-400")
    async def create_then_fail(note: NoteIn, session: SessionDep) -> None:
        session.add(Note(body=note.body))
        await session.flush()
        raise HTTPException(status_code=400, detail="rejected after writing")

    @app.get("/notes/{note_id}")
    async def read_note(note_id: int, session: ReadSessionDep) -> NoteOut:
        row = await session.get(Note, note_id)
        if row is None:
            raise HTTPException(status_code=404)
        return NoteOut(id=row.id, body=row.body)

    @app.get("/core/notes/{note_id}")
    async def read_note_with_core(note_id: int, connection: ReadConnectionDep) -> NoteOut:
        row = (await connection.execute(NOTE_BY_ID, {"id": note_id})).one_or_none()
        if row is None:
            raise HTTPException(status_code=404)
        return NoteOut(id=row.id, body=row.body)

    @app.get("/prepared/notes/{note_id}")
    async def read_note_prepared(note_id: int, connection: ReadConnectionDep) -> NoteOut:
        row = await PREPARED_NOTE_BY_ID.one_or_none(connection, {"id": note_id})
        if row is None:
            raise HTTPException(status_code=404)
        return NoteOut(id=row.id, body=row.body)

    @app.get("/core/notes")
    async def stream_notes(connection: ReadConnectionDep) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            # The connection is still the request's while the body streams.
            for row in await connection.execute(select(Note.body).order_by(Note.id)):
                yield row.body + "\n"

        return StreamingResponse(lines(), media_type="text/plain")

    @app.get("/core/read-then-background")
    async def read_then_background(
        connection: ReadConnectionDep, tasks: BackgroundTasks
    ) -> dict[str, str]:
        await connection.execute(text("SELECT 1"))
        tasks.add_task(record_read_connections_in_use, database)
        return {"status": "read"}

    @app.post("/core/notes")
    async def write_through_read_connection(note: NoteIn, connection: ReadConnectionDep) -> None:
        await connection.execute(insert(Note).values(body=note.body))

    @app.post("/notes/through-read-session")
    async def write_through_read_session(note: NoteIn, session: ReadSessionDep) -> None:
        session.add(Note(body=note.body))
        await session.flush()

    @app.get("/slow")
    async def slow(session: ReadSessionDep, seconds: float = 1.0) -> dict[str, str]:
        await session.execute(text("SELECT 1"))
        await asyncio.sleep(seconds)
        return {"status": "done"}

    @app.post("/leak-into-background", status_code=202)
    async def leak(session: SessionDep, tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(use_after_request, session)
        return {"status": "scheduled"}

    return app


background_errors: list[BaseException] = []


read_connections_in_use: list[int] = []


async def record_read_connections_in_use(database: Database) -> None:
    read_connections_in_use.append(database.pool_status()["read"]["in_use"])


async def use_after_request(session: AsyncSession) -> None:
    try:
        await session.execute(text("SELECT 1"))
    except Exception as error:
        background_errors.append(error)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(url=database_url, pool_size=2, max_overflow=0, pool_timeout=0.5)
    async with database.lifespan():
        await create_tables(database)
        yield database


@pytest.fixture
async def client(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_write_is_committed_and_readable_back(client: httpx.AsyncClient) -> None:
    created = await client.post("/notes", json={"body": "hello"})
    assert created.status_code == 201
    read = await client.get(f"/notes/{created.json()['id']}")
    assert read.json() == created.json()


async def test_commit_happens_before_the_response_starts(database: Database) -> None:
    app = build_app(database)
    seen_at_response_start: list[int] = []

    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if body_sent:  # as an ASGI server does: nothing more until the client leaves
            await asyncio.Event().wait()
        body_sent = True
        return {"type": "http.request", "body": b'{"body": "early"}', "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            seen_at_response_start.append(await count_rows(database, Note))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/notes/unflushed",
        "raw_path": b"/notes/unflushed",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "state": {},
        "app": app,
    }
    await app(scope, receive, send)
    assert seen_at_response_start == [1]


async def test_failing_commit_gives_an_error_response_and_no_row(
    client: httpx.AsyncClient, database: Database
) -> None:
    assert (await client.post("/notes/unflushed", json={"body": "dup"})).status_code == 201
    duplicate = await client.post("/notes/unflushed", json={"body": "dup"})
    assert duplicate.status_code == 409
    assert duplicate.headers["content-type"] == "application/problem+json"
    assert "dup" not in duplicate.text
    assert await count_rows(database, Note) == 1


async def test_check_constraint_violation_answers_409_on_every_backend(
    client: httpx.AsyncClient, database: Database
) -> None:
    # MariaDB's CHECK violations arrive as OperationalError, not IntegrityError.
    response = await client.post("/positives", params={"value": -1})
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert await count_rows(database, Positive) == 0


@pytest.mark.backends("sqlite", "postgresql")
async def test_failing_commit_statement_itself_gives_an_error_response_and_no_row(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await client.post("/orphans")
    assert response.status_code >= 400
    assert await count_rows(database, Child) == 0


async def test_http_exception_rolls_back_the_request_writes(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await client.post("/notes/then-400", json={"body": "undone"})
    assert response.status_code == 400
    assert await count_rows(database, Note) == 0


async def test_read_session_refuses_writes_with_a_clear_error(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await client.post("/notes/through-read-session", json={"body": "nope"})
    assert response.status_code == 500
    assert "read-only" in response.json()["detail"]
    assert await count_rows(database, Note) == 0


async def test_read_connection_reads_with_core_and_is_returned_after_the_request(
    client: httpx.AsyncClient, database: Database
) -> None:
    created = await client.post("/notes", json={"body": "core"})
    found = await client.get(f"/core/notes/{created.json()['id']}")
    missing = await client.get("/core/notes/424242")
    status = database.pool_status()["read"]
    assert found.json() == created.json()
    assert missing.status_code == 404
    assert (status["in_use"], status["checked_out"]) == (0, 0)


async def test_a_prepared_read_on_the_read_connection_answers_like_the_core_one(
    client: httpx.AsyncClient, database: Database
) -> None:
    created = await client.post("/notes", json={"body": "prepared"})
    # Twice: the first run is SQLAlchemy's, the second the driver's on PostgreSQL.
    found = [await client.get(f"/prepared/notes/{created.json()['id']}") for _ in range(2)]
    missing = await client.get("/prepared/notes/424242")
    status = database.pool_status()["read"]
    assert [response.json() for response in found] == [created.json()] * 2
    assert missing.status_code == 404
    assert (status["in_use"], status["checked_out"]) == (0, 0)


async def test_read_connection_stays_the_requests_while_its_body_streams(
    client: httpx.AsyncClient, database: Database
) -> None:
    for body in ("first", "second"):
        await client.post("/notes", json={"body": body})
    response = await client.get("/core/notes")
    status = database.pool_status()["read"]
    assert response.text == "first\nsecond\n"
    assert (status["in_use"], status["checked_out"]) == (0, 0)


async def test_read_connection_is_given_back_before_background_tasks_run(
    client: httpx.AsyncClient,
) -> None:
    read_connections_in_use.clear()
    response = await client.get("/core/read-then-background")
    assert response.json() == {"status": "read"}
    assert read_connections_in_use == [0]


async def test_read_connection_refuses_writes_with_a_clear_error(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await client.post("/core/notes", json={"body": "nope"})
    assert response.status_code == 500
    assert "read-only" in response.json()["detail"]
    assert await count_rows(database, Note) == 0


async def test_exhausted_pool_answers_503_with_retry_after_within_the_acquire_timeout(
    client: httpx.AsyncClient,
) -> None:
    async def timed_get() -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = await client.get("/slow", params={"seconds": 1.5})
        return response, time.monotonic() - started

    results = await asyncio.gather(*(timed_get() for _ in range(6)))
    ok = [elapsed for response, elapsed in results if response.status_code == 200]
    refused = [(response, elapsed) for response, elapsed in results if response.status_code == 503]
    assert len(ok) == 2
    assert len(refused) == 4
    for response, elapsed in refused:
        assert response.headers["retry-after"] == "1"
        assert response.json()["status"] == 503
        assert 0.45 <= elapsed < 1.0


async def test_session_passed_to_a_background_task_raises_instead_of_leaking(
    client: httpx.AsyncClient, database: Database
) -> None:
    background_errors.clear()
    response = await client.post("/leak-into-background")
    assert response.status_code == 202
    assert len(background_errors) == 1
    assert "closed" in str(background_errors[0])
    status = (await database.check_health())["pools"]["primary"]
    assert status["checked_out"] == 0
    assert status["in_use"] == 0


async def test_liveness_and_readiness_routes(client: httpx.AsyncClient) -> None:
    live = await client.get("/health/live")
    assert live.json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["pools"]["read"]["capacity"] == 2
    pools = await client.get("/health/pools")
    assert pools.json()["read"] == {
        "reachable": True,
        "saturated": False,
        "in_use": 0,
        "capacity": 2,
        "waiting": 0,
        "checked_out": 0,
        "idle": pools.json()["read"]["idle"],
    }


async def test_requests_after_shutdown_get_503_not_a_hang(database_url: str) -> None:
    database = Database(url=database_url)
    app = build_app(database)
    async with database.lifespan():
        await create_tables(database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/notes/1")
        live = await client.get("/health/live")
        pools = await client.get("/health/pools")
    assert response.status_code == 503
    assert "retry-after" in response.headers
    assert live.status_code == 200
    assert pools.status_code == 503


async def test_session_dependency_without_install_explains_the_fix(database: Database) -> None:
    app = FastAPI()

    @app.get("/")
    async def endpoint(session: SessionDep) -> None:
        return None

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises(Exception, match=r"install\(app, db\)"):
            await client.get("/")


SLEEP_SQL = {"postgresql": "SELECT pg_sleep(:seconds)", "mysql": "SELECT SLEEP(:seconds)"}


async def sleep_over_http(database: Database) -> tuple[httpx.Response, float]:
    app = FastAPI(lifespan=database.lifespan)
    install(app, database)

    @app.get("/sleep")
    async def sleep(session: SessionDep) -> dict[str, str]:
        sql = SLEEP_SQL[database.backend.name]
        await session.execute(text(sql), {"seconds": 3})
        return {"status": "slept"}

    transport = httpx.ASGITransport(app=app)
    async with (
        database.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        started = time.monotonic()
        response = await client.get("/sleep")
        return response, time.monotonic() - started


@pytest.mark.backends("postgresql", "mysql")
async def test_statement_timeout_answers_503_with_retry_after(database_url: str) -> None:
    response, elapsed = await sleep_over_http(Database(url=database_url, statement_timeout=0.3))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert elapsed < 1.3


@pytest.mark.backends("postgresql")
async def test_client_command_timeout_answers_503_not_a_bare_500(database_url: str) -> None:
    database = Database(url=database_url, statement_timeout=None, command_timeout=0.3)
    response, elapsed = await sleep_over_http(database)
    assert response.status_code == 503
    assert response.json()["detail"] == "the database did not answer within 0.3 s"
    assert elapsed < 1.3
