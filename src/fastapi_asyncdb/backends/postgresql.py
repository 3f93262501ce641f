"""PostgreSQL through asyncpg: server-side limits as session settings, a bounded ping,
and the fast path."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import _compat
from ..errors import ErrorKind
from .base import Backend, milliseconds, poll_migration_lock

__all__ = ["PostgreSQL"]

# By SQLSTATE; https://www.postgresql.org/docs/current/errcodes-appendix.html
_KINDS_BY_SQLSTATE = {
    "25006": ErrorKind.READ_ONLY,  # read_only_sql_transaction
    "40001": ErrorKind.RETRYABLE,  # serialization_failure
    "40P01": ErrorKind.RETRYABLE,  # deadlock_detected
    "57014": ErrorKind.TIMEOUT,  # query_canceled: statement_timeout
    "55P03": ErrorKind.TIMEOUT,  # lock_not_available: lock_timeout
    "25P03": ErrorKind.UNAVAILABLE,  # idle_in_transaction_session_timeout ended the session
    "53300": ErrorKind.UNAVAILABLE,  # too_many_connections
    "57P01": ErrorKind.UNAVAILABLE,  # admin_shutdown (pg_terminate_backend, shutdown)
    "57P02": ErrorKind.UNAVAILABLE,  # crash_shutdown
    "57P03": ErrorKind.UNAVAILABLE,  # cannot_connect_now (starting up, recovering)
}


class PostgreSQL(Backend):
    name = "postgresql"
    dialects = ("postgresql",)
    driver = "asyncpg"
    extra = "postgresql"
    sync_default_driver = "psycopg2"
    fast_path = True

    def connect_args(self, *, read_only: bool) -> dict[str, Any]:
        settings = self.settings
        server_settings = {"application_name": settings.application_name}
        for name, seconds in (
            ("statement_timeout", settings.statement_timeout),
            ("idle_in_transaction_session_timeout", settings.idle_in_transaction_timeout),
            ("client_connection_check_interval", settings.client_connection_check_interval),
        ):
            if seconds is not None:
                server_settings[name] = str(milliseconds(seconds))
        if read_only:
            server_settings["default_transaction_read_only"] = "on"
        return {
            "timeout": settings.connect_timeout,
            "command_timeout": settings.command_timeout,
            "server_settings": server_settings,
        }

    def ping(self, dialect: Dialect, dbapi_connection: Any, *, timeout: float) -> None:
        # asyncpg's own fetch takes a timeout; the dialect's ping would wait for the
        # whole command timeout on a half-open connection.
        driver_connection = dbapi_connection.driver_connection
        try:
            _compat.await_in_greenlet(driver_connection.fetchrow(";", timeout=timeout))
        except BaseException:
            # SQLAlchemy closes a discarded connection gracefully, and asyncpg sends a
            # cancel request on a new connection, each waiting for a server that may be
            # gone; this one is known dead.
            driver_connection.terminate()
            raise

    def classify_driver_error(self, error: BaseException) -> ErrorKind | None:
        sqlstate = getattr(error, "sqlstate", None)
        if not isinstance(sqlstate, str):
            return None
        if sqlstate.startswith("08"):  # connection_exception
            return ErrorKind.UNAVAILABLE
        return _KINDS_BY_SQLSTATE.get(sqlstate)

    async def acquire_migration_lock(
        self, connection: AsyncConnection, name: str, *, wait: float
    ) -> bool:
        # A session-level advisory lock: held across Alembic's own transactions.
        return await poll_migration_lock(
            connection,
            text("SELECT pg_try_advisory_lock(CAST(:key AS BIGINT))"),
            {"key": advisory_lock_key(name)},
            wait=wait,
        )

    async def release_migration_lock(self, connection: AsyncConnection, name: str) -> None:
        await connection.execute(
            text("SELECT pg_advisory_unlock(CAST(:key AS BIGINT))"),
            {"key": advisory_lock_key(name)},
        )
        await connection.commit()


def advisory_lock_key(name: str) -> int:
    """PostgreSQL names advisory locks by a signed 64-bit integer: the name's hash."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
