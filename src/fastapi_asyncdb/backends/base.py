"""The small protocol every backend implements, and what all of them share.

A backend is one database with its one async driver. It knows what nothing above it
should: how to connect (connect arguments, per-connection setup), how to ping, whether
the fast path may hand statements to its driver, and what its driver's errors mean
(``classify``). Everything above the backends works with ``ErrorKind`` and the
settings only.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import TextClause
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ..errors import (
    DatabaseNotStartedError,
    DatabaseUnavailableError,
    ErrorKind,
    ReadOnlySessionError,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..settings import DatabaseSettings

__all__ = [
    "TRANSACTION_POOLER",
    "Backend",
    "ConnectionLimits",
    "ServerFacts",
    "driver_error",
    "milliseconds",
    "poll_migration_lock",
]

MIGRATION_LOCK_POLL_INTERVAL = 0.2

TRANSACTION_POOLER = "a transaction pooler"
"""How a pooler's description begins when transaction pooling is certain."""


@dataclass(frozen=True)
class ConnectionLimits:
    """What bounds the connections this client may open, as the server (or pooler) says.

    Read at startup for the connection budget and by the doctor: one reading, so the
    two never disagree.
    """

    max_connections: int | None
    """Connections accepted in all; None when a pooler stands between and does not say."""
    reserved: int = 0
    """Of those, the ones this client cannot have (kept for superusers, say)."""
    reserved_detail: str = ""
    """Where ``reserved`` comes from, e.g. the server settings that add up to it."""
    account_limit: int | None = None
    """A tighter limit on this role or database (CONNECTION LIMIT, max_user_connections)."""
    account_limit_detail: str = ""
    in_use: int | None = None
    """Client connections open on the server now, this reading's own included."""
    limited_by: str = "the server"
    """Whose limits these are: ``the server``, or the pooler's (max_client_conn)."""
    pooler: str | None = None
    """The pooler or proxy seen between the client and the server, described."""
    not_in_force: tuple[str, ...] = ()
    """Server-side limits the settings ask for that the connection runs without, each
    described (``statement_timeout=5000 (has 0)``)."""

    @property
    def transaction_pooler(self) -> bool:
        """Whether transaction pooling was seen for certain (not merely a pooler)."""
        return self.pooler is not None and self.pooler.startswith(TRANSACTION_POOLER)


@dataclass
class ServerFacts:
    """What the server says about itself and about this connection, for the doctor."""

    product: str
    """Server name and version, e.g. ``PostgreSQL 15.4``."""
    tls: bool | None = None
    """Whether this connection is encrypted; None where that does not apply."""
    tls_detail: str = ""
    timeouts: dict[str, float | None] = field(default_factory=dict)
    """The limits in force on this connection, in seconds, by setting name; None: off."""
    limits: ConnectionLimits | None = None
    """What bounds this client's connections; None where nothing does (SQLite)."""
    superuser: bool | None = None
    owns_schema: bool | None = None
    pooler: str | None = None
    """A pooler or proxy seen between the client and the server, described."""


class Backend:
    """One database and its async driver, for one ``DatabaseSettings``.

    A new backend is a module in this package with a subclass that sets the class
    attributes and overrides what differs; the registry finds it by ``dialects`` and
    ``driver``. A second driver of one database is a backend of its own, which may
    subclass the first and set ``driver``, ``extra`` and what else differs.
    """

    name: ClassVar[str]
    """The backend's name in settings and reports: ``postgresql``, ``mysql``, ``sqlite``."""
    dialects: ClassVar[tuple[str, ...]]
    """SQLAlchemy backend names served (``mysql`` and ``mariadb`` share one backend)."""
    driver: ClassVar[str]
    """The async driver served, as in ``postgresql+asyncpg://``: one per backend class."""
    extra: ClassVar[str]
    """The package extra that installs the driver: ``pip install 'fastapi-asyncdb[extra]'``."""
    sync_default_driver: ClassVar[str]
    """What SQLAlchemy picks when the URL names no driver (a sync one)."""
    single_writer: ClassVar[bool] = False
    """Only one write transaction at a time (SQLite): writers queue in the gate."""
    fast_path: ClassVar[bool] = False
    """The driver may run compiled statements itself (``Prepared``, ``run_statement``)."""
    connect_timeout_bounds_login: ClassVar[bool] = True
    """The driver's connect timeout covers the whole login, not only the TCP connect."""
    limits_connections: ClassVar[bool] = False
    """The server caps its connections (``connection_limits`` reads the caps)."""
    owned_connect_arguments: ClassVar[Mapping[str, str]] = {}
    """Connect arguments the library sets, by the setting that controls each (nested ones
    as ``server_settings.name``): ``connect_args=`` may not set them. Whatever else
    ``connect_args()`` returns is refused too, as set by the library."""

    transaction_arguments: ClassVar[frozenset[str]] = frozenset()
    """Driver arguments that take transactions out of the library's hands (autocommit):
    refused in ``connect_args=`` and in the URL's query, whatever their value."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.pooler_reported = False
        """Whether the start already warned of a pooler: the engines need not again."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}+{self.driver}>"

    def check_url(self, url: URL) -> None:
        """Raise ``ValueError`` saying what to change if this backend cannot use ``url``."""

    def prepare(self) -> None:
        """Run once before the engines are created (e.g. make the SQLite file's folder)."""

    @property
    def autocommit_reads(self) -> bool:
        """Whether the read engine runs each statement in autocommit (no transaction).

        False where the server-side limits or read-only mode hold only inside a
        transaction (PostgreSQL behind PgBouncer's transaction pooling): reads then run
        in read-only transactions.
        """
        return True

    def write_fast_path_off_reason(self) -> str | None:
        """Why ``run_statement`` must leave every write to SQLAlchemy with these
        settings, or None when its fast path may run."""
        return None

    def connect_failure_hint(self, reason: str) -> str:
        """Advice appended to a connect failure's ``reason`` ('' for none)."""
        return ""

    def connect_args(self, *, read_only: bool) -> dict[str, Any]:
        """The driver's connect arguments: timeouts and server-side session settings."""
        return {}

    def install_connection_setup(
        self, engine: Engine, *, read_only: bool, set_session: bool = True
    ) -> None:
        """Per-connection setup that connect arguments cannot express (engine events).

        ``set_session=False`` (the probe's engine) leaves out commands that change the
        server session beyond the connection's own transactions: behind a transaction
        pooler the session is shared, and the start checks must change nothing on it.
        """

    def connect_args_problems(self, connect_args: Mapping[str, Any]) -> list[str]:
        """What in ``connect_args=`` the driver cannot take, each said for people; checked
        at construction, as the URL's query is, when no ``async_creator`` takes them."""
        return []

    async def check_created_connection(self, driver_connection: Any, *, read_only: bool) -> None:
        """Refuse a connection made by an ``async_creator`` that lacks the library's limits.

        Raise ``ConfigurationError`` saying what is missing; the caller closes the
        connection. What ``install_connection_setup`` applies after connecting needs no
        check.
        """

    def ping(self, dialect: Dialect, dbapi_connection: Any, *, timeout: float) -> None:
        """Check that a connection still works; raise if it does not.

        Runs in SQLAlchemy's greenlet (a pool event or ``run_sync``). The default is
        the dialect's own ping, bounded by the driver's command timeout.
        """
        dialect.do_ping(dbapi_connection)

    def describe_server(self, connection: Connection) -> ServerFacts:
        """Ask the server about itself (for ``fastapi-asyncdb doctor``); run in ``run_sync``."""
        return ServerFacts(
            product=f"{connection.dialect.name} {connection.dialect.server_version_info}"
        )

    def connection_limits(self, connection: Connection) -> ConnectionLimits | None:
        """What bounds this client's connections (when ``limits_connections``); run in
        ``run_sync``, on a connection of its own: it may commit."""
        return None

    def limits_not_in_force(self, connection: Connection) -> tuple[str, ...]:
        """The server-side limits the login asked for that this connection (the read
        engine's kind) runs without, read back from the server; run in ``run_sync``."""
        return ()

    def classify(self, error: BaseException) -> ErrorKind:
        """The kind of a failure: the library's own errors, SQLAlchemy's, the driver's."""
        if isinstance(error, ReadOnlySessionError):
            return ErrorKind.READ_ONLY
        if isinstance(error, DatabaseUnavailableError | DatabaseNotStartedError | PoolTimeoutError):
            return ErrorKind.UNAVAILABLE
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return ErrorKind.UNAVAILABLE
        # SQLAlchemy's wrapper, or the DBAPI error itself (as handle_error events see it).
        kind = self.classify_driver_error(driver_error(error))
        if kind is not None:
            return kind
        if isinstance(error, IntegrityError):
            return ErrorKind.CONFLICT
        return ErrorKind.OTHER

    def classify_driver_error(self, error: BaseException) -> ErrorKind | None:
        """The kind of a DBAPI error by its code, or None when the code says nothing."""
        return None

    def refused_at_login(self, error: BaseException) -> bool:
        """Whether a failed connect was the server answering no (too many connections, a
        refused login, no such database) rather than the server not answering."""
        return any(self.login_refusal(item) for item in _chain(error))

    def login_refusal(self, error: BaseException) -> bool:
        """Whether this one error of a failed connect's chain is the server's refusal."""
        return False

    async def acquire_migration_lock(
        self, connection: AsyncConnection, name: str, *, wait: float
    ) -> bool:
        """Take the lock that lets one process at a time migrate the database.

        ``name`` is the same in every process migrating this database. The lock belongs
        to the connection's session until ``release_migration_lock``, or until the
        connection closes, so a process that dies cannot keep it. Waits at most ``wait``
        seconds (0: one attempt); False if another session still holds it then.
        """
        raise NotImplementedError(f"{self.name} has no migration lock")

    async def release_migration_lock(self, connection: AsyncConnection, name: str) -> None:
        """Give back the lock that ``acquire_migration_lock`` took on ``connection``."""
        raise NotImplementedError(f"{self.name} has no migration lock")


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        item = pending.pop()
        if item is None or any(item is known for known in seen):
            continue
        seen.append(item)
        pending.extend((item.__cause__, item.__context__, getattr(item, "orig", None)))
    return seen


def driver_error(error: BaseException) -> Any:
    """The DBAPI exception inside SQLAlchemy's wrapper (or the error itself)."""
    return error.orig if isinstance(error, DBAPIError) else error


def check_query_parameters(
    url: URL,
    connect: Callable[..., Any],
    *,
    also: Collection[str] = (),
    numbers: Collection[str] = (),
) -> None:
    """Refuse URL query parameters the driver's ``connect`` would fail every connection
    with: a name it does not take, or one of ``numbers`` (which it would get as a
    string). TLS parameters (``ssl*``, ``tls*``) are the tls module's to judge."""
    accepted = {*inspect.signature(connect).parameters, *also}
    driver = connect.__module__.partition(".")[0]
    for key in url.query:
        if key.lower().startswith(("ssl", "tls")):
            continue
        if key not in accepted:
            raise unknown_query_parameter(key, accepted, driver)
        if key in numbers:
            raise ValueError(
                f"has the query parameter {key!r}, which {driver} would get as a string and "
                f"fail every connection with: give it as a number in connect_args= instead"
            )


def connect_args_problems(
    connect_args: Mapping[str, Any], connect: Callable[..., Any], *, also: Collection[str] = ()
) -> list[str]:
    """What in ``connect_args=`` the driver's ``connect`` would fail every connection with
    (a TypeError each request): a name it does not take, or a value whose type is not
    that of the parameter's default (a number given as a string, say)."""
    parameters = inspect.signature(connect).parameters
    accepted = {*parameters, *also}
    taker = f"{connect.__module__.partition('.')[0]}.connect"
    problems = []
    for name, value in connect_args.items():
        if name not in accepted:
            close = difflib.get_close_matches(name, sorted(accepted), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(
                f"connect_args=: {name} is not an argument of {taker}{hint}: every "
                "connection would fail"
            )
            continue
        parameter = parameters.get(name)
        expected = None if parameter is None else _expected_type(parameter.default)
        if expected is not None and not _fits(value, expected):
            problems.append(
                f"connect_args=: {name} is a {type(value).__name__}, where {taker} takes "
                f"{expected}: every connection would fail"
            )
    return problems


def _expected_type(default: object) -> str | None:
    """What a parameter takes, judged by its default; None when the default says nothing."""
    if isinstance(default, bool):
        return "a bool"
    if isinstance(default, int | float):
        return "a number"
    if isinstance(default, str):
        return "a str"
    return None


def _fits(value: object, expected: str) -> bool:
    if expected == "a bool":
        return isinstance(value, bool | int)
    if expected == "a number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def unknown_query_parameter(
    key: str, accepted: Collection[str], taker: str, *, consequence: str = ""
) -> ValueError:
    """The refusal of a URL query parameter ``taker`` does not take, with the closest
    name it does take."""
    close = difflib.get_close_matches(key, sorted(accepted), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ValueError(
        f"has the query parameter {key!r}, which {taker} does not take{hint}: "
        + (consequence or "every connection would fail")
    )


def milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


async def poll_migration_lock(
    connection: AsyncConnection,
    attempt: TextClause,
    parameters: dict[str, Any],
    *,
    wait: float,
) -> bool:
    """Run ``attempt``, a try-lock that answers at once, until it answers true or ``wait``
    seconds have passed.

    Polling, not the server's own blocking wait: a wait in the server is one long
    statement, which the statement timeout, the driver's command timeout and an
    idle-in-transaction limit would each end; short attempts stay within all of them,
    and the wait can be cancelled between two.
    """
    deadline = time.monotonic() + wait
    while True:
        taken = (await connection.execute(attempt, parameters)).scalar()
        # The lock is the session's and outlives the transaction, which must not stay
        # open: Alembic begins its own, and the server ends sessions idle in one.
        await connection.commit()
        if taken:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(MIGRATION_LOCK_POLL_INTERVAL, remaining))
