"""``Database``: the engines' lifetime and the units of work, with no web framework in sight."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import MetaData, UpdateBase
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from . import backends
from .budget import LimitsReading, check_budget
from .connections import SharedConnection
from .drain import drain
from .errors import DatabaseNotStartedError, ErrorKind
from .metrics import DatabaseMetrics
from .pooler_check import check_pooler
from .prepared import run_statement
from .probe import Probe
from .redaction import redact_type_error
from .retry import Retry, run_with_retries
from .role import Role
from .settings import DatabaseSettings
from .units import TransactionUnit

if TYPE_CHECKING:
    from alembic.config import Config

    from .migrations import MigrationResult, MigrationStatus

__all__ = ["Database"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Database:
    """Owns the engines from startup to shutdown and hands out units of work.

    Construction validates the settings (the backend included) and touches nothing;
    ``start()`` (or the ``lifespan``) creates the engines, ``stop()`` disposes them.
    """

    def __init__(
        self,
        settings: DatabaseSettings | None = None,
        /,
        *,
        session_class: type[AsyncSession] = AsyncSession,
        **overrides: Any,
    ) -> None:
        """Settings as a ``DatabaseSettings`` or as keywords (the rest from the environment).

        ``session_class``: the ``AsyncSession`` subclass units of work get, e.g.
        SQLModel's (``sqlmodel.ext.asyncio.session.AsyncSession``).
        """
        if settings is not None and overrides:
            raise TypeError("pass either a DatabaseSettings or keyword settings, not both")
        self.settings = settings if settings is not None else DatabaseSettings(**overrides)
        self.backend = backends.resolve(self.settings)
        self.session_class = session_class
        # One for the Database's life: exporters and hooks keep a reference to it.
        self.metrics = DatabaseMetrics(self.settings.pool_name, enabled=self.settings.metrics)
        self._primary: Role | None = None
        self._reader: Role | None = None
        self._probe: Probe | None = None
        # Set while stop() drains: a second stop() waits for the first.
        self._stopping: asyncio.Future[None] | None = None

    def configure(self, settings: DatabaseSettings | None = None, /, **overrides: Any) -> None:
        """Change the settings of a stopped ``Database``, e.g. to point a test run elsewhere.

        With keywords, they override the current settings (``db.configure(url=...)``);
        validated as at construction.
        """
        if self.is_started:
            raise RuntimeError("stop the database before changing its settings")
        if settings is not None and overrides:
            raise TypeError("pass either a DatabaseSettings or keyword settings, not both")
        if settings is None:
            current = self.settings.model_dump(exclude={"url"}, exclude_unset=True)
            current["url"] = self.settings.url.get_secret_value()
            settings = DatabaseSettings(**{**current, **overrides})
        backend = backends.resolve(settings)
        self.settings, self.backend = settings, backend
        self.metrics.pool, self.metrics.enabled = settings.pool_name, settings.metrics

    def __repr__(self) -> str:
        state = "started" if self.is_started else "stopped"
        return f"Database({self.settings.masked_url!r}, {state})"

    @property
    def is_started(self) -> bool:
        return self._primary is not None

    @property
    def is_draining(self) -> bool:
        """True while ``stop()`` refuses new units of work and waits for those in flight."""
        return self._stopping is not None

    async def start(self) -> None:
        """Create the engines, once the connection budget is checked (``DB_BUDGET_CHECK``).

        Raises ``ConfigurationError`` when ``DB_WORKERS`` processes with these pools
        would open more connections than the server allows (docs/operating.md), or
        when a transaction pooler answers for PostgreSQL and ``DB_PGBOUNCER`` is not
        ``transaction`` (docs/pgbouncer.md); a server that does not answer yet does
        not stop the start.
        """
        if self.is_started:
            raise RuntimeError("the database is already started")
        self.backend.prepare()
        probe = Probe(self.settings, self.backend)
        try:
            reading = LimitsReading(self.backend, probe)
            await check_pooler(self.settings, self.backend, reading, probe)
            await check_budget(self.settings, self.backend, reading)
        except BaseException:
            await probe.close()
            raise
        self._probe = probe
        roles = {"primary": False, "read": True}
        self._primary, self._reader = (
            Role(
                name,
                self.settings,
                self.backend,
                read_only=read_only,
                probe=probe,
                session_class=self.session_class,
                metrics=self.metrics.for_role(name),
            )
            for name, read_only in roles.items()
        )
        self.metrics.attach((self._primary, self._reader))

    async def stop(self) -> None:
        """Drain, then dispose the engines.

        New units of work are refused at once (``DatabaseUnavailableError``, a 503), the
        queued ones included; those in flight get ``drain_timeout`` seconds to end, then
        their tasks are cancelled and they roll back. Only then are the engines
        disposed, so no transaction is cut by the disposal.
        """
        if self._stopping is not None:
            await asyncio.shield(self._stopping)
            return
        roles = [role for role in (self._primary, self._reader) if role is not None]
        if not roles:
            return
        self._stopping = asyncio.get_running_loop().create_future()
        try:
            # The roles stay in place meanwhile: a new unit of work meets a closed
            # gate and its 503, not DatabaseNotStartedError.
            await drain(
                roles,
                within=self.settings.drain_timeout,
                rollback_grace=self.settings.health_timeout,
            )
        finally:
            probe, self._probe = self._probe, None
            self._primary = self._reader = None
            self.metrics.attach(())
            try:
                for role in roles:
                    await role.dispose()
                if probe is not None:
                    await probe.close()
            finally:
                stopping, self._stopping = self._stopping, None
                stopping.set_result(None)

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

    async def create_all(self, metadata: MetaData) -> None:
        """Create the tables of ``metadata`` that do not exist yet.

        For demos and tests: a real app's schema comes from its migrations
        (``migrate``), which also change tables that exist already.
        """
        async with self._started(self._primary).engine.begin() as connection:
            await connection.run_sync(metadata.create_all)

    def classify(self, error: BaseException) -> ErrorKind:
        """What kind of failure ``error`` is, whatever the backend said."""
        return self.backend.classify(error)

    def unit_of_work(self) -> TransactionUnit:
        """A unit of work to begin and end by hand; ``transaction()`` is the usual way."""
        return TransactionUnit(self._started(self._primary))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A unit of work: committed if the block ends normally, rolled back on any exception.

        For background tasks, scripts and CLIs; requests get the same through
        ``SessionDep``. One at a time per task: opening a second inside the first
        raises ``NestedUnitOfWorkError`` at once (it would wait for a second connection
        while holding the first).
        """
        unit = self.unit_of_work()
        session = await unit.begin()
        try:
            yield session
        except BaseException as error:
            if self.settings.hide_parameters:
                redact_type_error(error)
            await unit.end(commit=False)
            raise
        await unit.end(commit=True)

    async def run_transaction(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, retry: Retry | None = None
    ) -> T:
        """Run ``work`` in a unit of work and commit; repeat it if it loses a race.

        With ``retry``, a serialization failure or deadlock (PostgreSQL 40001 and
        40P01, MySQL/MariaDB 1213) rolls the unit back and runs ``work`` again from
        the start, at most ``retry.attempts`` times in all. Pass ``retry`` only for
        work that is safe to repeat.
        """
        return await run_with_retries(
            self.transaction,
            work,
            retry or Retry(attempts=1),
            lambda error: self.classify(error) is ErrorKind.RETRYABLE,
            on_retry=lambda error: self.metrics.retried(self.classify(error)),
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
        role = self._started(self._primary)
        async with role.connection() as connection:
            started, outcome = perf_counter(), "error"
            try:
                if role.isolated:
                    # In a test's transaction (isolated()): a savepoint is the statement's own.
                    async with connection.begin_nested():
                        await connection.execute(statement, parameters)
                else:
                    await run_statement(connection, statement, parameters)
                outcome = "ok"
            finally:
                if role.metrics is not None:
                    role.metrics.unit("fast_path", outcome, perf_counter() - started)

    @asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """A session on the read-only path: no transaction, one round trip per statement."""
        role = self._started(self._reader)
        async with role.connection() as connection, role.session(connection) as session:
            yield session

    def read_connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A Core connection on the read-only path: the cheapest way to read.

        Autocommit and read-only like ``read_session``, without the ORM's cost: for hot
        endpoints that read rows and return them. Use as ``async with``.
        """
        return self._started(self._reader).connection()

    @asynccontextmanager
    async def isolated(self) -> AsyncIterator[AsyncConnection]:
        """Run every unit of work, reads included, on one connection, then undo it all.

        For tests: the block's connection is in a transaction rolled back when the
        block ends, whatever committed inside it. Units of work (``transaction()``,
        ``SessionDep``, ``run_transaction``, ``run_statement``) run in savepoints on it,
        so their commits and rollbacks behave as usual, and reads see their writes.
        Units of other tasks wait for the one in progress. Read-only enforcement by the
        server does not apply inside the block: reads share the writable connection.
        """
        roles = (self._started(self._primary), self._started(self._reader))
        if any(role.isolated for role in roles):
            raise RuntimeError("the database is already isolated")
        async with roles[0].engine.connect() as connection:
            pool = roles[0].engine.sync_engine.pool
            transaction = await connection.begin()
            shared = SharedConnection(connection, timeout=self.settings.pool_timeout)
            sources = [role.connections for role in roles]
            for role in roles:
                role.connections, role.isolated = shared, True
            try:
                yield connection
                if shared.timed_out is not None:
                    # Said again at the end: the app may have turned it into a 500.
                    raise shared.timed_out
            finally:
                for role, source in zip(roles, sources, strict=True):
                    role.connections, role.isolated = source, False
                    if role not in (self._primary, self._reader):
                        # Stopped inside the block: stop() closed the shared connection
                        # in the role's place, not the role's own warm connections.
                        await source.close()
                if transaction.is_active:
                    await transaction.rollback()
                if roles[0].engine.sync_engine.pool is not pool:
                    # The engine was disposed meanwhile (db_faults.unreachable() does):
                    # returned to the pool it came from, which nothing uses any more,
                    # the connection would stay open until the collector found it.
                    await connection.invalidate()

    async def migrate(
        self,
        config: str | os.PathLike[str] | Config = "alembic.ini",
        revision: str = "head",
        *,
        lock_timeout: float = 60.0,
    ) -> MigrationResult:
        """Upgrade the schema to ``revision`` with the Alembic migrations of ``config``.

        Runs on the primary engine, one process at a time: concurrent callers (replicas
        starting together) wait up to ``lock_timeout`` seconds for the database's
        migration lock, then find the work done. ``config`` is an alembic.ini path or
        an ``alembic.config.Config``; its ``env.py`` calls ``run_migrations`` (see
        ``fastapi_asyncdb.migrations``). Needs ``fastapi-asyncdb[migrations]``.
        """
        from . import migrations

        return await migrations.upgrade(
            self.engine, self.backend, config, revision, lock_timeout=lock_timeout
        )

    async def migration_status(
        self, config: str | os.PathLike[str] | Config = "alembic.ini"
    ) -> MigrationStatus:
        """The schema's revisions against the migrations' heads, read on the read path.

        For a startup that must fail when the schema is behind (``is_behind``).
        """
        from . import migrations

        return await migrations.status(self.read_engine, config)

    def pool_status(self) -> dict[str, dict[str, Any]]:
        """Each pool's state, without touching the database: cheap enough for metrics."""
        roles = (self._started(self._primary), self._started(self._reader))
        return {role.name: role.status() for role in roles}

    async def check_health(self) -> dict[str, Any]:
        """Whether the database answers, and whether the pools are saturated.

        The ping runs on the probe's own connection, within ``health_timeout``: a full
        pool or a long write does not make a reachable database look down. Saturated
        means busy, not broken: every slot of a pool in use and requests waiting.
        """
        primary = self._started(self._primary)
        probe = self._probe
        assert probe is not None
        pools = self.pool_status()
        if self.is_draining:
            # Shutting down: tell the load balancer at once, without a ping.
            return {
                "status": "draining",
                "reachable": not primary.breaker.is_open,
                "saturated": False,
                "pools": pools,
            }
        # The ping decides, not the breaker: a breaker opened by a failed connect closes
        # itself at its own probe's next success, and meanwhile the server may answer.
        reachable = await probe.ping()
        if not reachable:
            logger.warning("health check: the database does not answer")
        return {
            "status": "ok" if reachable else "unavailable",
            "reachable": reachable,
            "saturated": any(pool["saturated"] for pool in pools.values()),
            "pools": pools,
        }

    def _started(self, role: Role | None) -> Role:
        if role is None:
            raise DatabaseNotStartedError(
                "the database is not started: use it inside the app's lifespan "
                "(FastAPI(lifespan=db.lifespan)) or inside 'async with db:'"
            )
        return role
