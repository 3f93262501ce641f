"""``Database``: the engines' lifetime and the units of work, with no web framework in sight."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import UpdateBase
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import QueuePool

from . import drivers
from .admission import Breaker, Gate
from .engine import create_engine, make_ping
from .errors import DatabaseNotStartedError
from .prepared import run_statement
from .retry import Retry, run_with_retries
from .settings import DatabaseSettings
from .warm import WarmConnections

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["Database"]

logger = logging.getLogger("fastapi_asyncdb")

T = TypeVar("T")


class _Role:
    """One engine with its sessionmaker and admission control: the primary, or the reader.

    Read replicas later become more readers; nothing else has to change.
    """

    def __init__(self, settings: DatabaseSettings, *, read_only: bool) -> None:
        self.name = "read" if read_only else "primary"
        self.breaker = Breaker(self.ping, retry_after=settings.unavailable_retry_after)
        self.engine = create_engine(
            settings, read_only=read_only, on_connect_failure=self.breaker.trip
        )
        self.sessionmaker = async_sessionmaker(
            self.engine,
            # Objects stay readable after commit: no lazy load (MissingGreenlet) in the
            # response model.
            expire_on_commit=False,
            # A session used after its request ended raises instead of quietly
            # checking out a connection that nobody returns.
            close_resets_only=False,
        )
        if read_only:
            capacity = settings.effective_read_pool_size + settings.effective_read_max_overflow
        elif settings.backend == "sqlite":
            # SQLite has one writer at a time: queue writers here, in order and at no
            # cost, rather than in SQLite's busy loop, which ends in "database is locked".
            capacity = 1
        else:
            capacity = settings.pool_size + settings.max_overflow
        self.gate = Gate(
            capacity, timeout=settings.pool_timeout, retry_after=settings.unavailable_retry_after
        )
        # Only read connections stay warm: they carry no transaction between units of
        # work. (A pool that is not a QueuePool makes a connection per checkout anyway.)
        self.warm: WarmConnections | None = None
        if read_only and settings.pool_class != "NullPool":
            ping = None
            if settings.pool_pre_ping:
                ping = make_ping(self.engine.sync_engine.dialect, timeout=settings.health_timeout)
            self.warm = WarmConnections(
                self.engine,
                ping=ping,
                ping_after_idle=settings.pre_ping_after_idle,
                recycle=settings.pool_recycle,
                keep=settings.effective_read_pool_size,
            )

    async def admit(self) -> None:
        self.breaker.check()
        await self.gate.enter()

    def connection(self) -> _AdmittedConnection:
        """An admitted connection, warm if this role keeps them."""
        return _AdmittedConnection(self)

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")

    def status(self) -> dict[str, Any]:
        pool = self.engine.pool
        status: dict[str, Any] = {
            "reachable": not self.breaker.is_open,
            "in_use": self.gate.in_use,
            "capacity": self.gate.capacity,
            "waiting": self.gate.waiting,
        }
        if isinstance(pool, QueuePool):
            warm = 0 if self.warm is None else self.warm.idle
            # Warm connections are idle, though the pool counts them as checked out.
            status.update(checked_out=pool.checkedout() - warm, idle=pool.checkedin() + warm)
        return status

    async def dispose(self) -> None:
        await self.breaker.close()
        if self.warm is not None:
            await self.warm.close()
        await self.engine.dispose()


class _AdmittedConnection:
    """Admission, then a connection; both given back on exit.

    A class rather than a generator-based context manager: this is on every read's
    path, and each generator layer costs a few microseconds in and out.
    """

    __slots__ = ("_connection", "_role")

    def __init__(self, role: _Role) -> None:
        self._role = role
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> AsyncConnection:
        role = self._role
        await role.admit()
        try:
            if role.warm is None:
                self._connection = await role.engine.connect()
            else:
                self._connection = await role.warm.take()
        except BaseException:
            role.gate.leave()
            raise
        return self._connection

    async def __aexit__(self, *_exc_info: object) -> None:
        role, connection = self._role, self._connection
        assert connection is not None
        try:
            if role.warm is None:
                await connection.close()
            else:
                await role.warm.give_back(connection)
        finally:
            role.gate.leave()


class Database:
    """Owns the engines from startup to shutdown and hands out units of work.

    Construction validates the settings and touches nothing; ``start()`` (or the
    ``lifespan``) creates the engines, ``stop()`` disposes them.
    """

    def __init__(self, settings: DatabaseSettings | None = None, /, **overrides: Any) -> None:
        if settings is not None and overrides:
            raise TypeError("pass either a DatabaseSettings or keyword settings, not both")
        self.settings = settings if settings is not None else DatabaseSettings(**overrides)
        self._primary: _Role | None = None
        self._reader: _Role | None = None

    def __repr__(self) -> str:
        state = "started" if self.is_started else "stopped"
        return f"Database({self.settings.masked_url!r}, {state})"

    @property
    def is_started(self) -> bool:
        return self._primary is not None

    async def start(self) -> None:
        if self.is_started:
            raise RuntimeError("the database is already started")
        if self.settings.backend == "sqlite":
            database = self.settings.sqlalchemy_url.database
            if database:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        self._primary = _Role(self.settings, read_only=False)
        self._reader = _Role(self.settings, read_only=True)

    async def stop(self) -> None:
        roles = [role for role in (self._primary, self._reader) if role is not None]
        self._primary = self._reader = None
        for role in roles:
            if role.gate.in_use:
                logger.warning(
                    "%d %s unit(s) of work still open at shutdown", role.gate.in_use, role.name
                )
            await role.dispose()

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        await self.stop()

    @asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        """Pass as ``FastAPI(lifespan=db.lifespan)``, or enter it in your own lifespan."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def install(
        self,
        app: FastAPI,
        *,
        health_prefix: str = "/health",
        cancel_on_disconnect: bool = True,
        disconnect_watch_after: float = 0.5,
    ) -> None:
        """Register the error handlers, health routes and disconnect watch on a FastAPI app."""
        from .fastapi import install

        install(
            self,
            app,
            health_prefix=health_prefix,
            cancel_on_disconnect=cancel_on_disconnect,
            disconnect_watch_after=disconnect_watch_after,
        )

    @property
    def engine(self) -> AsyncEngine:
        """The primary (read-write) engine, for migrations and ``run_sync``."""
        return self._started(self._primary).engine

    @property
    def read_engine(self) -> AsyncEngine:
        """The read-only, autocommit engine behind read sessions."""
        return self._started(self._reader).engine

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self._started(self._primary).sessionmaker

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A unit of work: committed if the block ends normally, rolled back on any exception.

        For background tasks, scripts and CLIs; requests get the same through
        ``SessionDep``.
        """
        role = self._started(self._primary)
        await role.admit()
        try:
            async with role.sessionmaker() as session:
                try:
                    yield session
                except BaseException:
                    await session.rollback()
                    raise
                await session.commit()
        finally:
            role.gate.leave()

    async def run_transaction(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, retry: Retry | None = None
    ) -> T:
        """Run ``work`` in a unit of work and commit; repeat it if it loses a race.

        With ``retry``, a serialization failure or deadlock (PostgreSQL 40001 and
        40P01, MySQL/MariaDB 1213) rolls the unit back and runs ``work`` again from
        the start, at most ``retry.attempts`` times in all. Pass ``retry`` only for
        work that is safe to repeat.
        """
        backend = self.settings.backend
        return await run_with_retries(
            self.transaction,
            work,
            retry or Retry(attempts=1),
            lambda error: drivers.is_serialization_failure(backend, error),
        )

    async def run_statement(
        self,
        statement: UpdateBase,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Run one ``insert``/``update``/``delete`` as a unit of work of its own.

        Committed when this returns (in an endpoint: before the response); a list of
        parameter sets is one ``executemany``, every row or none. On PostgreSQL
        (asyncpg) it costs no ``BEGIN`` or ``COMMIT`` round trip: the statement is its
        own transaction. For writes that are one statement and depend on nothing read
        in the same transaction; anything else belongs in ``SessionDep`` or
        ``transaction()``.
        """
        async with self._started(self._primary).connection() as connection:
            await run_statement(connection, statement, parameters)

    @asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """A session on the read-only path: no transaction, one round trip per statement."""
        role = self._started(self._reader)
        async with role.connection() as connection, role.sessionmaker(bind=connection) as session:
            yield session

    def read_connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A Core connection on the read-only path: the cheapest way to read.

        Autocommit and read-only like ``read_session``, without the ORM's cost: for hot
        endpoints that read rows and return them. Use as ``async with``.
        """
        return self._started(self._reader).connection()

    def pool_status(self) -> dict[str, dict[str, Any]]:
        """Each pool's state, without touching the database: cheap enough for metrics."""
        roles = (self._started(self._primary), self._started(self._reader))
        return {role.name: role.status() for role in roles}

    async def check_health(self) -> dict[str, Any]:
        """Ping the database with its own short timeout and report the pools."""
        primary = self._started(self._primary)
        reachable = not primary.breaker.is_open
        if reachable:
            try:
                async with asyncio.timeout(self.settings.health_timeout):
                    await primary.ping()
            except Exception as error:
                logger.warning("health check failed: %s", type(error).__name__)
                reachable = False
        return {
            "status": "ok" if reachable else "unavailable",
            "pools": self.pool_status(),
        }

    def _started(self, role: _Role | None) -> _Role:
        if role is None:
            raise DatabaseNotStartedError(
                "the database is not started: use it inside the app's lifespan "
                "(FastAPI(lifespan=db.lifespan)) or inside 'async with db:'"
            )
        return role
