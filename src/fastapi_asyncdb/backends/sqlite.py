"""SQLite through aiosqlite: a file in WAL mode, one writer at a time, readers beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

from ..errors import ErrorKind
from .base import Backend, ServerFacts, milliseconds

__all__ = ["SQLite"]


class SQLite(Backend):
    name = "sqlite"
    dialects = ("sqlite",)
    driver = "aiosqlite"
    extra = "sqlite"
    sync_default_driver = "pysqlite"
    single_writer = True
    # The sqlite3 module's own transaction handling: writes run as BEGIN IMMEDIATE
    # (install_connection_setup), and its autocommit=True (Python 3.12) would turn
    # commit and rollback into no-ops.
    transaction_arguments = frozenset({"autocommit", "isolation_level"})

    def check_url(self, url: URL) -> None:
        if url.database in (None, "", ":memory:"):
            raise ValueError(
                "points at an in-memory SQLite database, which async pools share unsafely; "
                "use a file, e.g. sqlite+aiosqlite:///./data/app.db"
            )

    def prepare(self) -> None:
        database = self.settings.sqlalchemy_url.database
        if database:
            Path(database).parent.mkdir(parents=True, exist_ok=True)

    def connect_args(self, *, read_only: bool) -> dict[str, Any]:
        # aiosqlite's timeout is SQLite's busy timeout: how long to wait for a lock.
        return {"timeout": self.settings.pool_timeout}

    def install_connection_setup(self, engine: Engine, *, read_only: bool) -> None:
        statements = [
            # WAL lets readers run beside the one writer; FULL keeps every commit on disk.
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={milliseconds(self.settings.pool_timeout)}",
        ]
        if read_only:
            statements.append("PRAGMA query_only=ON")

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
            if not read_only:
                # Take transactions out of the sqlite3 module's hands so BEGIN IMMEDIATE
                # below is the only BEGIN; its deferred BEGIN lets read-modify-write
                # lose updates.
                dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            cursor.close()

        if read_only:
            return

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            # Take the write lock up front: two deferred transactions that both read and
            # then write would deadlock on upgrade and one would fail with "locked".
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(engine, "reset")
        def _end_failed_commit(
            dbapi_connection: Any, _record: ConnectionPoolEntry, state: PoolResetState
        ) -> None:
            # A COMMIT refused by a deferred constraint leaves SQLite's transaction open,
            # and SQLAlchemy, taking the commit as the end, resets nothing; the next
            # BEGIN would fail. ROLLBACK with no transaction open is a no-op. In the
            # pool's reset, a cancellation still gives the connection back to the pool.
            if state.transaction_was_reset and state.asyncio_safe and dbapi_connection:
                dbapi_connection.rollback()

    def describe_server(self, connection: Connection) -> ServerFacts:
        version = connection.execute(text("SELECT sqlite_version()")).scalar()
        journal = connection.execute(text("PRAGMA journal_mode")).scalar()
        return ServerFacts(product=f"SQLite {version} (journal {journal})")

    def classify_driver_error(self, error: BaseException) -> ErrorKind | None:
        message = str(error)
        if "database is locked" in message:
            return ErrorKind.BUSY
        if "readonly database" in message:
            return ErrorKind.READ_ONLY
        return None

    async def acquire_migration_lock(
        self, connection: AsyncConnection, name: str, *, wait: float
    ) -> bool:
        # SQLite's lock is its one write transaction: BEGIN IMMEDIATE (the primary
        # engine's begin), kept open across the whole migration, which runs inside it
        # and commits it. Other writers wait in SQLite's busy handler, here for
        # ``wait`` instead of the pool timeout. Foreign keys are off meanwhile, as
        # SQLite's own procedure for altering tables says: batch mode drops tables that
        # other rows reference to rebuild them; the migration checks them before its
        # commit. (The pragma is ignored inside a transaction: it goes first.)
        await _pragma(connection, "PRAGMA foreign_keys=OFF")
        await _set_busy_timeout(connection, wait)
        try:
            await connection.begin()
        except DBAPIError as error:
            if self.classify(error) is not ErrorKind.BUSY:
                raise
            await connection.rollback()
            await _set_busy_timeout(connection, self.settings.pool_timeout)
            return False
        return True

    async def release_migration_lock(self, connection: AsyncConnection, name: str) -> None:
        if connection.in_transaction():
            await connection.rollback()
        await _set_busy_timeout(connection, self.settings.pool_timeout)
        await _pragma(connection, "PRAGMA foreign_keys=ON")


async def _set_busy_timeout(connection: AsyncConnection, seconds: float) -> None:
    await _pragma(connection, f"PRAGMA busy_timeout={round(seconds * 1000)}")


async def _pragma(connection: AsyncConnection, statement: str) -> None:
    # Straight on the driver's connection: a statement through SQLAlchemy would begin a
    # transaction first (and wait for the write lock with the old busy timeout).
    raw = await connection.get_raw_connection()
    assert raw.driver_connection is not None
    cursor = await raw.driver_connection.execute(statement)
    await cursor.close()
