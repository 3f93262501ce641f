"""Where a unit of work gets its connection, and where it gives it back.

Every unit of work takes its connection from its role's ``ConnectionSource`` and gives
it back there, so what is lent and what is idle is counted in one place, by
construction. Two sources:

- ``PooledConnections``: SQLAlchemy's pool, as is. The primary role's connections carry
  a transaction's state, which the pool resets on return.
- ``WarmConnections``: read connections kept checked out between units of work and
  handed straight to the next one. Under load, a pool checkout plus checkin costs about
  as much CPU as the query itself (the greenlet hop, the connection fairy, pool events,
  the queue); a connection of the read engine carries nothing from one unit of work to
  the next (autocommit, read-only, no reset on return), so it can skip all that, as
  HikariCP's pool does. What the pool would check at checkout, ``ConnectionHealth``
  checks here with the same rules.

A source must be safe to cancel: a connection taken is always given back or closed,
even when the task is cancelled in between.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool

from . import _compat
from .connection_health import ConnectionHealth, StaleConnectionError
from .errors import SharedConnectionTimeoutError

__all__ = ["ConnectionSource", "PooledConnections", "SharedConnection", "WarmConnections"]

logger = logging.getLogger(__name__)


class ConnectionSource(Protocol):
    """Hands out the connections of one role and counts them."""

    @property
    def lent(self) -> int:
        """Connections taken and not yet given back."""

    @property
    def idle(self) -> int:
        """Connections open and ready for the next unit of work."""

    async def take(self) -> AsyncConnection: ...

    async def give_back(self, connection: AsyncConnection) -> None: ...

    async def close(self) -> None:
        """Close the idle connections; those still lent are closed when given back."""


class PooledConnections:
    """SQLAlchemy's pool: a checkout per unit of work, returned (and reset) after it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._lent = 0

    @property
    def lent(self) -> int:
        return self._lent

    @property
    def idle(self) -> int:
        return _pooled_idle(self._engine)

    async def take(self) -> AsyncConnection:
        connection = await self._engine.connect()
        self._lent += 1
        return connection

    async def give_back(self, connection: AsyncConnection) -> None:
        self._lent -= 1
        # Cancelled midway, SQLAlchemy invalidates the connection: nothing leaks.
        await connection.close()

    async def close(self) -> None:
        pass  # the engine's dispose closes the pool's idle connections


class _Warm:
    __slots__ = ("connection", "options")

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        # Execution options are set on the connection in place; a connection whose
        # options a unit of work changed must not carry them to the next one.
        self.options = _execution_options(connection)


class WarmConnections:
    """A stack of idle, checked-out connections of one autocommit engine, newest first.

    At most ``keep`` (the pool size) stay open while idle; the rest are the pool's
    overflow and are closed, as the pool would have closed them.
    """

    def __init__(self, engine: AsyncEngine, *, health: ConnectionHealth, keep: int) -> None:
        self._engine = engine
        self._health = health
        self._keep = keep
        self._idle: list[_Warm] = []
        self._lent: dict[int, _Warm] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def lent(self) -> int:
        return len(self._lent)

    @property
    def idle(self) -> int:
        # Exact: a read connection that is not kept warm is closed outright, never left
        # idle in the pool.
        return len(self._idle)

    async def take(self) -> AsyncConnection:
        while self._idle:
            warm = self._idle.pop()
            connection = warm.connection
            if self._health.needs_check(_connection_info(connection)) and not await self._passes(
                connection
            ):
                continue
            self._lent[id(connection)] = warm
            return connection
        # A new checkout: the pool's checkout event applies the same health rules.
        connection = await self._engine.connect()
        sync_connection = connection.sync_connection
        assert sync_connection is not None
        # Autocommit: a SQLAlchemy transaction begun at the first statement would send
        # nothing and guard nothing, yet cost CPU to begin and end. begin() still works.
        _compat.without_autobegin(sync_connection)
        self._lent[id(connection)] = _Warm(connection)
        return connection

    async def give_back(self, connection: AsyncConnection) -> None:
        warm = self._lent.pop(id(connection))
        sync_connection = connection.sync_connection
        if (
            self._closed
            or sync_connection is None
            or connection.invalidated
            or _execution_options(connection) is not warm.options
            # Overflow: more than ``keep`` would stay open while idle.
            or len(self._idle) >= self._keep
        ):
            await self._discard(connection)
            return
        if sync_connection.in_transaction():
            # The autobegun transaction of an autocommit connection. Ending it sends
            # nothing (skip_autocommit_rollback on the read engine), so it needs no
            # greenlet and cannot be interrupted; a driver that did need I/O here
            # would raise, and its connection is closed instead.
            try:
                sync_connection.rollback()
            except Exception:
                await self._discard(connection)
                return
        self._health.mark_idle(_connection_info(connection))
        self._idle.append(warm)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for warm in idle:
            await self._discard(warm.connection)
        if self._closing:
            await asyncio.wait(self._closing)

    async def _discard(self, connection: AsyncConnection, *, invalidate: bool = False) -> None:
        """Close the driver connection itself; its pool slot opens a new one when needed.

        Returned to the pool instead, it would wait there idle: more than ``keep``
        connections would stay open, and none of them would be counted.
        """
        sync_connection = connection.sync_connection
        if not invalidate and sync_connection is not None and not connection.invalidated:
            sync_connection.detach()
        await _close(connection, self._closing, invalidate=invalidate)

    async def _passes(self, connection: AsyncConnection) -> bool:
        """Apply the health check; a connection that fails it is discarded."""
        try:
            await connection.run_sync(_check, self._health)
        except BaseException as error:
            if isinstance(error, StaleConnectionError):
                logger.info("replacing a read connection: %s", error)
            await self._discard(connection, invalidate=True)
            if not isinstance(error, StaleConnectionError):
                raise
            return False
        return True


SHARED_TIMEOUT = (
    "a unit of work waited {:g} s (DB_POOL_TIMEOUT) for the test's one shared "
    "connection, held by another task: under test isolation (the pytest plugin, "
    "Database.isolated()) every unit of work shares one connection, so work started in "
    "a task of its own (asyncio.gather(db.run_statement(...)), create_task) while the "
    "request's unit of work is open waits for it, and here it would wait forever; in "
    "production each has its own connection. Under the plugin, run that work after the "
    "request's unit of work ends, or test this path on a Database that is not isolated "
    "(docs/testing.md, Known limits)"
)


class SharedConnection:
    """One connection for every unit of work of every role: test isolation.

    The connection is in a transaction that its owner rolls back at the end; units of
    work run in savepoints on it. One task uses it at a time (a unit of work and the
    reads nested in it share it); other tasks wait their turn, in order.
    """

    def __init__(self, connection: AsyncConnection, *, timeout: float) -> None:
        self._connection = connection
        self._timeout = timeout
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0
        self._turns: list[asyncio.Future[None]] = []
        self.timed_out: SharedConnectionTimeoutError | None = None
        """The first wait that timed out, for the owner to raise at the end too."""

    @property
    def lent(self) -> int:
        return 1 if self._depth else 0

    @property
    def idle(self) -> int:
        return 0 if self._depth else 1

    async def take(self) -> AsyncConnection:
        task = asyncio.current_task()
        while self._depth and self._owner is not task:
            turn = asyncio.get_running_loop().create_future()
            self._turns.append(turn)
            try:
                async with asyncio.timeout(self._timeout):
                    await turn
            except TimeoutError:
                # Bounded: the holder may be waiting for this very task (a gather in a
                # request), and would wait forever.
                error = SharedConnectionTimeoutError(SHARED_TIMEOUT.format(self._timeout))
                self.timed_out = self.timed_out or error
                raise error from None
            finally:
                if turn in self._turns:
                    self._turns.remove(turn)
        self._owner = task
        self._depth += 1
        return self._connection

    async def give_back(self, connection: AsyncConnection) -> None:
        self._depth -= 1
        if self._depth:
            return
        self._owner = None
        if self._turns:
            turn = self._turns.pop(0)
            if not turn.done():
                turn.set_result(None)

    async def close(self) -> None:
        pass  # the owner of the connection closes it


async def _close(
    connection: AsyncConnection, closing: set[asyncio.Task[None]], *, invalidate: bool = False
) -> None:
    """Return ``connection`` to the pool, even if the caller is cancelled meanwhile.

    The close runs as a task of its own, held in ``closing`` until it is done.
    """

    async def close() -> None:
        if invalidate:
            await connection.invalidate()
        await connection.close()

    task = asyncio.get_running_loop().create_task(close())
    closing.add(task)
    task.add_done_callback(closing.discard)
    await asyncio.shield(task)


def _check(connection: Connection, health: ConnectionHealth) -> None:
    pooled = connection.connection
    health.check(pooled.dbapi_connection, pooled.info)


def _connection_info(connection: AsyncConnection) -> dict[Any, Any]:
    sync_connection = connection.sync_connection
    assert sync_connection is not None
    # The DBAPI connection's own info: what the pool's events stamp.
    return sync_connection.connection.info


def _execution_options(connection: AsyncConnection) -> object:
    sync_connection = connection.sync_connection
    return None if sync_connection is None else sync_connection.get_execution_options()


def _pooled_idle(engine: AsyncEngine) -> int:
    pool = engine.pool
    return pool.checkedin() if isinstance(pool, QueuePool) else 0
