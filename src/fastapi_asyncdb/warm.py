"""Read connections kept warm between units of work, instead of going back to the pool.

Under load, a SQLAlchemy pool checkout plus checkin costs about 100 us of CPU per unit
of work (the greenlet hop, the connection fairy, pool events, the queue): as much as
the query itself. A connection of the read engine carries nothing from one unit of
work to the next (autocommit, read-only, no reset on return), so it can go straight
to the next one. ``WarmConnections`` keeps such connections checked out, newest
first, and hands them over directly, the way HikariCP's pool does. The gate still
bounds how many are in use; SQLAlchemy's pool still makes, recycles and disposes
them.

What the pool would have checked at checkout is checked here instead: a connection
idle for ``ping_after_idle`` seconds is pinged first, one older than ``recycle``
seconds goes back to the pool, which replaces it, and one that was invalidated
(lost, cancelled mid-statement) or whose execution options were changed is closed
rather than handed on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .engine import BORN_KEY

__all__ = ["WarmConnections"]

logger = logging.getLogger("fastapi_asyncdb")

Ping = Callable[[Any], None]


class _Warm:
    __slots__ = ("born", "connection", "idle_since", "options")

    def __init__(self, connection: AsyncConnection, born: float) -> None:
        self.connection = connection
        self.born = born
        self.idle_since = time.monotonic()
        # Execution options are set on the connection in place; a connection whose
        # options a unit of work changed must not carry them to the next one.
        self.options = _execution_options(connection)


class WarmConnections:
    """A stack of idle, checked-out connections of one autocommit engine.

    At most ``keep`` (the pool size) stay open while idle; the rest are the pool's
    overflow and are closed, as the pool would have closed them.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ping: Ping | None,
        ping_after_idle: float,
        recycle: float | None,
        keep: int,
    ) -> None:
        self._engine = engine
        self._keep = keep
        self._ping = ping
        self._ping_after_idle = ping_after_idle
        self._recycle = recycle
        self._idle: list[_Warm] = []
        self._lent: dict[int, _Warm] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def take(self) -> AsyncConnection:
        """A connection for one unit of work; give it back with ``give_back``."""
        while self._idle:
            warm = self._idle.pop()
            if self._recycle is not None and time.time() - warm.born > self._recycle:
                await self._close(warm.connection)  # the pool replaces it at the next checkout
                continue
            if (
                self._ping is not None
                and time.monotonic() - warm.idle_since >= self._ping_after_idle
                and not await self._alive(warm.connection)
            ):
                continue
            self._lent[id(warm.connection)] = warm
            return warm.connection
        connection = await self._engine.connect()
        self._lent[id(connection)] = _Warm(connection, _born(connection))
        return connection

    async def give_back(self, connection: AsyncConnection) -> None:
        warm = self._lent.pop(id(connection))
        sync_connection = connection.sync_connection
        if (
            self._closed
            or sync_connection is None
            or connection.invalidated
            or _execution_options(connection) is not warm.options
        ):
            await self._close(connection)
            return
        if len(self._idle) >= self._keep:
            # Overflow: really close it. Closed the usual way it would wait in the pool's
            # queue, and more than ``keep`` connections would stay open while idle; the
            # pool keeps its slot and opens a new connection there when one is needed.
            sync_connection.detach()
            await self._close(connection)
            return
        if sync_connection.in_transaction():
            # The autobegun transaction of an autocommit connection. Ending it sends
            # nothing (skip_autocommit_rollback on the read engine), so it needs no
            # greenlet and cannot be interrupted; a driver that did need I/O here
            # would raise, and its connection is closed instead.
            try:
                sync_connection.rollback()
            except Exception:
                await self._close(connection)
                return
        warm.idle_since = time.monotonic()
        self._idle.append(warm)

    async def close(self) -> None:
        """Close the idle connections; those still lent are closed when given back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for warm in idle:
            await self._close(warm.connection)
        if self._closing:
            await asyncio.wait(self._closing)

    async def _alive(self, connection: AsyncConnection) -> bool:
        ping = self._ping
        assert ping is not None
        try:
            await connection.run_sync(_ping_dbapi_connection, ping)
        except BaseException as error:
            if isinstance(error, Exception):
                logger.info("discarding a stale read connection (%s)", type(error).__name__)
            await self._close(connection, invalidate=True)
            if not isinstance(error, Exception):
                raise
            return False
        return True

    async def _close(self, connection: AsyncConnection, *, invalidate: bool = False) -> None:
        """Return ``connection`` to the pool, even if the caller is cancelled meanwhile."""

        async def close() -> None:
            if invalidate:
                await connection.invalidate()
            await connection.close()

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        await asyncio.shield(task)


def _born(connection: AsyncConnection) -> float:
    """When the driver connection was made (stamped by the engine's connect event)."""
    sync_connection = connection.sync_connection
    assert sync_connection is not None
    info = sync_connection.connection.record_info
    born = None if info is None else info.get(BORN_KEY)
    return time.time() if born is None else float(born)


def _execution_options(connection: AsyncConnection) -> object:
    sync_connection = connection.sync_connection
    return None if sync_connection is None else sync_connection.get_execution_options()


def _ping_dbapi_connection(connection: Connection, ping: Ping) -> None:
    ping(connection.connection.dbapi_connection)
