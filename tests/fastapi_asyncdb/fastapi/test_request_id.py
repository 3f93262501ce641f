"""Each request's id reaches its slow-statement log lines and comes back in its answer."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from fastapi_asyncdb import Database, ReadConnectionDep, install

pytestmark = [pytest.mark.usefixtures("clean_environment"), pytest.mark.backends("sqlite")]


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    database = Database(url=database_url, slow_statement_threshold=1e-9)
    app = FastAPI()
    install(app, database)

    @app.get("/one")
    async def one(connection: ReadConnectionDep) -> int:
        return int((await connection.execute(select(1))).scalar_one())

    async with database.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def _logged_ids(caplog: pytest.LogCaptureFixture) -> list[object]:
    return [
        getattr(record, "request_id", None)
        for record in caplog.records
        if record.name == "fastapi_asyncdb.statements"
    ]


async def test_the_request_id_sent_is_logged_and_sent_back(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fastapi_asyncdb.statements"):
        response = await client.get("/one", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123"
    assert _logged_ids(caplog) == ["abc-123"]


async def test_without_a_request_id_one_is_made_logged_and_sent_back(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fastapi_asyncdb.statements"):
        response = await client.get("/one")
    made = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert _logged_ids(caplog) == [made]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sent=st.text(alphabet=st.characters(codec="latin-1"), min_size=1, max_size=200))
async def test_a_request_id_that_is_not_a_plain_id_is_replaced(
    client: httpx.AsyncClient, sent: str
) -> None:
    try:
        headers = httpx.Headers({"X-Request-ID": sent})
        response = await client.get("/one", headers=headers)
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # not a header a client can send
    answered = response.headers["x-request-id"]
    plain = re.fullmatch(r"[A-Za-z0-9._:@/+=-]{1,128}", sent.strip(" \t")) is not None
    assert answered == sent.strip(" \t") if plain else re.fullmatch(r"[0-9a-f]{32}", answered)
