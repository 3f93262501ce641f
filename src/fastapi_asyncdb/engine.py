"""Build SQLAlchemy's own ``AsyncEngine`` from the settings, with the safety the recipe lacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from . import redaction
from .backends import Backend
from .connection_health import ConnectionHealth
from .errors import DatabaseUnavailableError, ErrorKind, ReadOnlySessionError
from .settings import DatabaseSettings

__all__ = ["create_engine", "health_rules"]

_MISCONFIGURATION = (TypeError, AttributeError, ImportError)


def health_rules(
    settings: DatabaseSettings, backend: Backend, dialect: Dialect
) -> ConnectionHealth:
    """The health rules of the settings, with the backend's own ping."""

    def ping(dbapi_connection: Any) -> None:
        backend.ping(dialect, dbapi_connection, timeout=settings.health_timeout)

    return ConnectionHealth(
        ping=ping if settings.pool_pre_ping else None,
        ping_after_idle=settings.pre_ping_after_idle,
        recycle=settings.pool_recycle,
    )


def create_engine(
    settings: DatabaseSettings,
    backend: Backend,
    *,
    read_only: bool,
    on_connect_failure: Callable[[BaseException], None] | None = None,
) -> tuple[AsyncEngine, ConnectionHealth]:
    """An engine for the primary (read-write) or the read-only role, and its health rules.

    ``on_connect_failure`` is called with the error when a new connection cannot be
    made, which is how the breaker learns that the database is down.
    """
    url = settings.sqlalchemy_url
    connect_args = backend.connect_args(read_only=read_only)
    # Engine reprs and logs print the URL's query string in clear; secrets travel
    # as connect arguments instead, where nothing prints them.
    secrets = {key: value for key, value in url.query.items() if redaction.is_secret_query_key(key)}
    if secrets:
        url = url.difference_update_query(secrets)
        connect_args.update(secrets)
    options: dict[str, Any] = {"connect_args": connect_args}
    if settings.pool_class == "NullPool":
        options["poolclass"] = NullPool
    else:
        pool_size, max_overflow = (
            (settings.effective_read_pool_size, settings.effective_read_max_overflow)
            if read_only
            else (settings.pool_size, settings.max_overflow)
        )
        # No pool_recycle and no pool_pre_ping: ConnectionHealth applies both rules,
        # here and to warm connections alike.
        options.update(
            pool_size=pool_size, max_overflow=max_overflow, pool_timeout=settings.pool_timeout
        )
        if read_only:
            # An autocommit connection has no transaction to roll back when returned.
            options["pool_reset_on_return"] = None
    if read_only:
        # No BEGIN/ROLLBACK round trips: each statement is its own snapshot.
        options["isolation_level"] = "AUTOCOMMIT"
        # Ending the autobegun transaction of an autocommit connection would still send
        # a ROLLBACK on some drivers (asyncmy): a round trip for nothing.
        options["skip_autocommit_rollback"] = True
    engine = create_async_engine(
        url,
        echo=settings.echo,
        echo_pool=settings.echo_pool,
        hide_parameters=settings.hide_parameters,
        **options,
    )
    sync_engine = engine.sync_engine
    health = health_rules(settings, backend, sync_engine.dialect)
    health.install(sync_engine)
    backend.install_connection_setup(sync_engine, read_only=read_only)
    _install_connect_guard(sync_engine, settings, on_connect_failure)
    if settings.hide_parameters:
        redaction.install_parameter_redaction(sync_engine)
    _install_error_translation(sync_engine, settings, backend, read_only=read_only)
    return engine, health


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


def _install_error_translation(
    engine: Engine, settings: DatabaseSettings, backend: Backend, *, read_only: bool
) -> None:
    @event.listens_for(engine, "handle_error")
    def _translate(context: ExceptionContext) -> BaseException | None:
        error = context.original_exception
        if type(error) is TimeoutError:
            # asyncpg's command timeout arrives bare, outside SQLAlchemy's hierarchy.
            return DatabaseUnavailableError(
                f"the database did not answer within {settings.command_timeout:g} s",
                retry_after=settings.unavailable_retry_after,
            )
        if read_only and backend.classify(error) is ErrorKind.READ_ONLY:
            return ReadOnlySessionError(
                "this session is read-only (ReadSessionDep, ReadConnectionDep, "
                "Database.read_session, Database.read_connection); "
                "use SessionDep or Database.transaction() to write"
            )
        return None
