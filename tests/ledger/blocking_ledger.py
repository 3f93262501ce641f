"""The ledger app driven from synchronous code, for Hypothesis, which calls rules synchronously.

``BlockingLedger`` owns an event loop of its own: the app's lifespan (migrations, the
pools) and every request run on it, so the database's connections never cross loops.
``OnLoop`` sends a client's requests on the loop the client's app already lives on
(the plugin's session loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import httpx

from fastapi_asyncdb import Database
from ledger.app import create_app
from tests.ledger.ledger_api import LedgerApi

T = TypeVar("T")


async def _wait(awaitable: Awaitable[T]) -> T:
    return await awaitable


class SendsRequests(Protocol):
    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response: ...


class OnLoop:
    """``client``'s requests, each sent on ``loop`` from synchronous code (no loop running)."""

    def __init__(self, client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client, self._loop = client, loop

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._loop.run_until_complete(self._client.request(method, url, **kwargs))


class BlockingLedger:
    def __init__(self, database: Database) -> None:
        self._database = database
        # loop_factory: leave the thread's current event loop (pytest-asyncio's) alone.
        self._runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        self._stack = AsyncExitStack()
        self._api: LedgerApi | None = None

    @property
    def api(self) -> LedgerApi:
        assert self._api is not None, "use BlockingLedger in a with block"
        return self._api

    def __enter__(self) -> Self:
        app = create_app(self._database, migrate_on_startup=True)
        self.run(self._stack.enter_async_context(app.router.lifespan_context(app)))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ledger")
        self._api = LedgerApi(self.run(self._stack.enter_async_context(client)))
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        try:
            self.run(self._stack.aclose())
        finally:
            self._runner.close()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Wait for ``awaitable`` on the ledger's loop."""
        return self._runner.run(_wait(awaitable))

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.run(self.api.client.request(method, url, **kwargs))

    def concurrently(self, *awaitables: Awaitable[T]) -> list[T]:
        """Run ``awaitables`` at the same time, their results in their order."""

        async def together() -> list[T]:
            # gather() belongs to the loop it is called on: call it on the ledger's.
            return list(await asyncio.gather(*awaitables))

        return self._runner.run(together())
