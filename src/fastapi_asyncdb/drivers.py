"""What differs per backend: connect arguments, per-connection setup, and error codes.

Each backend gets the same guarantees by its own means: bounded connects and
commands, server-side statement and idle-transaction limits, and a read-only
mode that the server itself enforces.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import ConnectionPoolEntry

from .settings import Backend, DatabaseSettings

__all__ = [
    "engine_options",
    "install_connection_setup",
    "is_busy",
    "is_constraint_violation",
    "is_read_only_violation",
    "is_serialization_failure",
    "is_timeout",
]

_PG_READ_ONLY_SQLSTATE = "25006"
_PG_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
# Statement cancelled by statement_timeout, lock wait over lock_timeout.
_PG_TIMEOUT_SQLSTATES = frozenset({"57014", "55P03"})
# max_statement_time (MariaDB), max_execution_time (MySQL), lock wait timeout.
_MYSQL_TIMEOUT_CODES = frozenset({1969, 3024, 1205})
_MYSQL_READ_ONLY_CODE = 1792
_MYSQL_DEADLOCK_CODE = 1213
# CHECK constraint violated (MariaDB 4025, MySQL 3819): asyncmy raises these as
# OperationalError, not IntegrityError.
_MYSQL_CHECK_CODES = frozenset({4025, 3819})


def engine_options(settings: DatabaseSettings, *, read_only: bool) -> dict[str, Any]:
    """Keyword arguments for ``create_async_engine`` that depend on the backend."""
    options: dict[str, Any] = {}
    if read_only:
        # No BEGIN/ROLLBACK round trips: each statement is its own snapshot.
        options["isolation_level"] = "AUTOCOMMIT"
    if settings.backend == "postgresql":
        options["connect_args"] = _asyncpg_connect_args(settings, read_only=read_only)
    elif settings.backend == "mysql":
        options["connect_args"] = {
            "connect_timeout": settings.connect_timeout,
            "read_timeout": settings.command_timeout,
        }
    else:
        # aiosqlite's timeout is SQLite's busy timeout: how long to wait for a lock.
        options["connect_args"] = {"timeout": settings.pool_timeout}
    return options


def _asyncpg_connect_args(settings: DatabaseSettings, *, read_only: bool) -> dict[str, Any]:
    server_settings = {"application_name": settings.application_name}
    for name, seconds in (
        ("statement_timeout", settings.statement_timeout),
        ("idle_in_transaction_session_timeout", settings.idle_in_transaction_timeout),
        ("client_connection_check_interval", settings.client_connection_check_interval),
    ):
        if seconds is not None:
            server_settings[name] = str(_milliseconds(seconds))
    if read_only:
        server_settings["default_transaction_read_only"] = "on"
    return {
        "timeout": settings.connect_timeout,
        "command_timeout": settings.command_timeout,
        "server_settings": server_settings,
    }


def install_connection_setup(
    engine: Engine, settings: DatabaseSettings, *, read_only: bool
) -> None:
    """Run the per-connection setup that connect arguments cannot express."""
    if settings.backend == "sqlite":
        _install_sqlite_setup(engine, settings, read_only=read_only)
    elif settings.backend == "mysql":
        _install_mysql_setup(engine, settings, read_only=read_only)


def _install_sqlite_setup(engine: Engine, settings: DatabaseSettings, *, read_only: bool) -> None:
    statements = [
        # WAL lets readers run beside the one writer; FULL keeps every commit on disk.
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA busy_timeout={_milliseconds(settings.pool_timeout)}",
    ]
    if read_only:
        statements.append("PRAGMA query_only=ON")

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        if not read_only:
            # Take transactions out of the sqlite3 module's hands so BEGIN IMMEDIATE below
            # is the only BEGIN; its deferred BEGIN lets read-modify-write lose updates.
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for statement in statements:
            cursor.execute(statement)
        cursor.close()

    if not read_only:

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            # Take the write lock up front: two deferred transactions that both read and
            # then write would deadlock on upgrade and one would fail with "locked".
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(engine, "checkin")
        def _end_failed_commit(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
            # A COMMIT refused by a deferred constraint leaves SQLite's transaction open,
            # and SQLAlchemy, taking the commit as the end, resets nothing; the next
            # BEGIN would fail. ROLLBACK with no transaction open is a no-op.
            if dbapi_connection is not None:
                dbapi_connection.rollback()


def _install_mysql_setup(engine: Engine, settings: DatabaseSettings, *, read_only: bool) -> None:
    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT VERSION()")
        is_mariadb = "mariadb" in str(cursor.fetchone()[0]).lower()
        assignments = []
        if settings.statement_timeout is not None:
            if is_mariadb:
                assignments.append(f"SESSION max_statement_time={settings.statement_timeout:g}")
            else:
                milliseconds = _milliseconds(settings.statement_timeout)
                assignments.append(f"SESSION max_execution_time={milliseconds}")
        if settings.idle_in_transaction_timeout is not None and is_mariadb:
            seconds = max(1, round(settings.idle_in_transaction_timeout))
            assignments.append(f"SESSION idle_transaction_timeout={seconds}")
        if read_only:
            variable = "tx_read_only" if is_mariadb else "transaction_read_only"
            assignments.append(f"SESSION {variable}=1")
        if assignments:
            cursor.execute("SET " + ", ".join(assignments))
        cursor.close()


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _driver_error(error: BaseException) -> Any:
    return error.orig if isinstance(error, DBAPIError) else error


def is_read_only_violation(backend: Backend, error: BaseException) -> bool:
    """The server refused a write because the connection is read-only."""
    orig = _driver_error(error)
    if backend == "postgresql":
        return getattr(orig, "sqlstate", None) == _PG_READ_ONLY_SQLSTATE
    if backend == "mysql":
        return _mysql_code(orig) == _MYSQL_READ_ONLY_CODE
    return "readonly database" in str(orig)


def is_serialization_failure(backend: Backend, error: BaseException) -> bool:
    """The transaction lost a race (serialization failure or deadlock) and may be repeated."""
    orig = _driver_error(error)
    if backend == "postgresql":
        return getattr(orig, "sqlstate", None) in _PG_RETRYABLE_SQLSTATES
    if backend == "mysql":
        return _mysql_code(orig) == _MYSQL_DEADLOCK_CODE
    return False


def is_constraint_violation(backend: Backend, error: BaseException) -> bool:
    """A constraint refused the change, though the driver did not call it an IntegrityError."""
    return backend == "mysql" and _mysql_code(_driver_error(error)) in _MYSQL_CHECK_CODES


def is_timeout(backend: Backend, error: BaseException) -> bool:
    """The server gave up on a statement or a lock wait at its configured limit."""
    orig = _driver_error(error)
    if backend == "postgresql":
        return getattr(orig, "sqlstate", None) in _PG_TIMEOUT_SQLSTATES
    if backend == "mysql":
        return _mysql_code(orig) in _MYSQL_TIMEOUT_CODES
    return False


def is_busy(backend: Backend, error: BaseException) -> bool:
    """SQLite gave up waiting for its write lock: a capacity problem, not a bug."""
    return backend == "sqlite" and "database is locked" in str(_driver_error(error))


def _mysql_code(orig: Any) -> int | None:
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None
