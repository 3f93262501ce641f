"""Each request's id, for the log lines of its statements: the ``X-Request-ID`` the
client or a proxy sent when it is a plausible id, a new one otherwise. It is held in
the core's context variable (``fastapi_asyncdb.request_id``) while the request runs,
and sent back in the response's ``X-Request-ID``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..request_id import HEADER, current_request_id, request_id_from_header

__all__ = ["RequestId"]

_HEADER = HEADER.encode("latin-1")


class RequestId:
    """ASGI middleware: sets the request id for the request and answers with it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                # Whitespace around a field value is not part of it (RFC 9110, 5.5);
                # not every server strips it before the app sees it.
                sent = value.decode("latin-1").strip(" \t")
                break
        request_id = request_id_from_header(sent)
        encoded = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                message["headers"] = [*headers, (_HEADER, encoded)]
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
