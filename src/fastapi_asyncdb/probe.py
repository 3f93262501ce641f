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

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .backends import Backend
from .engine import create_engine
from .settings import DatabaseSettings

__all__ = ["Probe"]


class Probe:
    """Pings the database within ``health_timeout``; one extra server connection at most."""

    def __init__(self, settings: DatabaseSettings, backend: Backend) -> None:
        self._backend = backend
        self._timeout = settings.health_timeout
        self._engine, _ = create_engine(
            settings.model_copy(update={"pool_class": "NullPool"}), backend, read_only=True
        )
        self._connection: AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def ping(self) -> bool:
        """Whether the database answers; concurrent callers share one ping."""
        async with self._lock:
            if self._connection is not None:
                # Kept since the last ping; after a restart it fails once, and a fresh
                # connection decides.
                if await self._ping_within_timeout(self._connection):
                    return True
                await self._discard()
            try:
                async with asyncio.timeout(self._timeout):
                    self._connection = await self._engine.connect()
            except Exception:
                return False
            return await self._ping_within_timeout(self._connection)

    async def connect(self) -> None:
        """Make a new connection and ping it; raise if either fails."""
        async with asyncio.timeout(self._timeout), self._engine.connect() as connection:
            await connection.run_sync(self._ping)

    async def close(self) -> None:
        async with self._lock:
            await self._discard()
        await self._engine.dispose()

    async def _ping_within_timeout(self, connection: AsyncConnection) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
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
