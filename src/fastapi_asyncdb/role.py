"""A role is one engine with everything that guards it: the primary, or the reader.

Each role has its engine and sessionmaker, its admission control (a FIFO ``Gate`` the
size of its pool, and a ``Breaker``), and the ``ConnectionSource`` its units of work
take connections from. Read replicas later become more readers; nothing else changes.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from time import perf_counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from .admission import Breaker, Gate
from .backends import Backend
from .connections import ConnectionSource, PooledConnections, WarmConnections
from .engine import create_engine
from .errors import DatabaseError, DatabaseUnavailableError, ErrorKind, NestedUnitOfWorkError
from .metrics import RoleMetrics
from .probe import Probe
from .redaction import redact_type_error
from .settings import DatabaseSettings

__all__ = ["AdmittedConnection", "Role"]

logger = logging.getLogger(__name__)


class Role:
    """One engine, its sessionmaker, its admission control and its connections."""

    def __init__(
        self,
        name: str,
        settings: DatabaseSettings,
        backend: Backend,
        *,
        read_only: bool,
        probe: Probe,
        session_class: type[AsyncSession] = AsyncSession,
        metrics: RoleMetrics | None = None,
    ) -> None:
        self.name = name
        self.read_only = read_only
        self.hide_parameters = settings.hide_parameters
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        # Read units are timed by AdmittedConnection; write units by their own code.
        self.read_metrics = metrics if read_only else None
        self.breaker = Breaker(
            probe.connect, retry_after=settings.unavailable_retry_after, metrics=metrics
        )
        self.engine, health = create_engine(
            settings,
            backend,
            read_only=read_only,
            on_connect_failure=self.breaker.trip,
            metrics=metrics,
        )
        # Connections on which a statement failed during the current read unit: a read
        # whose error an exception handler answered still counts as an error.
        self.failed: weakref.WeakSet[Connection] = weakref.WeakSet()
        if self.read_metrics is not None:
            event.listen(self.engine.sync_engine, "handle_error", self._note_failure)
        self.sessionmaker = async_sessionmaker(
            self.engine,
            class_=session_class,
            # Objects stay readable after commit: no lazy load (MissingGreenlet) in the
            # response model.
            expire_on_commit=False,
            # A session used after its unit of work ended raises instead of quietly
            # checking out a connection that nobody returns.
            close_resets_only=False,
        )
        if read_only:
            capacity = settings.effective_read_pool_size + settings.effective_read_max_overflow
        elif backend.single_writer:
            # One writer at a time: queue writers here, in order and at no cost, rather
            # than in the database's busy loop, which ends in "database is locked".
            capacity = 1
        else:
            capacity = settings.pool_size + settings.max_overflow
        self.gate = Gate(
            capacity,
            timeout=settings.pool_timeout,
            retry_after=settings.unavailable_retry_after,
            metrics=metrics,
        )
        self.pool_size = settings.effective_read_pool_size if read_only else settings.pool_size
        # Only read connections stay warm: they carry no transaction between units of
        # work. (A NullPool makes a connection per checkout anyway.)
        self.connections: ConnectionSource
        # Only autocommit ones: a read in a transaction leaves it for the pool to end.
        if read_only and backend.autocommit_reads and settings.pool_class != "NullPool":
            self.connections = WarmConnections(
                self.engine, health=health, keep=settings.effective_read_pool_size
            )
        else:
            self.connections = PooledConnections(self.engine)
        # The connection each task holds on this role.
        self.held: dict[asyncio.Task[Any], _Held] = {}
        # Set while Database.isolated() runs every unit on one connection.
        self.isolated = False

    def _note_failure(self, context: ExceptionContext) -> None:
        if context.connection is not None:
            self.failed.add(context.connection)

    def lost_in_setup(self, error: BaseException) -> DatabaseUnavailableError | None:
        """The driver's own error, raised unwrapped by SQLAlchemy's setup of a new
        connection (its connect events), as the unavailable database it means; None
        for anything else."""
        if isinstance(error, SQLAlchemyError | DatabaseError) or not isinstance(error, Exception):
            return None
        if self.backend.classify(error) is not ErrorKind.UNAVAILABLE:
            return None
        return DatabaseUnavailableError(
            f"a new connection was lost while being set up ({type(error).__name__})",
            retry_after=self.settings.unavailable_retry_after,
            detail="the database cannot be reached",
        )

    def connection(self) -> AdmittedConnection:
        """Admission, then a connection; both given back on exit."""
        return AdmittedConnection(self)

    def session(self, connection: AsyncConnection) -> AsyncSession:
        if self.isolated:
            # The connection is in the test's transaction. A write unit is a savepoint in
            # it. A read session takes no savepoint of its own: it may outlive the
            # request's write unit, begun after it, and ending its savepoint would end
            # or undo the unit's.
            mode = "rollback_only" if self.read_only else "create_savepoint"
            return self.sessionmaker(bind=connection, join_transaction_mode=mode)
        return self.sessionmaker(bind=connection)

    @property
    def saturated(self) -> bool:
        """Every slot in use and someone waiting: busy, not broken."""
        return self.gate.in_use >= self.gate.capacity and self.gate.waiting > 0

    def status(self) -> dict[str, Any]:
        return {
            "reachable": not self.breaker.is_open,
            "saturated": self.saturated,
            "in_use": self.gate.in_use,
            "capacity": self.gate.capacity,
            "waiting": self.gate.waiting,
            "checked_out": self.connections.lent,
            "idle": self.connections.idle,
            "overflow": max(0, self.connections.lent + self.connections.idle - self.pool_size),
        }

    async def dispose(self) -> None:
        if self.gate.in_use:
            logger.warning(
                "%d %s unit(s) of work still open at shutdown", self.gate.in_use, self.name
            )
        await self.breaker.close()
        await self.connections.close()
        await self.engine.dispose()


class _Held:
    """A connection a task holds, and how many of its units of work share it."""

    __slots__ = ("connection", "task", "units")

    def __init__(self, connection: AsyncConnection, task: asyncio.Task[Any] | None) -> None:
        self.connection = connection
        self.task = task
        self.units = 1


class AdmittedConnection:
    """Admission, then a connection; both given back on exit.

    A unit of work opened inside another of the same task on the same role would need
    a second connection while holding the first, and tasks that each hold one and wait
    for another deadlock once the pool is full. So on the read role the inner unit
    shares the outer one's connection (read connections carry no transaction), and on
    the primary role it is refused at once with ``NestedUnitOfWorkError``.

    A class rather than a generator-based context manager: this is on every read's
    path, and each generator layer costs a few microseconds in and out.
    """

    __slots__ = ("_held", "_role", "_started")

    def __init__(self, role: Role) -> None:
        self._role = role
        self._held: _Held | None = None
        self._started = 0.0

    async def __aenter__(self) -> AsyncConnection:
        role = self._role
        task = asyncio.current_task()
        held = role.held.get(task) if task is not None else None
        if held is not None:
            if not role.read_only:
                raise NestedUnitOfWorkError(
                    "a unit of work is already open in this task on the primary database "
                    "(SessionDep, Database.transaction(), run_transaction or run_statement);"
                    " use its session, or open the second one after the first has ended"
                )
            held.units += 1
            self._held = held
            return held.connection
        role.breaker.check()
        await role.gate.enter()
        try:
            connection = await role.connections.take()
        except BaseException as error:
            role.gate.leave()
            lost = role.lost_in_setup(error)
            if lost is not None:
                raise lost from error
            raise
        self._held = held = _Held(connection, task)
        if task is not None:
            role.held[task] = held
        if role.read_metrics is not None:
            self._started = perf_counter()
        return connection

    async def __aexit__(
        self, error_type: type[BaseException] | None, error: BaseException | None, _tb: object
    ) -> None:
        held, role = self._held, self._role
        assert held is not None
        if error is not None and role.hide_parameters:
            redact_type_error(error)
        held.units -= 1
        if held.units:
            return
        if role.read_metrics is not None:
            statement_failed = False
            sync_connection = held.connection.sync_connection
            if sync_connection is not None and sync_connection in role.failed:
                role.failed.discard(sync_connection)
                statement_failed = True
            outcome = "error" if error_type is not None or statement_failed else "ok"
            role.read_metrics.unit("read", outcome, perf_counter() - self._started)
        if held.task is not None:
            role.held.pop(held.task, None)
        try:
            await role.connections.give_back(held.connection)
        finally:
            role.gate.leave()
