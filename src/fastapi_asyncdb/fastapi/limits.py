"""A bound on request bodies: 413 before an oversized body is read, parsed or echoed."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem_response

__all__ = ["BodyLimit"]


# How much of a refused body is read and dropped before answering.
_DRAIN_LIMIT = 8 * 1024 * 1024


class _BodyTooLargeError(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body over ``max_body_size`` bytes is answered 413.

    A declared ``Content-Length`` over the limit is refused before anything is read; a
    chunked body is counted as it arrives and refused when it crosses the limit.
    """

    def __init__(self, app: ASGIApp, *, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_body_size:
                    if value.isdigit() and int(value) <= self.max_body_size + _DRAIN_LIMIT:
                        await _drain(receive, limit=_DRAIN_LIMIT)
                    await self._refuse(scope, receive, send)
                    return
                break
        received = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_size and not refused:
                    refused = True
                    if not started:
                        # Answered here and now: the app sees only an error from its
                        # receive, which frameworks turn into answers of their own (a
                        # 400 in FastAPI's body parsing); those are dropped below.
                        # Read (and drop) a bounded rest of the body first, so that a
                        # client still sending reads the answer, not a reset connection.
                        await _drain(receive, limit=_DRAIN_LIMIT)
                        await self._refuse(scope, receive, send)
                    raise _BodyTooLargeError
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return  # our 413 was the answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _BodyTooLargeError:
            if started:
                raise

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413, detail=f"the request body is larger than {self.max_body_size} bytes"
        )
        # The rest of the body may still be coming; the connection is not reusable.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


async def _drain(receive: Receive, *, limit: int) -> None:
    drained = 0
    while drained <= limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        drained += len(message.get("body", b""))
