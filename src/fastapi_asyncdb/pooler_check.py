"""At startup: a pooler in front of PostgreSQL that ``DB_PGBOUNCER`` does not match.

With ``DB_PGBOUNCER=off`` behind PgBouncer the server-side limits never reach the
server (PgBouncer drops or refuses the startup parameters that carry them), and under
transaction pooling ``SET`` and asyncpg's named statements meet other server sessions;
``DB_PGBOUNCER=session`` in front of a transaction pooler sets the limits on one server
session and runs on others. Reads run as soon as the app starts, so the warning the
primary engine gives at its first connection comes too late: the start checks first,
on the probe's connection, as the budget check does. With the setting off it reads back
the limits the login asked for instead of guessing from what the pooler looks like.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .backends import Backend
from .backends.base import TRANSACTION_POOLER
from .budget import LimitsReading
from .errors import ConfigurationError
from .probe import Probe
from .settings import DatabaseSettings

__all__ = ["check_pooler", "pooler_as_finding"]

logger = logging.getLogger(__name__)

# The doctor reports the pooler as a finding of its own instead of refusing to start.
_CHECKED_AT_START = ContextVar("fastapi_asyncdb_pooler_checked_at_start", default=True)


@contextmanager
def pooler_as_finding() -> Iterator[None]:
    """Within the block, a start leaves the pooler to the caller (the doctor)."""
    token = _CHECKED_AT_START.set(False)
    try:
        yield
    finally:
        _CHECKED_AT_START.reset(token)


async def check_pooler(
    settings: DatabaseSettings, backend: Backend, reading: LimitsReading, probe: Probe
) -> None:
    """Refuse (``ConfigurationError``) to start behind a transaction pooler unless
    ``DB_PGBOUNCER=transaction``, behind a statement pooler whatever the setting, and,
    with the setting off, when the login's startup parameters are refused or the limits
    they carry are not in force; warn once behind another pooler with the setting off.

    A server that does not answer is not this check's to judge (the budget check,
    which shares the reading, says it could not read).
    """
    if not _CHECKED_AT_START.get() or backend.name != "postgresql":
        return
    if settings.pgbouncer == "transaction":
        await _refuse_statement_pooling(probe)
        return
    try:
        limits = await reading()
    except Exception as error:
        if settings.pgbouncer == "off" and _refused_startup_parameters(error):
            # Each unit of work would fail the same way: refuse now, in one line.
            raise ConfigurationError(
                "a pooler (PgBouncer?) answers for PostgreSQL and refuses the startup "
                "parameters that carry the server-side limits, and DB_PGBOUNCER is off: "
                "set DB_PGBOUNCER=session or transaction, whichever its pool_mode is "
                "(docs/pgbouncer.md)"
            ) from None
        if not (isinstance(error, DBAPIError) and _shared_server_session(error)):
            return
        # A new client met another client's statement: only a transaction pooler
        # hands one server session to two clients.
        pooler: str | None = (
            f"{TRANSACTION_POOLER} (a new client connection met another client's "
            "prepared statement)"
        )
        transaction_pooler = True
        not_in_force: tuple[str, ...] = ()
    else:
        if limits is None:
            return
        pooler, transaction_pooler = limits.pooler, limits.transaction_pooler
        not_in_force = limits.not_in_force
    if transaction_pooler:
        message = (
            f"{pooler} answers for PostgreSQL, and DB_PGBOUNCER={settings.pgbouncer}: "
            "the server-side limits (statement_timeout...) would hold on one server session "
            "and the statements run on others; set DB_PGBOUNCER=transaction (docs/pgbouncer.md)"
        )
        raise ConfigurationError(message)
    if not_in_force and settings.pgbouncer == "off":
        # Read back, not guessed: the login asked for these and the server session does
        # not have them, so the pools would run without limits (and reads writable).
        cause = pooler or "a pooler (PgBouncer?)"
        raise ConfigurationError(
            "the server-side limits the settings ask for are not in force on a new "
            f"connection: {', '.join(not_in_force)}; {cause} in front of PostgreSQL "
            "likely drops the startup parameters (ignore_startup_parameters): set "
            "DB_PGBOUNCER=session or transaction, whichever its pool_mode is "
            "(docs/pgbouncer.md)"
        )
    if pooler is not None and settings.pgbouncer == "off":
        backend.pooler_reported = True
        logger.warning(
            "%s answers for PostgreSQL, and DB_PGBOUNCER is off: the server-side limits "
            "are in force now, but under transaction pooling statements fail; "
            "set DB_PGBOUNCER=session or transaction, whichever its pool_mode is "
            "(docs/pgbouncer.md)",
            pooler,
        )


async def _refuse_statement_pooling(probe: Probe) -> None:
    """Every unit of work is a transaction, and a statement pooler refuses transaction
    blocks (closing the client connection): the start would succeed and every unit of
    work fail. One transaction on the probe's connection tells: PgBouncer says why
    (asyncpg 0.32 passes its reason on), or, where the driver reports only a connection
    closed in the middle of the transaction, a second one on a new connection ends the
    same way (a restart at that very moment does not, twice)."""
    for _ in range(2):
        try:
            await probe.read(_one_transaction)
        except DBAPIError as error:
            if "statement pooling" in str(error.orig):
                break
            if not _closed_mid_operation(error):
                return
        except Exception:
            return  # not this check's to judge (the server did not answer, say)
        else:
            return
    raise ConfigurationError(
        "a statement pooler (PgBouncer with pool_mode=statement) answers for "
        "PostgreSQL: it refuses transaction blocks, and every unit of work is one; "
        "give this database pool_mode=transaction in PgBouncer, and keep "
        "DB_PGBOUNCER=transaction (docs/pgbouncer.md)"
    )


def _closed_mid_operation(error: DBAPIError) -> bool:
    # asyncpg's ConnectionDoesNotExistError: the other end closed the connection while a
    # statement of it was running.
    return "closed in the middle of operation" in str(error.orig)


def _one_transaction(connection: Connection) -> None:
    with connection.begin():
        connection.execute(text("SELECT 1"))
        connection.execute(text("SELECT 1"))


def _refused_startup_parameters(error: BaseException) -> bool:
    # PgBouncer's answer to a login parameter it neither knows nor ignores; asyncpg's
    # error may come wrapped in SQLAlchemy's.
    orig = error.orig if isinstance(error, DBAPIError) else None
    return any("unsupported startup parameter" in str(e) for e in (error, orig) if e)


def _shared_server_session(error: DBAPIError) -> bool:
    # asyncpg names its statements per client connection (__asyncpg_stmt_1__...): a
    # name already taken, or gone, on a new connection was another client's.
    return "prepared statement" in str(error.orig)
