"""Is the database there? Asked on connections of the probe's own, never the pools'.

Readiness must not need a pool slot (a saturated pool would read as "down") nor a
writer's lock (on SQLite a long write would), and the breaker's probe must make a new
connection, since a failed connect is what tripped it. So the probe has an engine of
its own: read-only, autocommit, without a pool. ``ping`` keeps one connection for
readiness checks; ``connect`` makes and closes a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .backends import Backend
from .engine import create_engine
from .settings import DatabaseSettings

__all__ = ["Probe"]

T = TypeVar("T")


class Probe:
    """Pings the database within ``health_timeout``; one extra server connection at most."""

    def __init__(self, settings: DatabaseSettings, backend: Backend) -> None:
        self._backend = backend
        self._timeout = settings.health_timeout
        # Changing nothing on the server's session: the start checks run here first, and
        # behind a transaction pooler that session is the next client's.
        self._engine, _ = create_engine(
            settings.model_copy(update={"pool_class": "NullPool"}),
            backend,
            read_only=True,
            set_session=False,
        )
        self._connection: AsyncConnection | None = None
        self._pinging: asyncio.Task[bool] | None = None

    async def ping(self) -> bool:
        """Whether the database answers within ``health_timeout``.

        Callers at the same moment share one ping, so a hundred readiness checks against
        a silent database all answer within the one timeout.
        """
        task = self._pinging
        if task is None or task.done():
            task = self._pinging = asyncio.get_running_loop().create_task(self._ping_once())
        # Shielded: a caller that gives up does not cancel the others' ping.
        return await asyncio.shield(task)

    async def _ping_once(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                if self._connection is not None:
                    # Kept since the last ping; after a restart it fails once, and a
                    # fresh connection decides, within the same time.
                    if await self._ping_on(self._connection):
                        return True
                    await self._discard()
                self._connection = await self._engine.connect()
                return await self._ping_on(self._connection)
        except Exception:
            await self._discard()
            return False

    async def connect(self) -> None:
        """Make a new connection and ping it; raise if either fails."""
        async with asyncio.timeout(self._timeout), self._engine.connect() as connection:
            await connection.run_sync(self._ping)

    async def read(self, reading: Callable[[Connection], T]) -> T:
        """Run ``reading`` on a new connection, within ``health_timeout``; raise if it fails."""
        async with asyncio.timeout(self._timeout), self._engine.connect() as connection:
            return await connection.run_sync(reading)

    async def close(self) -> None:
        task = self._pinging
        if task is not None and not task.done():
            await asyncio.wait((task,))
        await self._discard()
        await self._engine.dispose()

    async def _ping_on(self, connection: AsyncConnection) -> bool:
        try:
            await connection.run_sync(self._ping)
        except Exception:
            return False
        return True

    def _ping(self, connection: Connection) -> None:
        self._backend.ping(
            connection.dialect, connection.connection.dbapi_connection, timeout=self._timeout
        )

    async def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()
