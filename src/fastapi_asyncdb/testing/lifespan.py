"""Run an ASGI app's lifespan once, as a server would, and serve requests with its state.

``httpx.ASGITransport`` sends requests only; the app's startup and shutdown (and so
``FastAPI(lifespan=db.lifespan)``, or a lifespan of the app's own that enters
``db.lifespan(app)`` and does more) run here, through the ASGI lifespan protocol: any
middleware and any lifespan shape work. The state a lifespan yields reaches each
request as ``request.state``, a shallow copy per request, as servers give it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Lifespan", "LifespanError"]


class LifespanError(RuntimeError):
    """The app's startup or shutdown failed."""


class Lifespan:
    """Starts ``app`` (``await startup()``), serves it (``asgi``), shuts it down."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self.state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        await self._to_app.put({"type": "lifespan.startup"})
        await self._expect("lifespan.startup.complete", "startup")

    async def _run(self, scope: Scope) -> None:
        await self._app(scope, self._to_app.get, self._from_app.put)

    async def shutdown(self) -> None:
        if self._task is None:
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        try:
            await self._expect("lifespan.shutdown.complete", "shutdown")
        finally:
            task, self._task = self._task, None
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with the lifespan's state in every request's scope."""
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(self.state)}
        await self._app(scope, receive, send)

    async def _expect(self, kind: str, phase: str) -> None:
        task = self._task
        assert task is not None
        message = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({message, task}, return_when=asyncio.FIRST_COMPLETED)
        if not message.done():
            message.cancel()
            raise LifespanError(f"the app's lifespan ended during {phase}") from _error_of(task)
        answer = message.result()
        if answer["type"] != kind:
            detail = answer.get("message") or answer["type"]
            # Starlette re-raises the lifespan's exception after reporting it.
            await asyncio.wait({task}, timeout=1)
            raise LifespanError(f"the app's {phase} failed: {detail}") from _error_of(task)


def _error_of(task: asyncio.Task[None]) -> BaseException | None:
    if not task.done() or task.cancelled():
        return None
    return task.exception()
