"""PostgreSQL behind PgBouncer: what changes with each pool mode, and how to tell it is there.

PgBouncer refuses any startup parameter outside its ``ignore_startup_parameters``
(and drops those inside it, unapplied), so the server-side limits cannot travel as
``server_settings``. In session mode a client keeps its server connection for its
whole session: ``SET`` once after connecting holds, until PgBouncer's reset query
(``DISCARD ALL``) when the client leaves, or until a unit of work runs ``RESET ALL``
or ``DISCARD ALL`` itself; so each ``BEGIN`` carries the limits as ``SET LOCAL`` too,
as in transaction mode, and the session's ``SET`` bounds what runs outside a
transaction (autocommit reads, ``run_statement``'s fast path). In transaction mode
the next transaction may meet another server connection: only ``SET LOCAL`` holds,
so the limits ride in ``BEGIN``'s own message (the simple protocol runs several
commands in one message: no round trip added), and a named prepared statement may
be missing on the next server connection, so asyncpg keeps none (its unnamed
statement is parsed again with each execution, in the same message). Reads run in
read-only transactions, where the limits reach them too; ``run_statement``'s fast
path, which writes outside any transaction, is off.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .base import TRANSACTION_POOLER, milliseconds

if TYPE_CHECKING:
    from ..settings import DatabaseSettings

__all__ = [
    "TRANSACTION_MODE_FAST_PATH",
    "begin_limits",
    "connection_class",
    "connects_through_pooler",
    "pooler_seen",
    "refused_startup_parameter_hint",
    "session_limits",
]

logger = logging.getLogger(__name__)

TRANSACTION_MODE_FAST_PATH = (
    "run_statement's fast path is off (DB_PGBOUNCER=transaction): it runs a write outside "
    "a transaction, where PgBouncer's transaction pooling leaves no SET LOCAL to bound it; "
    "SQLAlchemy runs it between BEGIN and COMMIT (Prepared reads keep theirs, inside the "
    "read-only transaction)"
)


def _limits(settings: DatabaseSettings) -> list[tuple[str, int]]:
    """The server-side limits the settings ask for, in milliseconds.

    ``client_connection_check_interval`` is not among them: behind a pooler the server's
    client is PgBouncer, which stays connected when the application goes away.
    """
    return [
        (name, milliseconds(seconds))
        for name, seconds in (
            ("statement_timeout", settings.statement_timeout),
            ("idle_in_transaction_session_timeout", settings.idle_in_transaction_timeout),
        )
        if seconds is not None
    ]


def begin_limits(settings: DatabaseSettings) -> str:
    """What follows ``BEGIN`` in its message behind PgBouncer: the limits.

    (The read engine's ``BEGIN`` says ``READ ONLY`` itself: its adapter is read-only.)
    """
    return "; ".join(f"SET LOCAL {name} = {value}" for name, value in _limits(settings))


def session_limits(settings: DatabaseSettings, *, read_only: bool) -> str:
    """The ``SET`` commands a new connection runs once in session mode ('' for none)."""
    commands = [f"SET {name} = {value}" for name, value in _limits(settings)]
    if read_only:
        commands.append("SET default_transaction_read_only = on")
    return "; ".join(commands)


@cache
def connection_class(after_begin: str, *, read_only: bool) -> type[Any]:
    """An asyncpg connection class whose ``BEGIN`` carries ``after_begin`` along.

    asyncpg's ``Transaction.start()``, which SQLAlchemy's adapter calls for every
    transaction, sends ``BEGIN`` (with its isolation level, READ ONLY...) through
    ``execute`` without arguments, that is in the simple protocol. One class per text:
    asyncpg takes a class, not an instance, and the text lives on it.

    On the read engine, a ``ROLLBACK`` that meets a closed connection succeeds: the
    read-only transaction ended with the connection, and the read's answer may already
    be on its way to the client; the pool then discards the connection at checkout.
    So does one that meets a connection the server is ending: its FATAL (PgBouncer's
    "server conn crashed?", idle_in_transaction_session_timeout) read before the
    connection's end leaves asyncpg consuming an error no operation asked for, and it
    refuses the ``ROLLBACK`` with an ``InternalClientError`` ("cannot switch to state
    15; another operation (2) is in progress") and closes the connection.
    """
    import asyncpg  # the driver: imported when a PgBouncer engine is made
    from asyncpg.transaction import Transaction

    class ReadTransaction(Transaction):  # type: ignore[misc]
        __slots__ = ()

        async def rollback(self) -> None:
            try:
                if not self._connection.is_closed():
                    await super().rollback()
            except (
                asyncpg.ConnectionDoesNotExistError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ):
                if not self._connection.is_closed():
                    raise

    async def execute(
        self: asyncpg.Connection,
        query: str,
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109 - asyncpg's own signature
    ) -> str:
        if not args and after_begin and query.startswith("BEGIN"):
            query = f"{query.rstrip().rstrip(';')}; {after_begin}"
        return str(await asyncpg.Connection.execute(self, query, *args, timeout=timeout))

    def transaction(
        self: asyncpg.Connection,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> Transaction:
        self._check_open()
        return ReadTransaction(self, isolation, readonly, deferrable)

    attributes: dict[str, Any] = {"execute": execute, "__doc__": "BEGIN sends the limits."}
    if read_only:
        attributes["transaction"] = transaction
    return type("PgBouncerTransactionConnection", (asyncpg.Connection,), attributes)


async def connects_through_pooler(driver_connection: Any, *, timeout: float) -> bool:  # noqa: ASYNC109
    """Whether a pooler answers for the server on this asyncpg connection.

    The server names its process in the cancel key it sends at login, and PgBouncer
    hands out a key of its own, so the two process ids differ; a plain TCP proxy passes
    the server's key on unchanged.
    """
    try:
        backend_pid = await driver_connection.fetchval("SELECT pg_backend_pid()", timeout=timeout)
    except Exception as error:
        # asyncpg's named statement met another server connection: transaction pooling.
        # Any other failure is not this check's to report: the connection's first use
        # meets it again.
        return "prepared statement" in str(error)
    return bool(driver_connection.get_server_pid() != backend_pid)


def pooler_seen(connection: Connection) -> str | None:
    """A transaction pooler hands an idle server session to any client; PgBouncer gives
    its own process id at login; a proxy or pooler of any kind listens on a port other
    than the server's."""
    if connection.in_transaction():
        connection.commit()
    pids = set()
    for _ in range(3):
        with connection.begin():
            pids.add(connection.execute(text("SELECT pg_backend_pid()")).scalar())
    if len(pids) > 1:
        return f"{TRANSACTION_POOLER} (each transaction met another server session)"
    driver_connection: Any = connection.connection.driver_connection
    if driver_connection.get_server_pid() not in pids:
        # An idle PgBouncer serves each transaction of one client from the same server
        # connection, so the loop above proves nothing; two clients open at once do.
        # (Asked only here: a direct start pays no second login.)
        if _second_client_shares_session(connection, pids):
            return f"{TRANSACTION_POOLER} (two client connections met one server session)"
        return "a pooler, PgBouncer say (the login named a process other than the server's)"
    server_port = connection.execute(text("SELECT inet_server_port()")).scalar()
    client_port = connection.engine.url.port or 5432
    if server_port is not None and int(server_port) != client_port:
        return f"a proxy or pooler (port {client_port} leads to the server's port {server_port})"
    return None


def _second_client_shares_session(connection: Connection, pids: set[Any]) -> bool:
    """Whether another client connection, opened while this one idles between
    transactions, meets this one's server session.

    A transaction pooler gives the new client's transaction an idle server connection,
    and the one this client just released is the first it picks (PgBouncer reuses the
    most recently released unless ``server_round_robin``): same process id, two clients,
    conclusive. A session pooler keeps that server connection for this client while it
    stays connected, and a direct connection is a process of its own: never the same.
    A different id proves nothing (another client may have taken the idle one).
    """
    try:
        with connection.engine.connect() as other:
            other_pid = other.execute(text("SELECT pg_backend_pid()")).scalar()
            other.rollback()
    except DBAPIError as error:
        # asyncpg names its statements per client connection: on a shared server
        # session the second client's name is taken (or the first's is missing),
        # even in the dialect's own first queries on connecting.
        if "prepared statement" in str(error.orig):
            return True
        raise
    return other_pid in pids


def refused_startup_parameter_hint(reason: str) -> str:
    """Advice to add to a connect failure's reason, if a pooler refused a parameter."""
    if "unsupported startup parameter" not in reason:
        return ""
    return (
        " (a pooler, PgBouncer say, refuses the server settings the library sends at login: "
        "set DB_PGBOUNCER=transaction or session; docs/pgbouncer.md)"
    )
