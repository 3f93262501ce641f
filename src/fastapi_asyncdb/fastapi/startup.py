"""A startup refused for its configuration says why in one line, without a traceback.

Starlette reports a failed startup with the formatted traceback, which the server
(uvicorn, gunicorn's uvicorn workers) logs whole. For a ``ConfigurationError`` the
frames say nothing its message does not: the message says what to change. So the
lifespan notes the refusal, and this middleware puts the message alone in the
``lifespan.startup.failed`` event. Any other failure keeps its traceback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigurationError

__all__ = ["StartupRefusal", "noting_refusals"]

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


class StartupRefusal:
    """ASGI middleware: the noted ``ConfigurationError``, in place of the traceback."""

    def __init__(self, app: ASGIApp, *, refusals: list[ConfigurationError]) -> None:
        self.app = app
        self.refusals = refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_refusal(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.refusals:
                error = self.refusals[-1]
                message = {**message, "message": f"{type(error).__name__}: {error}"}
            await send(message)

        await self.app(scope, receive, send_refusal)


def noting_refusals(lifespan: Lifespan, refusals: list[ConfigurationError]) -> Lifespan:
    """``lifespan``, noting in ``refusals`` a ``ConfigurationError`` raised at startup."""

    @asynccontextmanager
    async def noted(app: Any) -> AsyncIterator[Any]:
        refusals.clear()
        started = False
        try:
            async with lifespan(app) as state:
                started = True
                yield state
        except ConfigurationError as error:
            if not started:
                refusals.append(error)
            raise

    return noted
