"""Oversized bodies are refused with 413 before they are parsed, declared or chunked."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from fastapi_asyncdb import Database, install
from fastapi_asyncdb.fastapi import PROBLEM_JSON

from .server import serving

pytestmark = pytest.mark.usefixtures("clean_environment")

LIMIT = 10_000


class Note(BaseModel):
    text: str


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    database = Database(url=database_url)
    app = FastAPI()
    install(app, database, max_body_size=LIMIT)
    received: list[int] = []

    @app.post("/echo-size")
    async def echo_size(request: Request) -> dict[str, int]:
        size = len(await request.body())
        received.append(size)
        return {"size": size}

    @app.post("/notes")
    async def note(body: Note) -> dict[str, int]:
        received.append(len(body.text))
        return {"size": len(body.text)}

    app.state.received = received
    async with database.lifespan():
        yield app


@pytest.mark.backends("sqlite")
async def test_a_declared_length_over_the_limit_is_refused_before_reading(app: FastAPI) -> None:
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/echo-size", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM_JSON
    assert app.state.received == []


@pytest.mark.backends("sqlite")
async def test_a_five_megabyte_body_gets_a_413_answer_not_a_reset(app: FastAPI) -> None:
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/echo-size", content=b"x" * 5_000_000)
    assert response.status_code == 413
    assert len(response.content) < 1_000


@pytest.mark.backends("sqlite")
async def test_a_chunked_body_is_refused_when_it_crosses_the_limit(app: FastAPI) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"y" * 1_000

    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/echo-size", content=chunks())
    assert response.status_code == 413
    assert app.state.received == []


@pytest.mark.backends("sqlite")
async def test_bodies_up_to_the_limit_pass(app: FastAPI) -> None:
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/echo-size", content=b"z" * LIMIT)
    assert response.json() == {"size": LIMIT}


@pytest.mark.backends("sqlite")
async def test_a_chunked_body_over_the_limit_gets_413_where_the_framework_parses_it(
    app: FastAPI,
) -> None:
    # FastAPI turns any error while it reads a model's body into its own 400; the limit
    # answers first.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(40):
            yield b"a" * 1_000
        yield b'"}'

    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/notes", content=chunks(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM_JSON
    assert app.state.received == []
