"""MySQL and MariaDB through asyncmy: session limits set at connect, errors by code."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import ConnectionPoolEntry

from .. import _compat
from ..errors import ConfigurationError, ErrorKind
from ..tls import connect_context, tls_request
from .base import (
    Backend,
    ConnectionLimits,
    ServerFacts,
    check_query_parameters,
    connect_args_problems,
    milliseconds,
    poll_migration_lock,
)

__all__ = ["MySQL"]

# By error number; MariaDB's and MySQL's where they differ.
_KINDS_BY_CODE = {
    1792: ErrorKind.READ_ONLY,  # cannot execute statement in a READ ONLY transaction
    1213: ErrorKind.RETRYABLE,  # deadlock found when trying to get lock
    1205: ErrorKind.TIMEOUT,  # lock wait timeout exceeded
    1969: ErrorKind.TIMEOUT,  # MariaDB: max_statement_time exceeded
    3024: ErrorKind.TIMEOUT,  # MySQL: max_execution_time exceeded
    # CHECK constraint violated (MariaDB 4025, MySQL 3819): raised by asyncmy as an
    # OperationalError, not an IntegrityError.
    4025: ErrorKind.CONFLICT,
    3819: ErrorKind.CONFLICT,
    1040: ErrorKind.UNAVAILABLE,  # too many connections
    1053: ErrorKind.UNAVAILABLE,  # server shutdown in progress
    1927: ErrorKind.UNAVAILABLE,  # connection was killed
    2003: ErrorKind.UNAVAILABLE,  # cannot connect
    2006: ErrorKind.UNAVAILABLE,  # server has gone away
    2013: ErrorKind.UNAVAILABLE,  # lost connection during query
}


_WHERE = "DATABASE_URL (url), which alone says where to connect"


class MySQL(Backend):
    name = "mysql"
    dialects = ("mysql", "mariadb")
    driver = "asyncmy"
    extra = "mysql"
    limits_connections = True
    sync_default_driver = "mysqldb"
    connect_timeout_bounds_login = False
    owned_connect_arguments: ClassVar[Mapping[str, str]] = {
        "connect_timeout": "DB_CONNECT_TIMEOUT (connect_timeout)",
        "read_timeout": "DB_COMMAND_TIMEOUT (command_timeout)",
        "ssl": "DB_TLS and DB_TLS_* (or ssl_context=)",
        "password": "password= (or DATABASE_URL)",
        # Where to connect, and so whether TLS is used at all (asyncmy skips it on a Unix
        # socket), is the URL's to say, where the TLS checks see it; an option file
        # could name a host or a socket too.
        "host": _WHERE,
        "port": _WHERE,
        "unix_socket": _WHERE,
        "sock": _WHERE,
        "read_default_file": _WHERE,
        "read_default_group": _WHERE,
    }
    # asyncmy's autocommit commits each statement as it runs: a 4xx could not roll back.
    transaction_arguments = frozenset({"autocommit"})

    def check_url(self, url: URL) -> None:
        import asyncmy  # installed: the registry checked before constructing the backend
        from asyncmy.charset import charset_by_name

        check_query_parameters(url, asyncmy.connect)
        charset = url.query.get("charset")
        if isinstance(charset, str) and charset_by_name(charset.lower()) is None:
            raise ValueError(
                f"has charset={charset}, which asyncmy does not know (utf8mb4, say): every "
                "connection would fail"
            )

    def connect_args_problems(self, connect_args: Mapping[str, Any]) -> list[str]:
        import asyncmy

        return connect_args_problems(connect_args, asyncmy.connect)

    def connect_args(self, *, read_only: bool) -> dict[str, Any]:
        arguments = {
            "connect_timeout": self.settings.connect_timeout,
            "read_timeout": self.settings.command_timeout,
        }
        return arguments | _tls_arguments(self)

    async def check_created_connection(self, driver_connection: Any, *, read_only: bool) -> None:
        await _check_created_connection(self, driver_connection)

    def install_connection_setup(
        self, engine: Engine, *, read_only: bool, set_session: bool = True
    ) -> None:
        settings = self.settings

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
                    timeout = milliseconds(settings.statement_timeout)
                    assignments.append(f"SESSION max_execution_time={timeout}")
            if settings.idle_in_transaction_timeout is not None and is_mariadb:
                seconds = max(1, round(settings.idle_in_transaction_timeout))
                assignments.append(f"SESSION idle_transaction_timeout={seconds}")
            if read_only:
                variable = "tx_read_only" if is_mariadb else "transaction_read_only"
                assignments.append(f"SESSION {variable}=1")
            if assignments:
                cursor.execute("SET " + ", ".join(assignments))
            cursor.close()

    def describe_server(self, connection: Connection) -> ServerFacts:
        def scalar(sql: str) -> Any:
            return connection.execute(text(sql)).scalar()

        version = str(scalar("SELECT VERSION()"))
        is_mariadb = "mariadb" in version.lower()
        product = "MariaDB" if is_mariadb else "MySQL"
        facts = ServerFacts(product=f"{product} {version.split('-')[0]}")
        cipher = connection.execute(text("SHOW SESSION STATUS LIKE 'Ssl_cipher'")).one_or_none()
        facts.tls = bool(cipher and cipher[1])
        facts.tls_detail = str(cipher[1]) if cipher and cipher[1] else ""
        if is_mariadb:
            statement = float(scalar("SELECT @@max_statement_time"))
            idle = float(scalar("SELECT @@idle_transaction_timeout"))
            facts.timeouts["idle_in_transaction_timeout"] = idle or None
        else:
            statement = float(scalar("SELECT @@max_execution_time")) / 1000
        facts.timeouts["statement_timeout"] = statement or None
        facts.limits = self.connection_limits(connection)
        grants = " ".join(str(row[0]) for row in connection.execute(text("SHOW GRANTS")))
        facts.superuser = "ALL PRIVILEGES ON *.*" in grants or " SUPER" in grants
        return facts

    def connection_limits(self, connection: Connection) -> ConnectionLimits:
        # Nothing is reserved: the server admits one connection beyond max_connections
        # for an administrator (SUPER, CONNECTION ADMIN), and MariaDB's extra_port its
        # extra_max_connections; both come on top, none is taken from the app's share.
        # The session's max_user_connections is this account's limit when it has one.
        total, per_user = connection.execute(
            text("SELECT @@max_connections, @@max_user_connections")
        ).one()
        in_use = connection.execute(text("SHOW STATUS LIKE 'Threads_connected'")).one()[1]
        return ConnectionLimits(
            int(total),
            account_limit=int(per_user) if int(per_user) > 0 else None,
            account_limit_detail="max_user_connections" if int(per_user) > 0 else "",
            in_use=int(in_use),
        )

    def ping(self, dialect: Dialect, dbapi_connection: Any, *, timeout: float) -> None:
        # The dialect's ping waits as long as the read timeout (the command timeout):
        # on a half-open connection, far longer than a health check may take.
        driver_connection = dbapi_connection.driver_connection
        _compat.await_in_greenlet(asyncio.wait_for(driver_connection.ping(False), timeout))

    def login_refusal(self, error: BaseException) -> bool:
        # Too many connections, access denied, unknown database, per-user limit.
        args: tuple[Any, ...] = getattr(error, "args", ())
        return bool(args) and args[0] in (1040, 1045, 1049, 1203)

    def classify_driver_error(self, error: BaseException) -> ErrorKind | None:
        args = getattr(error, "args", ())
        code = args[0] if args and isinstance(args[0], int) else None
        return None if code is None else _KINDS_BY_CODE.get(code)

    async def acquire_migration_lock(
        self, connection: AsyncConnection, name: str, *, wait: float
    ) -> bool:
        # A named user lock, the session's until released; GET_LOCK's own wait is 0
        # (see poll_migration_lock). Names are server-wide, so the name says which
        # database.
        return await poll_migration_lock(
            connection, text("SELECT GET_LOCK(:name, 0)"), {"name": name}, wait=wait
        )

    async def release_migration_lock(self, connection: AsyncConnection, name: str) -> None:
        await connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
        await connection.commit()


# -- TLS and connections made by an async_creator --------------------------------------


def _tls_arguments(backend: MySQL) -> dict[str, Any]:
    """asyncmy's ``ssl``: a context when TLS is on. A context, not a dict: a dict without
    a CA encrypts but verifies nothing."""
    context = connect_context(backend.settings)
    return {} if context is None else {"ssl": context}


async def _check_created_connection(backend: MySQL, connection: Any) -> None:
    # The server-side limits and read-only mode are set by the connect event, on any
    # connection; what a creator must pass on is the client side and TLS.
    settings = backend.settings
    missing = []
    read_timeout = getattr(connection, "_read_timeout", None)
    if read_timeout != settings.command_timeout:
        missing.append(f"read_timeout={settings.command_timeout} (has {read_timeout})")
    if tls_request(settings).mode != "disable":
        async with asyncio.timeout(settings.connect_timeout), connection.cursor() as cursor:
            await cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = await cursor.fetchone()
        if not (row and row[1]):
            missing.append("TLS (the connection is not encrypted)")
    problems = []
    if missing:
        problems.append(
            "async_creator=: its connection runs without " + ", ".join(missing) + "; pass the "
            "keyword arguments the creator receives on to asyncmy.connect"
        )
    # The server's own flag, as its last reply reported it: autocommit=True, or None
    # (keep the server's default, which is on), would commit each statement alone.
    if connection.get_autocommit():
        problems.append(
            "async_creator=: its connection has autocommit on, which takes transactions "
            "out of fastapi-asyncdb's hands (each statement would commit alone, and an "
            "error or a 4xx could not roll back); do not pass autocommit to asyncmy.connect"
        )
    if problems:
        raise ConfigurationError("; ".join(problems))
