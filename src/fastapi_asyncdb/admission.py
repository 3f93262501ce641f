"""Admission control: may a unit of work start now? Decided before any connection is touched.

Two parts, both cheap on the hot path:

- ``Gate``: a FIFO limit equal to the pool's capacity. SQLAlchemy's async pool
  burns CPU when many tasks wait on it; waiting on an ``asyncio.Semaphore`` costs
  nothing, and the wait ends in ``DatabaseUnavailableError`` at the acquire timeout.
- ``Breaker``: once a new connection cannot be made, the database is taken as
  down; requests fail fast instead of each waiting out a connect timeout, while one
  background probe watches for the database to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from .errors import DatabaseUnavailableError

__all__ = ["Breaker", "Gate"]

logger = logging.getLogger("fastapi_asyncdb")


class Gate:
    """At most ``capacity`` units of work at once; the rest wait in arrival order.

    Every operation is O(1), however many wait: a freed slot goes straight to the
    oldest live waiter, and waiters that timed out or were cancelled are skipped when
    they reach the front. (``asyncio.Semaphore`` scans all its waiters on every
    acquire, which costs more than the pool it guards once hundreds queue.)
    """

    def __init__(self, capacity: int, *, timeout: float, retry_after: float) -> None:
        self.capacity = capacity
        self._timeout = timeout
        self._retry_after = retry_after
        self._free = capacity
        self._queue: deque[asyncio.Future[None]] = deque()
        self._waiting = 0

    @property
    def in_use(self) -> int:
        return self.capacity - self._free

    @property
    def waiting(self) -> int:
        return self._waiting

    async def enter(self) -> None:
        if self._free and not self._waiting:
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._queue.append(turn)
        self._waiting += 1
        deadline = loop.call_later(self._timeout, self._expire, turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self.leave()  # granted a slot just as we were cancelled: pass it on
            raise
        finally:
            self._waiting -= 1
            deadline.cancel()

    def _expire(self, turn: asyncio.Future[None]) -> None:
        if not turn.done():
            turn.set_exception(
                DatabaseUnavailableError(
                    f"no database connection became free within {self._timeout:g} s",
                    retry_after=self._retry_after,
                )
            )

    def leave(self) -> None:
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


class Breaker:
    """Fails fast while the database cannot be reached; a single probe closes it again."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        *,
        retry_after: float,
        probe_interval: float = 0.25,
    ) -> None:
        self._probe = probe
        self._retry_after = retry_after
        self._probe_interval = probe_interval
        self._probe_task: asyncio.Task[None] | None = None
        self.is_open = False

    def check(self) -> None:
        if self.is_open:
            raise DatabaseUnavailableError(
                "the database cannot be reached", retry_after=self._retry_after
            )

    def trip(self, cause: BaseException) -> None:
        """Open the breaker; safe to call from any code running on the event loop."""
        if self.is_open:
            return
        self.is_open = True
        # The type only: driver messages name hosts and users.
        logger.warning(
            "cannot connect to the database (%s); failing fast until a probe succeeds",
            type(cause).__name__,
        )
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while True:
            try:
                await self._probe()
            except Exception:
                await asyncio.sleep(self._probe_interval)
            else:
                self.is_open = False
                logger.warning("database reachable again")
                return

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        self.is_open = False
