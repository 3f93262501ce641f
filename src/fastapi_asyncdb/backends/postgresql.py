"""PostgreSQL through asyncpg: server-side limits as session settings, a bounded ping,
and the fast path."""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import ConnectionPoolEntry

from .. import _compat
from ..errors import ConfigurationError, ErrorKind
from ..tls import connect_context
from . import _pgbouncer
from .base import (
    Backend,
    ConnectionLimits,
    ServerFacts,
    check_query_parameters,
    connect_args_problems,
    milliseconds,
    poll_migration_lock,
)

if TYPE_CHECKING:
    from ..settings import DatabaseSettings

__all__ = ["PostgreSQL"]

logger = logging.getLogger(__name__)

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


# Server-side limits, by server name -> setting name.
_TIMEOUT_SETTINGS = {
    "statement_timeout": "statement_timeout",
    "idle_in_transaction_session_timeout": "idle_in_transaction_timeout",
    "client_connection_check_interval": "client_connection_check_interval",
    "lock_timeout": "lock_timeout",
}


# Connection slots kept from roles without special rights (reserved_connections: 16+).
_RESERVED_SETTINGS = ("superuser_reserved_connections", "reserved_connections")


def _pooler_limits(_connection: Connection, pooler: str) -> ConnectionLimits:
    """The pooler's limits on this client's connections, when the pooler tells them.

    Through a pooler the server's max_connections bounds the pooler's own server
    connections, not the clients': PgBouncer's max_client_conn does. The seam for
    reading it (PgBouncer's admin console, or a setting naming it); until then the
    limit is unknown and the budget says it could not check.
    """
    return ConnectionLimits(None, limited_by="the pooler (max_client_conn)", pooler=pooler)


# Connect arguments SQLAlchemy's asyncpg adapter takes for itself.
_SQLALCHEMY_OWN = ("prepared_statement_cache_size", "prepared_statement_name_func")
_WHERE = "DATABASE_URL (url), which alone says where to connect"


class PostgreSQL(Backend):
    name = "postgresql"
    # Typed as the base declares it: a subclass for another driver may serve other names.
    dialects: ClassVar[tuple[str, ...]] = ("postgresql",)
    driver = "asyncpg"
    extra = "postgresql"
    sync_default_driver = "psycopg2"
    fast_path = True
    limits_connections = True
    owned_connect_arguments: ClassVar[Mapping[str, str]] = {
        "timeout": "DB_CONNECT_TIMEOUT (connect_timeout)",
        "command_timeout": "DB_COMMAND_TIMEOUT (command_timeout)",
        "ssl": "DB_TLS and DB_TLS_* (or ssl_context=)",
        "password": "password= (or DATABASE_URL)",
        # Where to connect, and so whether TLS is used at all (asyncpg skips it on a Unix
        # socket without a word), is the URL's to say, where the TLS checks see it.
        "dsn": _WHERE,
        "host": _WHERE,
        "port": _WHERE,
        "service": _WHERE,
        "servicefile": _WHERE,
        "direct_tls": "DB_TLS and DB_TLS_* (or ssl_context=)",
        "server_settings.statement_timeout": "DB_STATEMENT_TIMEOUT (statement_timeout)",
        "server_settings.idle_in_transaction_session_timeout": (
            "DB_IDLE_IN_TRANSACTION_TIMEOUT (idle_in_transaction_timeout)"
        ),
        "server_settings.client_connection_check_interval": (
            "DB_CLIENT_CONNECTION_CHECK_INTERVAL (client_connection_check_interval)"
        ),
        "server_settings.default_transaction_read_only": (
            "the engines themselves (the read engine is read-only by design)"
        ),
        "server_settings.application_name": "DB_APPLICATION_NAME (application_name)",
        # "-c statement_timeout=0" in options would undo any of the above.
        "server_settings.options": "the settings, one server_settings entry per parameter",
    }

    @property
    def autocommit_reads(self) -> bool:
        # Transaction pooling: an autocommit read has no transaction for SET LOCAL.
        return self.settings.pgbouncer != "transaction"

    def write_fast_path_off_reason(self) -> str | None:
        if self.settings.pgbouncer == "transaction":
            return _pgbouncer.TRANSACTION_MODE_FAST_PATH
        return None

    def check_url(self, url: URL) -> None:
        import asyncpg  # installed: the registry checked before constructing the backend

        check_query_parameters(
            url,
            asyncpg.connect,
            also=("prepared_statement_cache_size",),  # SQLAlchemy's own, made an int
            numbers=(
                "statement_cache_size",
                "max_cached_statement_lifetime",
                "max_cacheable_statement_size",
            ),
        )

    def connect_args_problems(self, connect_args: Mapping[str, Any]) -> list[str]:
        import asyncpg

        problems = connect_args_problems(connect_args, asyncpg.connect, also=_SQLALCHEMY_OWN)
        extra = connect_args.get("server_settings")
        if isinstance(extra, Mapping):
            # asyncpg writes each value into the startup message as it is: a str only.
            problems += [
                f"connect_args=: server_settings.{name} is a {type(value).__name__}, where "
                "asyncpg takes a str: every connection would fail"
                for name, value in extra.items()
                if not isinstance(value, str)
            ]
        return problems

    def connect_args(self, *, read_only: bool) -> dict[str, Any]:
        settings = self.settings
        # PgBouncer takes application_name at login, and nothing else of ours.
        server_settings = {"application_name": settings.application_name}
        arguments: dict[str, Any] = {
            "timeout": settings.connect_timeout,
            "command_timeout": settings.command_timeout,
            "server_settings": server_settings,
            "ssl": _tls_argument(settings),
        }
        if settings.pgbouncer == "transaction":
            # A named statement lives on one server connection; the unnamed one travels
            # with each execution. Unique names (prepared_statement_name_func) do not
            # help: asyncpg's Sync between Parse and Bind lets PgBouncer switch servers.
            arguments["statement_cache_size"] = 0
            arguments["connection_class"] = _pgbouncer.connection_class(
                _pgbouncer.begin_limits(settings), read_only=read_only
            )
        elif settings.pgbouncer == "session" and _pgbouncer.begin_limits(settings):
            # The session's SET holds until a unit of work runs RESET ALL or DISCARD
            # ALL on the pooled connection; SET LOCAL in each BEGIN's own message
            # holds for every transaction whatever came before, at no round trip.
            arguments["connection_class"] = _pgbouncer.connection_class(
                _pgbouncer.begin_limits(settings), read_only=False
            )
        if settings.pgbouncer != "off":
            return arguments  # the limits are set after login (install_connection_setup)
        for name, seconds in (
            ("statement_timeout", settings.statement_timeout),
            ("idle_in_transaction_session_timeout", settings.idle_in_transaction_timeout),
            ("client_connection_check_interval", settings.client_connection_check_interval),
        ):
            if seconds is not None:
                server_settings[name] = str(milliseconds(seconds))
        if read_only:
            server_settings["default_transaction_read_only"] = "on"
        return arguments

    def install_connection_setup(
        self, engine: Engine, *, read_only: bool, set_session: bool = True
    ) -> None:
        settings = self.settings
        if settings.pgbouncer != "off":

            @event.listens_for(engine, "checkout")
            def _closed_by_pooler(
                dbapi_connection: Any, _record: ConnectionPoolEntry, _proxy: Any
            ) -> None:
                # PgBouncer closes clients (restart, client_idle_timeout, a failed
                # server); the pool then makes a new connection instead of a 503.
                if dbapi_connection.driver_connection.is_closed():
                    raise DisconnectionError("closed by the pooler")

        if settings.pgbouncer == "transaction" and read_only:

            @event.listens_for(engine, "connect")
            def _read_only(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
                # Every transaction of the read engine begins READ ONLY (the adapter's
                # own mode, which the fast path recognises as a read-only path).
                dbapi_connection.readonly = True

        if settings.pgbouncer == "session" and set_session:
            # Not on the probe's connection: the start may be about to find a transaction
            # pooler, whose server session the next client would get with these SETs.
            commands = _pgbouncer.session_limits(settings, read_only=read_only)

            @event.listens_for(engine, "connect")
            def _set_limits(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
                if commands:
                    driver_connection = dbapi_connection.driver_connection
                    _compat.await_in_greenlet(
                        driver_connection.execute(commands, timeout=settings.connect_timeout)
                    )

        elif settings.pgbouncer == "off" and not read_only:

            @event.listens_for(engine, "first_connect")
            def _notice_pooler(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
                # Once per engine: a pooler that let the login through (it ignores our
                # parameters) makes reads fail and drops the server-side limits. Said
                # here when the start could not tell (the server did not answer then).
                if self.pooler_reported:
                    return
                through = _compat.await_in_greenlet(
                    _pgbouncer.connects_through_pooler(
                        dbapi_connection.driver_connection, timeout=settings.connect_timeout
                    )
                )
                if through:
                    logger.warning(
                        "a pooler (PgBouncer?) answers for PostgreSQL, and DB_PGBOUNCER is "
                        "off: its server-side limits are not in force, and under transaction "
                        "pooling statements fail; set DB_PGBOUNCER (docs/pgbouncer.md)"
                    )

    def connect_failure_hint(self, reason: str) -> str:
        return _pgbouncer.refused_startup_parameter_hint(reason)

    async def check_created_connection(self, driver_connection: Any, *, read_only: bool) -> None:
        await _check_created_connection(self, driver_connection, read_only=read_only)

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

    def describe_server(self, connection: Connection) -> ServerFacts:
        def scalar(sql: str) -> Any:
            return connection.execute(text(sql)).scalar()

        limits = self.connection_limits(connection)  # first: it needs transactions of its own
        facts = ServerFacts(product="PostgreSQL " + str(scalar("SHOW server_version")).split()[0])
        facts.limits, facts.pooler = limits, limits.pooler
        tls = connection.execute(
            text("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        ).one_or_none()
        facts.tls = bool(tls and tls.ssl)
        facts.tls_detail = f"{tls.version} {tls.cipher}" if tls and tls.ssl else ""
        rows = connection.execute(
            text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"),
            {"names": list(_TIMEOUT_SETTINGS)},
        )
        for name, setting in rows:
            milliseconds_set = int(setting)
            facts.timeouts[_TIMEOUT_SETTINGS[name]] = (
                milliseconds_set / 1000 if milliseconds_set else None
            )
        facts.superuser = bool(scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
        facts.owns_schema = bool(
            scalar(
                "SELECT pg_has_role(current_user, nspowner, 'USAGE') "
                "FROM pg_namespace WHERE nspname = current_schema()"
            )
        )
        return facts

    def connection_limits(self, connection: Connection) -> ConnectionLimits:
        pooler = _pgbouncer.pooler_seen(connection)  # first: it needs transactions of its own
        if pooler is not None:
            return _pooler_limits(connection, pooler)
        names = ["max_connections", *_RESERVED_SETTINGS]
        settings = {
            str(name): int(setting)
            for name, setting in connection.execute(
                text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"),
                {"names": names},
            )
        }
        reserved = {name: settings[name] for name in _RESERVED_SETTINGS if name in settings}
        account = connection.execute(
            text(
                "SELECT r.rolname, r.rolconnlimit, r.rolsuper, d.datname, d.datconnlimit "
                "FROM pg_roles r, pg_database d "
                "WHERE r.rolname = current_user AND d.datname = current_database()"
            )
        ).one()
        account_limits: list[tuple[int, str]] = []
        if not account.rolsuper:  # neither CONNECTION LIMIT binds a superuser; -1: none
            if account.rolconnlimit >= 0:
                account_limits.append(
                    (account.rolconnlimit, f"role {account.rolname}'s CONNECTION LIMIT")
                )
            if account.datconnlimit >= 0:
                account_limits.append(
                    (account.datconnlimit, f"database {account.datname}'s CONNECTION LIMIT")
                )
        tightest = min(account_limits, default=None)
        # Other roles' rows hide backend_type unless this role may read all statistics
        # (pg_read_all_stats): a row on a database is a client's then; the server's own
        # processes have none.
        in_use = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "OR (backend_type IS NULL AND datname IS NOT NULL)"
            )
        ).scalar()
        return ConnectionLimits(
            settings["max_connections"],
            reserved=sum(reserved.values()),
            reserved_detail=" + ".join(f"{value} {name}" for name, value in reserved.items()),
            account_limit=None if tightest is None else tightest[0],
            account_limit_detail="" if tightest is None else tightest[1],
            in_use=None if in_use is None else int(in_use),
        )

    def limits_not_in_force(self, connection: Connection) -> tuple[str, ...]:
        if self.settings.pgbouncer != "off":
            return ()  # set after login, per connection or per BEGIN, not read back here
        wanted = _limits_asked(self.connect_args(read_only=True))
        found = {
            str(name): str(setting)
            for name, setting in connection.execute(
                text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"),
                {"names": list(wanted)},
            )
        }
        return tuple(
            f"{name}={value} (has {found.get(name)})"
            for name, value in wanted.items()
            if found.get(name) != value
        )

    def login_refusal(self, error: BaseException) -> bool:
        # too_many_connections, invalid_authorization (28xxx), invalid_catalog_name (3D)
        sqlstate = getattr(error, "sqlstate", None)
        return isinstance(sqlstate, str) and (
            sqlstate == "53300" or sqlstate.startswith(("28", "3D"))
        )

    def classify_driver_error(self, error: BaseException) -> ErrorKind | None:
        sqlstate = getattr(error, "sqlstate", None)
        if not isinstance(sqlstate, str):
            # asyncpg's own words for a connection closed under it (no SQLSTATE):
            # PgBouncer dropped the client, or the server went away. SQLAlchemy's adapter
            # raises an error of its own module with asyncpg's as its cause.
            if any(
                type(item).__module__.startswith("asyncpg") and "connection is closed" in str(item)
                for item in (error, error.__cause__)
            ):
                return ErrorKind.UNAVAILABLE
            return None
        if sqlstate.startswith("08"):  # connection_exception
            return ErrorKind.UNAVAILABLE
        return _KINDS_BY_SQLSTATE.get(sqlstate)

    async def acquire_migration_lock(
        self, connection: AsyncConnection, name: str, *, wait: float
    ) -> bool:
        # A session-level advisory lock: held across Alembic's own transactions.
        if self.settings.pgbouncer == "transaction":
            # Each transaction may meet another server session: the lock would be taken
            # in one and the migration run in others, unguarded.
            raise ConfigurationError(
                "migrations need one server session for their lock, which PgBouncer's "
                "transaction pooling does not give: migrate on a direct connection "
                "(DATABASE_URL to the server, DB_PGBOUNCER=off) or a session-mode pool"
            )
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


# -- TLS and connections made by an async_creator --------------------------------------


def _tls_argument(settings: DatabaseSettings) -> ssl.SSLContext | bool:
    """asyncpg's ``ssl``: a context, or False; never a mode string, never None.

    With a mode or None, asyncpg reads ``PGSSLMODE`` and defaults to ``prefer``, which
    falls back to plaintext and verifies nothing; with a context it does neither.
    """
    context = connect_context(settings)
    return False if context is None else context


def _limits_asked(connect_args: Mapping[str, Any]) -> dict[str, str]:
    """The server settings the login asks for, as pg_settings shows them when in force."""
    return {
        name: value
        for name, value in connect_args["server_settings"].items()
        if name != "application_name"
    }


async def _check_created_connection(
    backend: PostgreSQL, connection: Any, *, read_only: bool
) -> None:
    # connect_args() builds no new TLS context: the same files give the cached one.
    expected = backend.connect_args(read_only=read_only)
    wanted = _limits_asked(expected)
    rows = await connection.fetch(
        "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[]) "
        "UNION ALL SELECT 'ssl', ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        list(wanted),
        timeout=backend.settings.connect_timeout,
    )
    found = {row["name"]: row["setting"] for row in rows}
    missing = [
        f"{name}={value} (has {found.get(name)})"
        for name, value in wanted.items()
        if found.get(name) != value
    ]
    if expected["ssl"] is not False and found.get("ssl") != "true":
        missing.append("TLS (the connection is not encrypted)")
    config = getattr(connection, "_config", None)
    command_timeout = getattr(config, "command_timeout", None)
    if command_timeout != expected["command_timeout"]:
        missing.append(f"command_timeout={expected['command_timeout']} (has {command_timeout})")
    expected_class = expected.get("connection_class")
    # issubclass: asyncpg's metaclass makes isinstance() true of every asyncpg connection.
    if expected_class is not None and not issubclass(type(connection), expected_class):
        missing.append("the limits in each BEGIN (connection_class, DB_PGBOUNCER=transaction)")
    if (
        expected.get("statement_cache_size") == 0
        and getattr(getattr(connection, "_stmt_cache", None), "get_max_size", lambda: 0)()
    ):
        missing.append("statement_cache_size=0 (DB_PGBOUNCER=transaction)")
    if missing:
        raise ConfigurationError(
            "async_creator=: its connection runs without " + ", ".join(missing) + "; pass the "
            "keyword arguments the creator receives on to asyncpg.connect (or the connector)"
        )
