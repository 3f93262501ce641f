"""A startup refused for its configuration reports the message alone to the server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.types import Message

from fastapi_asyncdb import Database, install

pytestmark = pytest.mark.usefixtures("clean_environment")


async def run_startup(app: FastAPI) -> list[Message]:
    """Drive the ASGI lifespan as a server does, up to the end of startup."""
    sent: list[Message] = []
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    # A server logs what the startup.failed event says, not the exception raised after it.
    with contextlib.suppress(Exception):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


@pytest.mark.backends("postgresql", "mysql")
async def test_a_refused_budget_reaches_the_server_as_one_line_without_a_traceback(
    database_url: str,
) -> None:
    database = Database(url=database_url, workers=400)
    app = FastAPI(lifespan=database.lifespan)
    install(app, database)
    (failed,) = [m for m in await run_startup(app) if m["type"] == "lifespan.startup.failed"]
    assert failed["message"].startswith("ConfigurationError: more connections than")
    assert "400 workers x" in failed["message"]
    assert "Traceback" not in failed["message"]
    assert not database.is_started


async def test_any_other_startup_failure_keeps_its_traceback(database_url: str) -> None:
    database = Database(url=database_url)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with database.lifespan(app):
            raise RuntimeError("the app's own startup failed")
            yield

    app = FastAPI(lifespan=lifespan)
    install(app, database)
    (failed,) = [m for m in await run_startup(app) if m["type"] == "lifespan.startup.failed"]
    assert failed["message"].startswith("Traceback")
    assert "RuntimeError: the app's own startup failed" in failed["message"]


async def test_a_started_app_reports_a_normal_startup(database_url: str) -> None:
    database = Database(url=database_url)
    app = FastAPI(lifespan=database.lifespan)
    install(app, database)
    types = [message["type"] for message in await run_startup(app)]
    assert types == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
