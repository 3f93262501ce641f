"""Every client error is problem+json, documented in OpenAPI, bounded, and from one table."""

from __future__ import annotations

import enum
import json
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Query
from pydantic import BaseModel
from sqlalchemy import Enum, literal_column, select, type_coerce
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from fastapi_asyncdb import (
    Database,
    DatabaseDep,
    ErrorAnswer,
    ErrorKind,
    ReadConnectionDep,
    ReadSessionDep,
    SessionDep,
    get_database,
    get_read_connection,
    get_read_session,
    get_session,
    install,
)
from fastapi_asyncdb.fastapi import ERROR_ANSWERS, PROBLEM_JSON, DatabaseErrorHandler

from ..models import Note, create_tables

pytestmark = pytest.mark.usefixtures("clean_environment")


class Payload(BaseModel):
    amount: float
    name: str


def build_app(database: Database, **options: object) -> FastAPI:
    app = FastAPI()
    install(app, database, **options)  # type: ignore[arg-type]

    @app.post("/payloads")
    async def accept(payload: Payload) -> dict[str, str]:
        return {"name": payload.name}

    @app.get("/items")
    async def items(limit: Annotated[int, Query(ge=1, le=10)] = 5) -> list[int]:
        return list(range(limit))

    @app.post("/notes", status_code=201)
    async def create(body: str, session: SessionDep) -> dict[str, str]:
        session.add(Note(body=body))
        await session.flush()
        return {"body": body}

    return app


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(url=database_url)
    async with database.lifespan():
        await create_tables(database)
        yield database


async def request(app: FastAPI, method: str, url: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, url, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_json_numbers_get_a_422_problem_not_a_500(
    database: Database, number: str
) -> None:
    body = f'{{"amount": {number}, "name": 5}}'
    response = await request(
        build_app(database),
        "POST",
        "/payloads",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["status"] == 422
    assert {"loc", "msg", "type"} <= set(problem["errors"][0])


async def test_validation_errors_never_echo_the_input(database: Database) -> None:
    huge = "x" * 200_000
    response = await request(
        build_app(database), "POST", "/payloads", json={"amount": huge, "name": huge}
    )
    assert response.status_code == 422
    assert len(response.content) < 5_000
    assert "xxxxxxxx" not in response.text


async def test_query_validation_errors_are_problems_too(database: Database) -> None:
    response = await request(build_app(database), "GET", "/items?limit=99")
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["query", "limit"]


async def test_unknown_routes_answer_404_as_a_problem(database: Database) -> None:
    response = await request(build_app(database), "GET", "/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["title"] == "Not Found"


async def test_openapi_documents_422_and_503_as_problem_details(database: Database) -> None:
    schema = build_app(database).openapi()
    schemas = schema["components"]["schemas"]
    assert {"Problem", "ValidationProblem", "ValidationIssue"} <= set(schemas)
    assert "HTTPValidationError" not in schemas
    responses = schema["paths"]["/payloads"]["post"]["responses"]
    assert responses["422"]["content"][PROBLEM_JSON]["schema"]["$ref"].endswith(
        "/ValidationProblem"
    )
    assert responses["503"]["content"][PROBLEM_JSON]["schema"]["$ref"].endswith("/Problem")
    json.dumps(schema)  # serialisable as is


async def test_a_conflict_is_409_by_default_and_can_be_remapped(database: Database) -> None:
    default_app = build_app(database)
    assert (await request(default_app, "POST", "/notes?body=same")).status_code == 201
    conflict = await request(default_app, "POST", "/notes?body=same")
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == PROBLEM_JSON

    remapped = build_app(
        database,
        answers={ErrorKind.CONFLICT: ErrorAnswer(422, "that note exists already")},
    )
    response = await request(remapped, "POST", "/notes?body=same")
    assert response.status_code == 422
    assert response.json()["detail"] == "that note exists already"
    assert ERROR_ANSWERS[ErrorKind.CONFLICT].status == 409  # the default table is untouched


async def test_the_handler_can_be_reused_in_an_app_wired_by_hand(database: Database) -> None:
    handler = DatabaseErrorHandler(database)
    app = build_app(database)
    app.add_exception_handler(Exception, handler)
    assert (await request(app, "POST", "/notes?body=one")).status_code == 201
    response = handler.response(RuntimeError("not a database error"))
    assert response.status_code == 500


async def test_get_session_can_be_overridden_like_any_dependency(database: Database) -> None:
    app = build_app(database)
    used: list[AsyncSession] = []

    async def own_session() -> AsyncIterator[AsyncSession]:
        async with database.transaction() as session:
            used.append(session)
            yield session

    app.dependency_overrides[get_session] = own_session
    assert (await request(app, "POST", "/notes?body=overridden")).status_code == 201
    assert len(used) == 1


async def test_every_dependency_function_can_be_overridden(database: Database) -> None:
    # Each *Dep is Annotated[..., Depends(get_*)]: overriding the function replaces
    # what every endpoint declaring the alias receives.
    app = FastAPI()
    install(app, database)

    @app.get("/which")
    async def which(
        read_session: ReadSessionDep, read_connection: ReadConnectionDep, db: DatabaseDep
    ) -> list[str]:
        return [
            str(read_session.info["which"]),
            str(read_connection.info["which"]),
            type(db).__name__,
        ]

    async def own_read_session() -> AsyncIterator[AsyncSession]:
        async with database.read_session() as session:
            session.info["which"] = "own read session"
            yield session

    async def own_read_connection() -> AsyncIterator[AsyncConnection]:
        async with database.read_connection() as connection:
            connection.info["which"] = "own read connection"
            yield connection

    class NamedDatabase:
        """Stands in for the app's Database."""

    app.dependency_overrides[get_read_session] = own_read_session
    app.dependency_overrides[get_read_connection] = own_read_connection
    app.dependency_overrides[get_database] = NamedDatabase
    response = await request(app, "GET", "/which")
    assert response.json() == ["own read session", "own read connection", "NamedDatabase"]


async def test_problem_details_can_be_left_to_the_app(database: Database) -> None:
    response = await request(build_app(database, problem_details=False), "GET", "/items?limit=99")
    assert response.status_code == 422
    assert "detail" in response.json()
    assert response.headers["content-type"] == "application/json"


class _Mood(enum.Enum):
    calm = "calm"


async def test_an_unexpected_error_is_a_500_problem_logged_without_the_value(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # A stored value its column type cannot convert back: SQLAlchemy raises LookupError
    # quoting it while reading the row, outside any database error handler.
    stored = "-".join(("stored", "value", "77"))
    app = build_app(database)
    mood = Enum(_Mood, native_enum=False, validate_strings=True, length=100)

    @app.get("/moods")
    async def moods(session: SessionDep) -> list[str]:
        rows = await session.execute(select(type_coerce(literal_column(f"'{stored}'"), mood)))
        return [str(row[0]) for row in rows]

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/moods")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["detail"] == "an unexpected error occurred"
    assert "unexpected error answered 500 on GET /moods: LookupError" in caplog.text
    assert stored not in caplog.text
    assert stored not in response.text


@pytest.mark.backends("postgresql", "mysql")
async def test_a_connect_failure_tells_clients_no_host_user_or_driver_words(
    database_url: str,
) -> None:
    from ..proxy import free_port

    url = make_url(database_url).set(port=free_port(), username="someone")
    database = Database(url=url.render_as_string(False), connect_timeout=1)
    async with database.lifespan():
        response = await request(build_app(database), "POST", "/notes?body=x")
    assert response.status_code == 503
    assert response.json()["detail"] == "the database cannot be reached"
    for private in ("127.0.0.1", "someone", str(url.port), "Error"):
        assert private not in response.text
