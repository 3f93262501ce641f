"""A model that does not fit a row: a 500 whose logs, ours and the server's, hold no value."""

from __future__ import annotations

import contextlib
import io
import logging
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pydantic
import pytest
from fastapi import FastAPI
from fastapi.exceptions import ResponseValidationError
from pydantic import BaseModel
from sqlalchemy import select

from fastapi_asyncdb import Database, SessionDep, install

from ..models import Note, create_tables
from .server import serving

pytestmark = pytest.mark.usefixtures("clean_environment")

# Built, not written whole, so that no source line holds it.
STORED = "-".join(("SSN", "123", "45", "6789"))


class Age(BaseModel):
    id: int
    age: int


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(url=database_url)
    async with database.lifespan():
        await create_tables(database)
        async with database.transaction() as session:
            session.add(Note(body=STORED))
        yield database


def build_app(database: Database) -> FastAPI:
    app = FastAPI()
    install(app, database)

    # A bug in the app: the text column read where the model wants a number.
    @app.get("/response-model", response_model=Age)
    async def response_model(session: SessionDep) -> Any:
        row = (await session.execute(select(Note.id, Note.body.label("age")))).one()
        return row._asdict()

    @app.get("/model-validate")
    async def model_validate(session: SessionDep) -> dict[str, int]:
        row = (await session.execute(select(Note.id, Note.body.label("age")))).one()
        return Age.model_validate(row._asdict()).model_dump()

    return app


@contextlib.contextmanager
def server_log() -> Iterator[io.StringIO]:
    """What uvicorn logs of an exception the app re-raised, formatted as it prints it.

    Entered once the server runs: uvicorn's configuration resets its loggers' handlers.
    """
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    server_logger = logging.getLogger("uvicorn.error")
    server_logger.addHandler(handler)
    yield text
    server_logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("path", "error"),
    [("/response-model", "ResponseValidationError"), ("/model-validate", "ValidationError")],
)
async def test_a_row_that_fits_no_model_is_a_500_whose_logs_hold_no_value(
    database: Database,
    caplog: pytest.LogCaptureFixture,
    path: str,
    error: str,
) -> None:
    async with serving(build_app(database)) as base_url, httpx.AsyncClient() as client:
        with server_log() as logged:
            response = await client.get(base_url + path)
    assert response.status_code == 500
    assert STORED not in response.text
    assert f"unexpected error answered 500 on GET {path}: " in caplog.text
    assert error in caplog.text
    assert STORED not in caplog.text
    # The server logged the exception Starlette re-raised, traceback and all.
    assert "Exception in ASGI application" in logged.getvalue()
    assert "age" in logged.getvalue()
    assert STORED not in logged.getvalue()


@pytest.mark.parametrize("path", ["/response-model", "/model-validate"])
async def test_the_exception_re_raised_after_the_500_prints_no_value(
    database: Database, path: str
) -> None:
    transport = httpx.ASGITransport(app=build_app(database), raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises((ResponseValidationError, pydantic.ValidationError)) as raised:
            await client.get(path)
    printed = "".join(traceback.format_exception(raised.value))
    assert STORED not in printed
    assert STORED not in repr(raised.value)
    assert "age" in printed
    if path == "/model-validate":
        # Still the error the app's own ``except`` clauses name.
        assert isinstance(raised.value, pydantic.ValidationError)
        assert all("input" not in issue for issue in raised.value.errors())
