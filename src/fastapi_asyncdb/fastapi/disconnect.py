"""Cancel a request's work when its client goes away.

uvicorn cancels a streaming body whose client left, but not a plain endpoint: a
request blocked on a row lock or a slow query keeps its connection and keeps the
server busy for nobody until the statement timeout. This ASGI middleware watches
for ``http.disconnect`` once the request body has been read and cancels the
request task; the cancelled unit of work rolls back, its connection is discarded,
and PostgreSQL stops the query at its next ``client_connection_check_interval``.

Watching costs a task per request: about a sixth of a simple read's CPU when measured
alone, and under overload, when every request waits in the gate, it raised the CPU per
request by about half (``/db`` at 256 connections). So only a request still running
after ``watch_after`` seconds (default 0.5) is watched. The short ones, nearly all of
them, finish before anyone could tell that their client left, and a request whose
client leaves stops within ``watch_after`` of starting, or at once if it runs longer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CancelOnDisconnect"]

_DISCONNECT: Message = {"type": "http.disconnect"}


class CancelOnDisconnect:
    """ASGI middleware: a client that disconnects before its response ends cancels the request.

    Work after the response (background tasks) is never cancelled.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        watch_after: float = 0.5,
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.watch_after = watch_after
        self.on_cancel = on_cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None:
            await self.app(scope, receive, send)
            return
        watch = _Watch(receive, send, task, body_read=not _has_body(scope))
        timer = asyncio.get_running_loop().call_later(self.watch_after, watch.arm)
        try:
            await self.app(scope, watch.receive, watch.send)
        except asyncio.CancelledError:
            if not watch.cancelled_request or task.uncancel() > 0:
                raise
            # Our own cancellation, for a client that is gone: there is nobody to answer.
        finally:
            timer.cancel()
            watch.stop()
            if watch.cancelled_request and self.on_cancel is not None:
                self.on_cancel()


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


class _Watch:
    """Owns ``receive`` once the body is read, and cancels the request on a disconnect."""

    def __init__(
        self, receive: Receive, send: Send, task: asyncio.Task[Any], *, body_read: bool
    ) -> None:
        self._receive = receive
        self._send = send
        self._task = task
        self._watcher: asyncio.Task[None] | None = None
        self._body_read = body_read
        self._armed = False
        # Messages the watcher read on the app's behalf (a body-less request's empty body,
        # then the disconnect), handed over when the app asks.
        self._messages: asyncio.Queue[Message] | None = None
        self._response_done = False
        self._disconnected = False
        self.cancelled_request = False

    def arm(self) -> None:
        """The request has run long enough to be worth watching."""
        self._armed = True
        if self._body_read and self._watcher is None and not self._response_done:
            self._messages = asyncio.Queue()
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        if self.cancelled_request and self._task.cancelling():
            # The app finished without seeing our cancellation; leave the task as it was.
            self._task.uncancel()

    async def _watch(self) -> None:
        assert self._messages is not None
        message = await self._receive()
        if message["type"] != "http.disconnect":
            # A body-less request's empty body, read on the app's behalf. After it, the
            # ASGI server answers only when the client leaves or the response is done.
            self._messages.put_nowait(message)
            message = await self._receive()
        self._messages.put_nowait(message)
        if message["type"] == "http.disconnect" and not self._response_done:
            self.cancelled_request = True
            self._task.cancel()

    async def receive(self) -> Message:
        if self._disconnected:
            return _DISCONNECT
        if self._messages is None:
            message = await self._receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                self._body_read = True
                if self._armed:
                    self.arm()
            return message
        message = await self._messages.get()
        self._disconnected = message["type"] == "http.disconnect"
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._response_done = True
        await self._send(message)
