"""SQLite through aiosqlite: a file in WAL mode, one writer at a time, readers beside it."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState
from sqlalchemy.util import asbool

from .. import _compat
from ..errors import ErrorKind
from .base import Backend, ServerFacts, milliseconds, unknown_query_parameter

__all__ = ["SQLite"]

# What SQLAlchemy's pysqlite dialect (and so aiosqlite's) takes from the URL query and
# hands to sqlite3.connect; the rest it discards with a warning, or, with uri=true,
# appends to the SQLite URI, where only SQLite's own URI parameters mean anything.
_DRIVER_PARAMETERS = frozenset(
    {"uri", "timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements"}
)
_URI_PARAMETERS = frozenset({"mode", "cache", "immutable", "vfs", "nolock", "psow"})


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
        uri = _uri_mode(url)
        for key in url.query:
            if key in _DRIVER_PARAMETERS or (uri and key in _URI_PARAMETERS):
                continue
            if key in _URI_PARAMETERS:
                raise ValueError(
                    f"has the SQLite URI parameter {key!r} without uri=true: SQLite would "
                    "never see it; write the database as file:... with uri=true"
                )
            raise unknown_query_parameter(
                key, sorted({*_DRIVER_PARAMETERS, *_URI_PARAMETERS}), "SQLite (aiosqlite)"
            )
        uri_parameters = any(key in _URI_PARAMETERS for key in url.query)
        if uri_parameters and not (url.database or "").startswith("file:"):
            raise ValueError(
                "has SQLite URI parameters on a database that is not a file: URI: "
                "SQLite would take them as part of the file name; write "
                "sqlite+aiosqlite:///file:data/app.db?uri=true&..."
            )
        if _in_memory(url, uri=uri):
            # Each pooled connection would open its own empty database (committed rows
            # lost to the next connection), or, shared, one connection for every task.
            raise ValueError(
                "points at an in-memory SQLite database, which async pools share unsafely; "
                "use a file, e.g. sqlite+aiosqlite:///./data/app.db"
            )

    def prepare(self) -> None:
        url = self.settings.sqlalchemy_url
        database = url.database
        if database and _uri_mode(url) and database.startswith("file:"):
            database = _uri_path(database)
        if database:
            Path(database).parent.mkdir(parents=True, exist_ok=True)

    def connect_args(self, *, read_only: bool) -> dict[str, Any]:
        # aiosqlite's timeout is SQLite's busy timeout: how long to wait for a lock.
        return {"timeout": self.settings.pool_timeout}

    def install_connection_setup(
        self, engine: Engine, *, read_only: bool, set_session: bool = True
    ) -> None:
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

        # A connection closed with its transaction open: one invalidated by a cancellation
        # inside a driver call, say. SQLAlchemy leaves the interrupted statement's cursor
        # unclosed, and sqlite3's close() then only marks the database handle for closing
        # once that cursor is collected; until the garbage collector gets to it, the
        # transaction stays open and holds the write lock, while the gate has already let
        # the next writer in to wait on it. Rolled back on the driver's thread, after the
        # statement in progress and before the close, the lock goes with the close.
        @event.listens_for(engine, "close")
        def _roll_back_before_close(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
            _roll_back_on_driver_thread(dbapi_connection)

        @event.listens_for(engine, "close_detached")
        def _roll_back_before_detached_close(dbapi_connection: Any) -> None:
            _roll_back_on_driver_thread(dbapi_connection)

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


def _roll_back_on_driver_thread(dbapi_connection: Any) -> None:
    # No waiting here: the closer may be a cancelled task or the garbage collector.
    driver_connection = getattr(dbapi_connection, "driver_connection", None)
    if driver_connection is not None:
        _compat.run_on_aiosqlite_thread(driver_connection, _roll_back)


def _roll_back(connection: sqlite3.Connection) -> None:
    # Whatever fails here (a connection already closed), the close that follows still runs.
    with contextlib.suppress(sqlite3.Error):
        if connection.in_transaction:
            connection.rollback()


def _uri_mode(url: URL) -> bool:
    value = url.query.get("uri", "false")
    return asbool(value if isinstance(value, str) else value[-1])


def _uri_path(database: str) -> str:
    """The file a SQLite ``file:`` URI names: its path, without authority or query."""
    rest = database.removeprefix("file:").partition("#")[0].partition("?")[0]
    if rest.startswith("//"):
        rest = rest[2:]
        rest = rest[rest.find("/") :] if "/" in rest else ""
    return unquote(rest)


def _in_memory(url: URL, *, uri: bool) -> bool:
    """Whether every connection would open its own (or a shared) database in memory:
    ':memory:', no database, a ``file:`` URI naming ':memory:' or nothing, or
    mode=memory (in the URL query or the URI's own)."""
    database = url.database or ""
    if database in ("", ":memory:"):
        return True
    if not database.startswith("file:"):
        return False
    # Without uri=true this is a file with an odd name on disk, but ':memory:' in it
    # means the user meant memory: refuse rather than surprise.
    path = _uri_path(database)
    if path in ("", ":memory:"):
        return True
    given = url.query.get("mode", ())
    modes = [
        *parse_qs(database.partition("?")[2].partition("#")[0]).get("mode", ()),
        *((given,) if isinstance(given, str) else given),
    ]
    return uri and any(mode.lower() == "memory" for mode in modes)


async def _set_busy_timeout(connection: AsyncConnection, seconds: float) -> None:
    await _pragma(connection, f"PRAGMA busy_timeout={round(seconds * 1000)}")


async def _pragma(connection: AsyncConnection, statement: str) -> None:
    # Straight on the driver's connection: a statement through SQLAlchemy would begin a
    # transaction first (and wait for the write lock with the old busy timeout).
    raw = await connection.get_raw_connection()
    assert raw.driver_connection is not None
    cursor = await raw.driver_connection.execute(statement)
    await cursor.close()
