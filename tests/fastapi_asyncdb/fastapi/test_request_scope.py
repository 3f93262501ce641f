"""RequestScope: what a request entered is exited when it is over, whatever happened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from fastapi_asyncdb import DatabaseNotStartedError
from fastapi_asyncdb.fastapi.problems import problem_response
from fastapi_asyncdb.fastapi.request_scope import RequestScope, enter_for_request


class Journal:
    def __init__(self) -> None:
        self.events: list[str] = []

    @asynccontextmanager
    async def resource(self, name: str) -> AsyncIterator[str]:
        self.events.append(f"enter {name}")
        try:
            yield name
        except BaseException as error:
            self.events.append(f"exit {name} with {type(error).__name__}")
            raise
        self.events.append(f"exit {name}")


def scoped(app: Any) -> RequestScope:
    return RequestScope(app, answer=lambda _error: problem_response(500))


async def call(app: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http"}, receive, send)
    return sent


async def test_entered_resources_exit_newest_first_before_the_last_of_the_body() -> None:
    journal = Journal()

    async def app(scope: Any, _receive: Any, send: Any) -> None:
        await enter_for_request(scope, journal.resource("a"))
        await enter_for_request(scope, journal.resource("b"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        journal.events.append("response sent")

    sent = await call(scoped(app))
    assert journal.events == ["enter a", "enter b", "exit b", "exit a", "response sent"]
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]


async def test_resources_stay_open_until_the_last_part_of_a_streamed_body() -> None:
    journal = Journal()

    async def app(scope: Any, _receive: Any, send: Any) -> None:
        await enter_for_request(scope, journal.resource("a"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"1", b"2"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            journal.events.append(f"sent {part.decode()}")
        await send({"type": "http.response.body", "body": b""})
        journal.events.append("response sent")

    await call(scoped(app))
    assert journal.events == ["enter a", "sent 1", "sent 2", "exit a", "response sent"]


async def test_resources_exit_with_the_request_error_which_still_propagates() -> None:
    journal = Journal()

    async def app(scope: Any, _receive: Any, _send: Any) -> None:
        await enter_for_request(scope, journal.resource("a"))
        raise LookupError("endpoint failed")

    with pytest.raises(LookupError, match="endpoint failed"):
        await call(scoped(app))
    assert journal.events == ["enter a", "exit a with LookupError"]


async def test_a_failing_exit_does_not_stop_the_other_exits_and_is_raised() -> None:
    journal = Journal()

    @asynccontextmanager
    async def broken() -> AsyncIterator[None]:
        yield
        raise RuntimeError("exit failed")

    async def app(scope: Any, _receive: Any, _send: Any) -> None:
        await enter_for_request(scope, journal.resource("a"))
        await enter_for_request(scope, broken())

    with pytest.raises(RuntimeError, match="exit failed"):
        await call(scoped(app))
    assert journal.events == ["enter a", "exit a"]


async def test_entering_without_the_middleware_explains_the_fix() -> None:
    journal = Journal()
    with pytest.raises(DatabaseNotStartedError, match=r"install\(app, db\)"):
        await enter_for_request({"type": "http"}, journal.resource("a"))
    assert journal.events == []
