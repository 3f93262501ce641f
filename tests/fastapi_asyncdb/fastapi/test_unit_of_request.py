"""The request's unit of work ends on the response's terms: error responses roll back,
streaming bodies cannot write through it unnoticed, nesting fails at once, and a
teardown that fails after the endpoint undoes the write."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from sqlalchemy import insert, text

from fastapi_asyncdb import (
    ConfigurationError,
    Database,
    DatabaseDep,
    NestedUnitOfWorkError,
    ReadConnectionDep,
    SessionDep,
    install,
    problem_response,
)

from ..models import Note, count_rows, create_tables
from .server import serving

pytestmark = pytest.mark.usefixtures("clean_environment")


class AlreadyDoneError(Exception):
    """A domain exception an app answers with a 200."""


def failing_teardown() -> Iterator[None]:
    yield
    raise RuntimeError("teardown failed after the endpoint returned")


def build_app(database: Database) -> FastAPI:
    # The database fixture starts the database; the app's lifespan only runs the
    # startup checks that install() adds.
    app = FastAPI()
    install(app, database)

    @app.post("/returned/{status}")
    async def returned(status: int, session: SessionDep) -> object:
        session.add(Note(body=f"returned {status}"))
        await session.flush()
        return problem_response(status, detail="returned, not raised")

    @app.exception_handler(AlreadyDoneError)
    async def already_done(_request: object, _error: Exception) -> object:
        return JSONResponse({"status": "done"})

    @app.post("/raised/handled-as-200")
    async def raised_handled(session: SessionDep) -> object:
        session.add(Note(body="raised, answered 200"))
        await session.flush()
        raise AlreadyDoneError

    @app.post("/raised/redirect")
    async def raised_redirect(session: SessionDep) -> object:
        session.add(Note(body="raised, answered 303"))
        await session.flush()
        raise HTTPException(303, headers={"Location": "/notes/1"})

    @app.post("/redirect/returned")
    async def returned_redirect(session: SessionDep) -> object:
        session.add(Note(body="returned, answered 303"))
        await session.flush()
        return RedirectResponse("/notes/1", status_code=303)

    @app.post("/returned-but-committed")
    async def returned_but_committed(session: SessionDep) -> object:
        session.add(Note(body="kept"))
        await session.commit()  # the documented way to keep writes despite an error answer
        return problem_response(400, detail="refused, and the note kept")

    @app.post("/stream/write-before")
    async def write_before_stream(session: SessionDep) -> StreamingResponse:
        session.add(Note(body="before the stream"))
        await session.flush()

        async def body() -> AsyncIterator[bytes]:
            yield b"one\n"
            yield b"two\n"

        return StreamingResponse(body())

    @app.post("/stream/write-in-body")
    async def write_in_stream(session: SessionDep) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"first chunk\n"
            session.add(Note(body="in the body"))
            await session.flush()
            yield b"never sent\n"

        return StreamingResponse(body())

    @app.post("/stream/own-transaction")
    async def stream_own_transaction(db: DatabaseDep) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"working\n"
            async with db.transaction() as session:
                session.add(Note(body="written by the body"))
            yield b"done\n"

        return StreamingResponse(body())

    @app.post("/nested/transaction")
    async def nested_transaction(session: SessionDep, db: DatabaseDep) -> dict[str, str]:
        session.add(Note(body="outer"))
        async with db.transaction() as inner:
            inner.add(Note(body="inner"))
        return {"status": "unreachable"}

    @app.post("/nested/statement")
    async def nested_statement(session: SessionDep, db: DatabaseDep) -> dict[str, str]:
        await db.run_statement(insert(Note), {"body": "inner"})
        return {"status": "unreachable"}

    @app.get("/nested/reads")
    async def nested_reads(connection: ReadConnectionDep, db: DatabaseDep) -> dict[str, int]:
        async with db.read_session() as session:
            inner = (await session.execute(text("SELECT 1"))).scalar_one()
        outer = (await connection.execute(text("SELECT 2"))).scalar_one()
        return {"inner": inner, "outer": outer}

    @app.post("/teardown-fails", dependencies=[Depends(failing_teardown, scope="function")])
    async def teardown_fails(session: SessionDep) -> dict[str, str]:
        session.add(Note(body="before a failing teardown"))
        await session.flush()
        return {"status": "written"}

    @app.post("/request-teardown-fails", dependencies=[Depends(failing_teardown)])
    async def request_teardown_fails(session: SessionDep) -> dict[str, str]:
        session.add(Note(body="before a failing request-scoped teardown"))
        await session.flush()
        return {"status": "written"}

    return app


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    # Read capacity 1: a nested read that needed a second connection would wait forever.
    database = Database(
        url=database_url,
        pool_size=2,
        max_overflow=0,
        read_pool_size=1,
        read_max_overflow=0,
        pool_timeout=3,
    )
    async with database.lifespan():
        await create_tables(database)
        yield database


@pytest.fixture
async def client(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(database)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


async def assert_nothing_held(database: Database) -> None:
    for status in database.pool_status().values():
        assert (status["in_use"], status["checked_out"]) == (0, 0)


@pytest.mark.parametrize("status", [400, 404, 409, 422, 500, 503])
async def test_a_returned_error_response_rolls_back(
    client: httpx.AsyncClient, database: Database, status: int
) -> None:
    response = await client.post(f"/returned/{status}")
    assert response.status_code == status
    assert await count_rows(database, Note) == 0
    await assert_nothing_held(database)


@pytest.mark.parametrize("status", [200, 201, 302])
async def test_a_returned_success_or_redirect_commits(
    client: httpx.AsyncClient, database: Database, status: int
) -> None:
    response = await client.post(f"/returned/{status}", follow_redirects=False)
    assert response.status_code == status
    assert await count_rows(database, Note) == 1


@pytest.mark.parametrize(
    ("route", "status", "raised"),
    [
        ("/raised/handled-as-200", 200, "AlreadyDoneError"),
        ("/raised/redirect", 303, "HTTPException"),
    ],
)
async def test_a_raise_answered_below_400_rolls_back_and_warns_naming_the_route(
    client: httpx.AsyncClient,
    database: Database,
    caplog: pytest.LogCaptureFixture,
    route: str,
    status: int,
    raised: str,
) -> None:
    response = await client.post(route, follow_redirects=False)
    assert response.status_code == status
    assert await count_rows(database, Note) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"POST {route} answered {status} after {raised} rolled its unit of work back" in w
        for w in warnings
    ), warnings


async def test_a_returned_redirect_commits_without_a_warning(
    client: httpx.AsyncClient, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.post("/redirect/returned", follow_redirects=False)
    assert response.status_code == 303
    assert await count_rows(database, Note) == 1
    assert not [r for r in caplog.records if "rolled its unit of work back" in r.getMessage()]


async def test_an_explicit_commit_keeps_writes_despite_an_error_response(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await client.post("/returned-but-committed")
    assert response.status_code == 400
    assert await count_rows(database, Note) == 1


async def test_writes_before_a_streaming_body_are_committed_before_its_first_byte(
    client: httpx.AsyncClient, database: Database
) -> None:
    async with client.stream("POST", "/stream/write-before") as response:
        assert response.status_code == 200
        # The headers are here: the commit happened before them.
        assert await count_rows(database, Note) == 1
        assert await response.aread() == b"one\ntwo\n"
    await assert_nothing_held(database)


async def test_a_write_in_a_streaming_body_through_session_dep_is_refused_never_acknowledged(
    database: Database,
) -> None:
    # Over real HTTP: the response is cut before its end, so no client takes it as complete.
    async with serving(build_app(database)) as url, httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("POST", "/stream/write-in-body") as response:
                assert response.status_code == 200
                await response.aread()
    assert await count_rows(database, Note) == 0
    await assert_nothing_held(database)


async def test_a_request_scoped_teardown_that_fails_cannot_undo_an_answered_commit(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # The default scope of a yield dependency: its teardown runs after the response has
    # been sent, so the client has its 200 and the write stays; the server logs the
    # error. This is why checks that must veto a write go in function-scoped ones.
    async with serving(build_app(database)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/request-teardown-fails")
    assert response.status_code == 200
    assert response.json() == {"status": "written"}
    assert await count_rows(database, Note) == 1
    await assert_nothing_held(database)
    assert any(
        "teardown failed after the endpoint returned" in str(record.exc_info and record.exc_info[1])
        for record in caplog.records
    )


async def test_a_streaming_body_writes_through_its_own_transaction(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await client.post("/stream/own-transaction")
    assert response.content == b"working\ndone\n"
    assert await count_rows(database, Note) == 1


async def test_a_generator_endpoint_with_session_dep_is_refused_at_startup(
    database_url: str,
) -> None:
    database = Database(url=database_url)
    app = FastAPI(lifespan=database.lifespan)
    install(app, database)

    @app.get("/lines")
    async def lines(session: SessionDep) -> AsyncIterator[str]:
        yield "a line"

    with pytest.raises(ConfigurationError, match=r"GET /lines .*db\.transaction\(\)"):
        async with app.router.lifespan_context(app):
            pass


@pytest.mark.parametrize("path", ["/nested/transaction", "/nested/statement"])
async def test_a_unit_of_work_nested_in_session_dep_fails_at_once_and_writes_nothing(
    client: httpx.AsyncClient, database: Database, path: str
) -> None:
    started = time.monotonic()
    response = await client.post(path)
    # At once: not after the 3 s acquire timeout.
    assert time.monotonic() - started < 1.5
    assert response.status_code == 500
    assert await count_rows(database, Note) == 0
    await assert_nothing_held(database)


async def test_nested_transactions_outside_requests_raise_nested_unit_of_work_error(
    database: Database,
) -> None:
    async with database.transaction():
        with pytest.raises(NestedUnitOfWorkError, match="already open in this task"):
            async with database.transaction():
                pass
    await assert_nothing_held(database)


async def test_two_tasks_each_with_a_unit_of_work_are_not_nesting(database: Database) -> None:
    async def write(body: str) -> None:
        async with database.transaction() as session:
            session.add(Note(body=body))
            await asyncio.sleep(0.05)

    await asyncio.gather(write("a"), write("b"))
    assert await count_rows(database, Note) == 2


async def test_nested_read_units_share_the_connection_instead_of_waiting_for_another(
    client: httpx.AsyncClient, database: Database
) -> None:
    started = time.monotonic()
    response = await client.get("/nested/reads")
    assert response.json() == {"inner": 1, "outer": 2}
    assert time.monotonic() - started < 1.5
    await assert_nothing_held(database)


async def test_a_dependency_teardown_that_fails_after_the_endpoint_rolls_the_write_back(
    client: httpx.AsyncClient, database: Database
) -> None:
    response = await client.post("/teardown-fails")
    assert response.status_code == 500
    assert await count_rows(database, Note) == 0
    await assert_nothing_held(database)
