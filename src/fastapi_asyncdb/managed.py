"""The escape hatch for managed databases, fenced so that it cannot undo the safety settings.

What settings cannot express is given in code: more driver arguments (``connect_args=``),
a password or token fetched for each new connection (``password=``), and connections
made by code of your own, such as a cloud connector (``async_creator=``). The library's
own connect arguments (timeouts, server-side limits, read-only mode, TLS) are not
``connect_args``' to change: each is refused at construction, naming its setting. A
creator is called with those arguments, and the connection it returns is checked for
them before anything runs on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from . import _compat, redaction
from .errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

    from .backends import Backend
    from .settings import DatabaseSettings

__all__ = [
    "AsyncCreatorError",
    "NewConnections",
    "PasswordProviderError",
    "check_connect_options",
    "merged_connect_args",
]


class PasswordProviderError(Exception):
    """The ``password=`` provider failed or hung: no connection can be made without it."""


class AsyncCreatorError(Exception):
    """The ``async_creator`` failed with an error of its own (not the driver's)."""


# Token services' and connectors' errors quote what they sent: a refresh token, a
# signed URL, a key. Only the class is told, at every level, and the error is not
# chained (a traceback would print it).
_MESSAGE_WITHHELD = "its message is not shown: it may hold a credential"


def check_connect_options(settings: DatabaseSettings, backend: Backend) -> None:
    """Refuse code-only options that would override what the settings decide."""
    owned = dict(backend.owned_connect_arguments)
    for read_only in (False, True):
        for name in _argument_names(backend.connect_args(read_only=read_only)):
            owned.setdefault(name, "fastapi-asyncdb itself")
    # Compared without case: PostgreSQL's parameter names ignore it, and the last one
    # of a name given twice wins.
    owned = {name.lower(): controller for name, controller in owned.items()}
    nested = {name.partition(".")[0] for name in owned if "." in name}
    problems = []
    for name, value in settings.connect_args.items():
        if name.lower() in nested and not isinstance(value, Mapping):
            problems.append(
                f"connect_args=: {name} must be a mapping of extra entries; the library's "
                "own entries stay (it would replace them all)"
            )
    for name in _argument_names(settings.connect_args):
        key = name.lower()
        controller = owned.get(key) or owned.get(key.partition(".")[0])
        if controller is not None:
            problems.append(f"connect_args=: {name} is set by {controller}; set it there, not here")
    if settings.async_creator is None:
        # A creator takes its own arguments (a connector's ip_type, say): its to judge.
        problems.extend(backend.connect_args_problems(settings.driver_connect_args))
    problems.extend(_transaction_problems(settings, backend))
    problems.extend(_serializer_problems(settings, backend))
    if settings.password is not None and backend.name == "sqlite":
        problems.append("password=: SQLite has no password")
    if problems:
        raise ConfigurationError("Invalid database settings:\n  " + "\n  ".join(problems))


def _transaction_problems(settings: DatabaseSettings, backend: Backend) -> Iterator[str]:
    """Refuse what would make each statement commit alone, whatever its value (a string
    ``false`` in a URL is true to the driver)."""
    given = [("connect_args=", name) for name in settings.connect_args]
    given += [("DATABASE_URL (url)", name) for name in settings.sqlalchemy_url.query]
    for where, name in given:
        if name.lower() in backend.transaction_arguments:
            yield (
                f"{where}: {name} takes transactions out of fastapi-asyncdb's hands (each "
                "statement would commit alone, and an error or a 4xx could not roll back); "
                "remove it. For work that must not run in a transaction, use "
                "db.engine.execution_options(isolation_level='AUTOCOMMIT')"
            )


def _serializer_problems(settings: DatabaseSettings, backend: Backend) -> Iterator[str]:
    """Refuse a JSON serializer that returns bytes (``orjson.dumps``) where the driver
    refuses them on every JSON write: asyncpg. (MariaDB and SQLite store them.)"""
    serializer = settings.json_serializer
    if serializer is None or backend.name != "postgresql":
        return
    try:
        sample = serializer({"a": [1, "b", None]})
    except Exception:
        return  # not ours to judge on a sample it cannot take
    if not isinstance(sample, str):
        yield (
            f"json_serializer=: returns {type(sample).__name__}, not str, and asyncpg would "
            "fail every JSON write; decode it (lambda value: orjson.dumps(value).decode())"
        )


def merged_connect_args(library: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The library's connect arguments with ``extra`` added (nested mappings merged)."""
    merged = dict(library)
    for key, value in extra.items():
        mine = merged.get(key)
        if isinstance(mine, Mapping) and isinstance(value, Mapping):
            merged[key] = {**mine, **value}
        else:
            merged[key] = value
    return merged


class NewConnections:
    """Makes each new DBAPI connection of one engine, in SQLAlchemy's ``do_connect``.

    The password provider is asked for every new connection; an ``async_creator`` gets
    the arguments the driver would have got, and its connection is checked.
    """

    def __init__(self, settings: DatabaseSettings, backend: Backend, *, read_only: bool) -> None:
        self._settings = settings
        self._backend = backend
        self._read_only = read_only

    def connect(self, dialect: Dialect, cargs: Any, cparams: Mapping[str, Any]) -> Any:
        """Run in SQLAlchemy's greenlet; returns the DBAPI connection."""
        settings = self._settings
        # A copy: SQLAlchemy keeps cparams for every connection, and a token must not
        # stay there.
        params = dict(cparams)
        try:
            if settings.password is not None:
                params["password"] = self._current_password()
            if settings.async_creator is not None:
                if params.get("ssl") is False:
                    # "No TLS" is the library's default for its own connects; a
                    # connector brings its own transport.
                    del params["ssl"]
                params["async_creator_fn"] = self._create
            elif not self._backend.connect_timeout_bounds_login:
                params["async_creator_fn"] = self._connect_within_deadline
            return dialect.connect(*cargs, **params)
        except Exception as error:
            # params, not SQLAlchemy's cparams: they hold the provider's password.
            redaction.redact_connect_error(error, params)
            raise

    def _current_password(self) -> str:
        provider = self._settings.password
        if isinstance(provider, SecretStr):
            return provider.get_secret_value()
        failure = None
        try:
            password = _compat.await_in_greenlet(self._ask(provider))
        except TimeoutError:
            failure = (
                f"the password provider did not answer within "
                f"{self._settings.connect_timeout:g} s (DB_CONNECT_TIMEOUT)"
            )
        except Exception as error:
            failure = f"the password provider failed: {type(error).__name__} ({_MESSAGE_WITHHELD})"
        else:
            if not isinstance(password, str):
                # The type alone: the value may be the token itself (bytes, say).
                failure = (
                    f"the password provider returned {type(password).__name__}, not str "
                    "(its value is not shown: it may hold a credential)"
                )
        if failure is not None:
            # Raised outside the handler, so that not even __context__ holds the error.
            raise PasswordProviderError(failure) from None
        assert isinstance(password, str)
        return password

    async def _ask(self, provider: Any) -> object:
        async with asyncio.timeout(self._settings.connect_timeout):
            if _is_async(provider):
                password = await provider()
            else:
                # A plain function may block (an HTTPS call to a token service): in a
                # thread, so the event loop serves meanwhile and the timeout holds.
                password = await _PROVIDER_CALLS.result(provider)
        return password

    async def _connect_within_deadline(self, *args: Any, **arguments: Any) -> Any:
        """The driver's own connect, the server's greeting and the login included, within
        ``connect_timeout`` (asyncmy's own timeout covers the TCP connect only)."""
        connect = importlib.import_module(self._backend.driver).connect
        async with asyncio.timeout(self._settings.connect_timeout):
            return await connect(*args, **arguments)

    async def _create(self, *args: Any, **arguments: Any) -> Any:
        async with asyncio.timeout(self._settings.connect_timeout):
            connection = await self._call_creator(*args, **arguments)
            try:
                await self._backend.check_created_connection(connection, read_only=self._read_only)
            except BaseException:
                await _close(connection)
                raise
        return connection

    async def _call_creator(self, *args: Any, **arguments: Any) -> Any:
        """The creator's connection; its own errors named by their class alone.

        The driver's errors and the network's pass on as they are: they describe the
        server, and are redacted as every connect failure is.
        """
        creator = self._settings.async_creator
        assert creator is not None
        failure = None
        try:
            return await creator(*args, **arguments)
        except (OSError, TimeoutError):
            raise
        except Exception as error:
            if type(error).__module__.partition(".")[0] == self._backend.driver:
                raise
            failure = f"the async_creator failed: {type(error).__name__} ({_MESSAGE_WITHHELD})"
        raise AsyncCreatorError(failure)


def _is_async(provider: Any) -> bool:
    # An object with an async __call__ is async too, though iscoroutinefunction says no.
    return inspect.iscoroutinefunction(provider) or inspect.iscoroutinefunction(
        type(provider).__call__
    )


class _ProviderCall:
    """One call of a sync provider, in a thread of its own, awaited by every caller that
    needs a password meanwhile."""

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[object] = concurrent.futures.Future()
        self.awaited: asyncio.Future[object] | None = None
        """What a provider returned that must itself be awaited, awaited once for all."""

    async def result(self) -> object:
        # Shielded: a caller's timeout must not cancel the call the others wait for.
        value = await asyncio.shield(asyncio.wrap_future(self.future))
        if not inspect.isawaitable(value):
            return value
        if self.awaited is None:
            self.awaited = asyncio.ensure_future(value)
        return await asyncio.shield(self.awaited)


class _ProviderCalls:
    """The library's own threads for sync password providers: at most one call in flight
    per provider.

    A thread cannot be cancelled: a provider stuck on a dead token service keeps its
    thread until it returns. In the event loop's default executor, a few such calls
    would take every thread, and with them DNS (``getaddrinfo``) and every
    ``to_thread`` of the app, and new calls would queue behind them after the service
    recovered. Here a stuck provider holds one thread, callers wait for its call (within
    their connect timeout), and the next connection after it returns calls again. Daemon
    threads: a stuck call must not keep the process from exiting either.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[int, tuple[object, _ProviderCall]] = {}

    def result(self, provider: Callable[[], object]) -> Awaitable[object]:
        with self._lock:
            # By identity (a provider need not be hashable); the entry holds the provider,
            # so its id cannot be reused while the call runs.
            entry = self._in_flight.get(id(provider))
            if entry is None:
                entry = (provider, _ProviderCall())
                self._in_flight[id(provider)] = entry
                threading.Thread(
                    target=self._run,
                    args=(provider, entry[1]),
                    name="fastapi-asyncdb password provider",
                    daemon=True,
                ).start()
        return entry[1].result()

    def _run(self, provider: Callable[[], object], call: _ProviderCall) -> None:
        try:
            value = provider()
        except BaseException as error:
            self._done(provider)
            call.future.set_exception(error)
        else:
            self._done(provider)
            call.future.set_result(value)

    def _done(self, provider: object) -> None:
        # Before the result is out: a caller it wakes that needs another password starts
        # a new call rather than getting this one again.
        with self._lock:
            del self._in_flight[id(provider)]


_PROVIDER_CALLS = _ProviderCalls()


async def _close(driver_connection: Any) -> None:
    # asyncmy's close() drops the socket at once; ensure_closed() says goodbye first.
    close = getattr(driver_connection, "ensure_closed", None) or driver_connection.close
    try:
        result = close()
        if inspect.isawaitable(result):
            await result
    except Exception:
        terminate = getattr(driver_connection, "terminate", None)
        if terminate is not None:
            terminate()


def _argument_names(arguments: Mapping[str, Any]) -> Iterator[str]:
    """Each argument's name, and ``name.key`` for each key of a nested mapping."""
    for name, value in arguments.items():
        if isinstance(value, Mapping):
            yield from (f"{name}.{key}" for key in value)
        else:
            yield name
