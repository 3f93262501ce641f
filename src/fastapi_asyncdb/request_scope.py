"""Context managers that close when the ASGI request ends, entered without a yield dependency.

A FastAPI dependency with ``yield`` costs about 90 us of CPU per request (its exit
stack and context manager), a fifth of a simple read. Read sessions and connections
have nothing to do before the response, so their dependencies are plain functions
that enter the context manager and leave its exit to ``CloseWithRequest``. It runs the
exits just before the last piece of the response body goes out: the endpoint and any
streaming body are done with them by then, and a slow client reading a large body
holds no connection. On an error or a cancellation, they run as it propagates.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from .errors import DatabaseNotStartedError

__all__ = ["CloseWithRequest", "enter_for_request"]

T = TypeVar("T")
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

_OPEN = "fastapi_asyncdb.open"


class CloseWithRequest:
    """ASGI middleware: exits, newest first, what ``enter_for_request`` entered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        opened: list[AbstractAsyncContextManager[Any]] = []
        scope[_OPEN] = opened

        async def send_after_closing(message: MutableMapping[str, Any]) -> None:
            if (
                opened
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                await _exit_all(opened, None, None, None)
            await send(message)

        try:
            await self.app(scope, receive, send_after_closing if scope["type"] == "http" else send)
        except BaseException:
            await _exit_all(opened, *sys.exc_info())
            raise
        await _exit_all(opened, None, None, None)


async def _exit_all(opened: list[AbstractAsyncContextManager[Any]], *exc_info: Any) -> None:
    # Every exit runs even if one fails; the first failure is raised after them all.
    failure: BaseException | None = None
    while opened:
        try:
            await opened.pop().__aexit__(*exc_info)
        except BaseException as error:
            failure = failure or error
    if failure is not None and failure is not exc_info[1]:
        raise failure


async def enter_for_request(scope: Scope, context: AbstractAsyncContextManager[T]) -> T:
    """Enter ``context`` now; ``CloseWithRequest`` exits it when the request ends."""
    opened: list[AbstractAsyncContextManager[Any]] | None = scope.get(_OPEN)
    if opened is None:
        raise DatabaseNotStartedError(
            "this app has no fastapi_asyncdb middleware: call db.install(app) after creating it"
        )
    value = await context.__aenter__()
    opened.append(context)
    return value
