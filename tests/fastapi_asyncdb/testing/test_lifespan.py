"""``Lifespan``: an app's startup and shutdown run once, through the ASGI protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI, Request

from fastapi_asyncdb.testing import Lifespan, LifespanError


def app_with(events: list[str], *, fail_at: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, list[str]]]:
        events.append("startup")
        if fail_at == "startup":
            raise LookupError("no configuration")
        yield {"events": events}
        events.append("shutdown")
        if fail_at == "shutdown":
            raise LookupError("cannot flush")

    app = FastAPI(lifespan=lifespan)

    @app.get("/events")
    async def read(request: Request) -> list[str]:
        return list(request.state.events)

    return app


async def test_startup_runs_once_and_its_state_reaches_every_request() -> None:
    events: list[str] = []
    lifespan = Lifespan(app_with(events))
    await lifespan.startup()
    transport = httpx.ASGITransport(app=lifespan.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for _ in range(2):
            assert (await client.get("/events")).json() == ["startup"]
    await lifespan.shutdown()
    assert events == ["startup", "shutdown"]


async def test_a_failing_startup_raises_with_the_apps_exception_as_cause() -> None:
    lifespan = Lifespan(app_with([], fail_at="startup"))
    with pytest.raises(LifespanError, match="startup failed") as raised:
        await lifespan.startup()
    assert isinstance(raised.value.__cause__, LookupError)


async def test_a_failing_shutdown_raises_too() -> None:
    lifespan = Lifespan(app_with([], fail_at="shutdown"))
    await lifespan.startup()
    with pytest.raises(LifespanError, match="shutdown failed"):
        await lifespan.shutdown()
