"""The ledger as served in the worker tests: the real app, plus the serving worker's pid.

``uvicorn --factory tests.ledger.served_ledger:create_app`` (or gunicorn with
``'tests.ledger.served_ledger:create_app()'``) serves ``ledger.app.create_app()``
unchanged, with each response naming the worker process that answered it
(``X-Worker-Pid``), and log lines that carry the process id and Alembic's progress.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.app import create_app as create_ledger

WORKER_HEADER = "x-worker-pid"


class NameTheWorker:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pid = str(os.getpid()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-worker-pid", self.pid)]
            await send(message)

        await self.app(scope, receive, named)


def create_app() -> FastAPI:
    logging.basicConfig(
        level=logging.INFO, format="%(process)d %(levelname)s [%(name)s] %(message)s"
    )
    app = create_ledger()
    app.add_middleware(NameTheWorker)
    return app
