"""Build SQLAlchemy's own ``AsyncEngine`` from the settings, with the safety the recipe lacks."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine, ExceptionContext
from sqlalchemy.ext import asyncio as sqlalchemy_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from . import pool_noise, redaction, statements
from .backends import Backend
from .connection_health import ConnectionHealth
from .errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    ErrorKind,
    ReadOnlySessionError,
    UnavailableCause,
)
from .managed import AsyncCreatorError, NewConnections, PasswordProviderError, merged_connect_args
from .metrics import RoleMetrics
from .prepared import keep_write_fast_path_off
from .settings import DatabaseSettings
from .tls import tls_request, url_without_tls

__all__ = ["create_engine", "health_rules"]

_MISCONFIGURATION = (TypeError, AttributeError, ImportError)


def health_rules(
    settings: DatabaseSettings,
    backend: Backend,
    dialect: Dialect,
    metrics: RoleMetrics | None = None,
) -> ConnectionHealth:
    """The health rules of the settings, with the backend's own ping."""

    def ping(dbapi_connection: Any) -> None:
        backend.ping(dialect, dbapi_connection, timeout=settings.health_timeout)

    return ConnectionHealth(
        ping=ping if settings.pool_pre_ping else None,
        ping_after_idle=settings.pre_ping_after_idle,
        recycle=settings.pool_recycle,
        metrics=metrics,
    )


def create_engine(
    settings: DatabaseSettings,
    backend: Backend,
    *,
    read_only: bool,
    on_connect_failure: Callable[[BaseException], None] | None = None,
    metrics: RoleMetrics | None = None,
    set_session: bool = True,
) -> tuple[AsyncEngine, ConnectionHealth]:
    """An engine for the primary (read-write) or the read-only role, and its health rules.

    ``on_connect_failure`` is called with the error when a new connection cannot be
    made, which is how the breaker learns that the database is down. ``set_session``
    False makes connections that change nothing on the server's session
    (``Backend.install_connection_setup``).
    """
    # The URL's TLS parameters are in the backend's connect arguments, translated.
    url = url_without_tls(settings.sqlalchemy_url)
    connect_args = merged_connect_args(
        backend.connect_args(read_only=read_only), settings.driver_connect_args
    )
    # Engine reprs and logs print the URL's query string in clear; secrets travel
    # as connect arguments instead, where nothing prints them.
    secrets = {key: value for key, value in url.query.items() if redaction.is_secret_query_key(key)}
    if secrets:
        url = url.difference_update_query(secrets)
        connect_args.update(secrets)
    options: dict[str, Any] = {"connect_args": connect_args}
    if settings.json_serializer is not None:
        options["json_serializer"] = settings.json_serializer
    if settings.json_deserializer is not None:
        options["json_deserializer"] = settings.json_deserializer
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
        if read_only and backend.autocommit_reads:
            # An autocommit connection has no transaction to roll back when returned.
            options["pool_reset_on_return"] = None
    if read_only and backend.autocommit_reads:
        # No BEGIN/ROLLBACK round trips: each statement is its own snapshot.
        options["isolation_level"] = "AUTOCOMMIT"
        # Ending the autobegun transaction of an autocommit connection would still send
        # a ROLLBACK on some drivers (asyncmy): a round trip for nothing.
        options["skip_autocommit_rollback"] = True
    # Looked up at each call: an instrumentation that wraps create_async_engine
    # (OpenTelemetry's) after this module was imported still sees the engines.
    engine = sqlalchemy_asyncio.create_async_engine(
        url,
        echo=settings.echo,
        echo_pool=settings.echo_pool,
        hide_parameters=settings.hide_parameters,
        **options,
    )
    sync_engine = engine.sync_engine
    fast_path_off = backend.write_fast_path_off_reason()
    if fast_path_off is not None:
        keep_write_fast_path_off(sync_engine.dialect, fast_path_off)
    health = health_rules(settings, backend, sync_engine.dialect, metrics)
    health.install(sync_engine)
    if metrics is not None:
        metrics.watch(sync_engine)
    backend.install_connection_setup(sync_engine, read_only=read_only, set_session=set_session)
    _install_connect_guard(
        sync_engine,
        settings,
        backend,
        NewConnections(settings, backend, read_only=read_only),
        on_connect_failure,
    )
    if settings.hide_parameters:
        redaction.install_parameter_redaction(sync_engine)
    _install_error_translation(sync_engine, settings, backend, read_only=read_only)
    statements.watch_engine(
        sync_engine,
        role="read" if read_only else "primary",
        slow_threshold=settings.slow_statement_threshold,
        metrics=metrics,
    )
    pool_noise.install(sync_engine.pool)
    return engine, health


def _install_connect_guard(
    engine: Engine,
    settings: DatabaseSettings,
    backend: Backend,
    connections: NewConnections,
    on_connect_failure: Callable[[BaseException], None] | None,
) -> None:
    """Make each new connection; raise a failure as ``DatabaseUnavailableError``, saying why.

    Drivers raise bare ``OSError`` or ``TimeoutError`` here, which SQLAlchemy passes
    through unwrapped and unlogged. The message names the host, the user and the
    driver's reason; ``connections`` has taken the secrets out of the error.
    """

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return connections.connect(dialect, cargs, cparams)
        except (*_MISCONFIGURATION, ConfigurationError):
            raise  # a wrong connect argument is a bug to see, not an outage to wait out
        except UnicodeError:
            # str() of a UnicodeError quotes the text it could not encode: a password.
            raise ConfigurationError(
                "a connect argument (the password?) holds characters the driver cannot "
                "send (asyncmy sends passwords as Latin-1)"
            ) from None
        except Exception as error:
            redaction.redact_connect_error(error, cparams)
            failure = DatabaseUnavailableError(
                connect_failure_reason(error, settings, cparams, backend),
                retry_after=settings.unavailable_retry_after,
                # Hosts, users and the driver's words are for the logs, not for clients.
                detail="the database cannot be reached",
                cause=UnavailableCause.UNREACHABLE,
            )
            # The breaker fails requests fast while new connections cannot be made at
            # all; a server that answered with a refusal (too many connections, a login
            # refused) is up, and units on the pool's open connections can still work.
            if on_connect_failure is not None and not backend.refused_at_login(error):
                on_connect_failure(failure)
            raise failure from error


def connect_failure_reason(
    error: BaseException,
    settings: DatabaseSettings,
    arguments: Mapping[str, Any],
    backend: Backend | None = None,
) -> str:
    """``cannot connect to the database at host:port as user: why``, for people.

    Host and user help whoever reads it; the error's texts hold no secret by now.
    """
    where = ""
    if arguments.get("host") is not None:
        port = arguments.get("port")
        where += f" at {arguments['host']}" + ("" if port is None else f":{port}")
    if arguments.get("user") is not None:
        where += f" as {arguments['user']}"
    if settings.async_creator is not None:
        where += " (async_creator)"
    why = _why(error, settings)
    if backend is not None:
        why += backend.connect_failure_hint(why)
    return f"cannot connect to the database{where}: {why}"


def _why(error: BaseException, settings: DatabaseSettings) -> str:
    if isinstance(error, PasswordProviderError | AsyncCreatorError):
        return str(error)
    chain = list(_chain(error))
    mode = tls_request(settings).mode
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            message = str(item.verify_message).rstrip(".")
            return f"the server's TLS certificate is refused: {message}" + (
                "; the certificate must name the host connected to"
                if "mismatch" in message
                else "; no CA trusted here signed it (DB_TLS_CA_FILE)"
            )
    if any(isinstance(item, TimeoutError) for item in chain):
        return f"no answer within {settings.connect_timeout:g} s (DB_CONNECT_TIMEOUT)"
    if "rejected SSL upgrade" in str(error):
        return f"the server does not offer TLS, which {mode} requires; nothing was sent"
    for item in chain:
        if isinstance(item, ssl.SSLError):
            reason = str(item.reason or item)
            return f"the TLS handshake failed ({reason})" + _TLS_HINTS.get(reason, "")
    described = _describe(next((item for item in chain if _is_drivers(item)), error))
    if mode == "disable" and "no encryption" in described:
        described += " (the server requires TLS: set DB_TLS, docs/tls.md)"
    return described


_TLS_HINTS = {
    "WRONG_VERSION_NUMBER": ": the server does not speak TLS there",
    "TLSV1_ALERT_UNKNOWN_CA": ": the server does not trust the client certificate's CA",
    "TLSV1_ALERT_CERTIFICATE_REQUIRED": ": the server wants a client certificate",
}


def _is_drivers(error: BaseException) -> bool:
    """Not SQLAlchemy's adaptation of the driver's error, the driver's own."""
    return not type(error).__module__.startswith("sqlalchemy")


def _describe(error: BaseException) -> str:
    """The driver's own words: asyncmy's ``(code, message)`` as ``code message``."""
    args = error.args
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return f"{type(error).__name__} {args[0]}: {args[1]}"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    item: BaseException | None = error
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        yield item
        item = item.__cause__ or item.__context__


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
                cause=UnavailableCause.TIMEOUT,
            )
        if read_only and backend.classify(error) is ErrorKind.READ_ONLY:
            return ReadOnlySessionError(
                "this session is read-only (ReadSessionDep, ReadConnectionDep, "
                "Database.read_session, Database.read_connection); "
                "use SessionDep or Database.transaction() to write"
            )
        return None
