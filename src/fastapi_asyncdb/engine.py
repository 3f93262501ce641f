"""Build SQLAlchemy's own ``AsyncEngine`` from the settings, with the safety the recipe lacks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine, ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection

from . import _compat, drivers, redaction
from .errors import DatabaseUnavailableError, ReadOnlySessionError
from .redaction import is_secret_query_key
from .settings import DatabaseSettings

__all__ = ["BORN_KEY", "create_engine", "make_ping"]

_MISCONFIGURATION = (TypeError, AttributeError, ImportError)
_IDLE_SINCE = "fastapi_asyncdb_idle_since"
# When a pooled connection's driver connection was made (time.time(), as the pool's
# recycle check counts); in its pool entry's ``info``.
BORN_KEY = "fastapi_asyncdb_born"


def create_engine(
    settings: DatabaseSettings,
    *,
    read_only: bool,
    on_connect_failure: Callable[[BaseException], None] | None = None,
) -> AsyncEngine:
    """An engine for the primary (read-write) or the read-only role.

    ``on_connect_failure`` is called with the error when a new connection cannot be
    made, which is how the breaker learns that the database is down.
    """
    url = settings.sqlalchemy_url
    options = drivers.engine_options(settings, read_only=read_only)
    # Engine reprs and logs print the URL's query string in clear; secrets travel
    # as connect arguments instead, where nothing prints them.
    secrets = {key: value for key, value in url.query.items() if is_secret_query_key(key)}
    if secrets:
        url = url.difference_update_query(secrets)
        options["connect_args"] = {**options.get("connect_args", {}), **secrets}

    if settings.pool_class == "NullPool":
        options["poolclass"] = NullPool
    else:
        pool_size, max_overflow = (
            (settings.effective_read_pool_size, settings.effective_read_max_overflow)
            if read_only
            else (settings.pool_size, settings.max_overflow)
        )
        options.update(
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=settings.pool_timeout,
            pool_recycle=-1 if settings.pool_recycle is None else settings.pool_recycle,
        )
        if read_only:
            # An autocommit connection has no transaction to roll back when returned.
            options["pool_reset_on_return"] = None
    if read_only:
        # Ending the autobegun transaction of an autocommit connection would still send
        # a ROLLBACK on some drivers (asyncmy): a round trip for nothing.
        options["skip_autocommit_rollback"] = True
    ping_on_idle = settings.pool_pre_ping and settings.pre_ping_after_idle > 0
    engine = create_async_engine(
        url,
        echo=settings.echo,
        echo_pool=settings.echo_pool,
        hide_parameters=settings.hide_parameters,
        pool_pre_ping=settings.pool_pre_ping and not ping_on_idle,
        **options,
    )
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _stamp_birth(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[BORN_KEY] = time.time()

    drivers.install_connection_setup(sync_engine, settings, read_only=read_only)
    if ping_on_idle:
        _install_ping_after_idle(
            sync_engine, settings.pre_ping_after_idle, timeout=settings.health_timeout
        )
    _install_connect_guard(sync_engine, settings, on_connect_failure)
    if settings.hide_parameters:
        redaction.install_parameter_redaction(sync_engine)
    _install_error_translation(sync_engine, settings, read_only=read_only)
    return engine


def _install_connect_guard(
    engine: Engine,
    settings: DatabaseSettings,
    on_connect_failure: Callable[[BaseException], None] | None,
) -> None:
    """Report a failed connect and raise it as ``DatabaseUnavailableError``.

    Drivers raise bare ``OSError`` or ``TimeoutError`` here, which SQLAlchemy passes
    through unwrapped and unlogged; their text may also name hosts and users.
    """

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except _MISCONFIGURATION:
            raise  # a wrong connect argument is a bug to see, not an outage to wait out
        except Exception as error:
            redaction.redact_connect_error(error, cparams)
            if on_connect_failure is not None:
                on_connect_failure(error)
            raise DatabaseUnavailableError(
                f"cannot connect to the database ({type(error).__name__})",
                retry_after=settings.unavailable_retry_after,
            ) from error


def make_ping(dialect: Dialect, *, timeout: float) -> Callable[[Any], None]:
    """A ping of one DBAPI connection, bounded by ``timeout`` where the driver allows.

    Runs in SQLAlchemy's greenlet context (a pool event or ``run_sync``).
    """

    def ping(dbapi_connection: Any) -> None:
        if dialect.driver != "asyncpg":
            dialect.do_ping(dbapi_connection)
            return
        driver_connection = dbapi_connection.driver_connection
        try:
            _compat.await_in_greenlet(driver_connection.fetchrow(";", timeout=timeout))
        except BaseException:
            # SQLAlchemy closes a discarded connection gracefully, and asyncpg sends a
            # cancel request on a new connection, each waiting for a server that may be
            # gone; this one is known dead.
            driver_connection.terminate()
            raise

    return ping


def _install_ping_after_idle(engine: Engine, idle_seconds: float, *, timeout: float) -> None:
    """Pre-ping only connections that sat idle, as HikariCP does.

    SQLAlchemy's pre-ping costs a round trip (three on a transactional connection)
    at every checkout; a connection returned a moment ago is as good as a pinged one.
    The ping has its own short timeout: on a half-open connection it would otherwise
    hang for the whole command timeout before the pool tried a fresh connection.
    """
    dialect = engine.dialect
    ping = make_ping(dialect, timeout=timeout)

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(
        dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is not None and time.monotonic() - idle_since < idle_seconds:
            return
        try:
            ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and retries the checkout with a new one.
            raise DisconnectionError("stale pooled connection") from error


def _install_error_translation(
    engine: Engine, settings: DatabaseSettings, *, read_only: bool
) -> None:
    backend = settings.backend

    @event.listens_for(engine, "handle_error")
    def _translate(context: ExceptionContext) -> BaseException | None:
        error = context.original_exception
        if type(error) is TimeoutError:
            # asyncpg's command timeout arrives bare, outside SQLAlchemy's hierarchy.
            return DatabaseUnavailableError(
                f"the database did not answer within {settings.command_timeout:g} s",
                retry_after=settings.unavailable_retry_after,
            )
        if read_only and drivers.is_read_only_violation(backend, error):
            return ReadOnlySessionError(
                "this session is read-only (ReadSessionDep, ReadConnectionDep, "
                "Database.read_session, Database.read_connection); "
                "use SessionDep or Database.transaction() to write"
            )
        return None
