"""At startup: a pooler in front of PostgreSQL that ``DB_PGBOUNCER`` does not match.

With ``DB_PGBOUNCER=off`` behind PgBouncer the server-side limits never reach the
server (PgBouncer drops or refuses the startup parameters that carry them), and under
transaction pooling ``SET`` and asyncpg's named statements meet other server sessions;
``DB_PGBOUNCER=session`` in front of a transaction pooler sets the limits on one server
session and runs on others. Reads run as soon as the app starts, so the warning the
primary engine gives at its first connection comes too late: the start checks first,
on the probe's connection, as the budget check does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy.exc import DBAPIError

from .backends import Backend
from .backends.base import TRANSACTION_POOLER
from .budget import LimitsReading
from .errors import ConfigurationError
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
    settings: DatabaseSettings, backend: Backend, reading: LimitsReading
) -> None:
    """Refuse (``ConfigurationError``) to start behind a transaction pooler unless
    ``DB_PGBOUNCER=transaction``; warn once behind another pooler with the setting off.

    A server that does not answer is not this check's to judge (the budget check,
    which shares the reading, says it could not read).
    """
    if not _CHECKED_AT_START.get():
        return
    if backend.name != "postgresql" or settings.pgbouncer == "transaction":
        return
    try:
        limits = await reading()
    except DBAPIError as error:
        if not _shared_server_session(error):
            return
        # A new client met another client's statement: only a transaction pooler
        # hands one server session to two clients.
        pooler: str | None = (
            f"{TRANSACTION_POOLER} (a new client connection met another client's "
            "prepared statement)"
        )
        transaction_pooler = True
    except Exception as error:
        if settings.pgbouncer == "off" and "unsupported startup parameter" in str(error):
            backend.pooler_reported = True
            logger.warning(
                "a pooler (PgBouncer?) refused the startup parameters of the login, and "
                "DB_PGBOUNCER is off: set DB_PGBOUNCER=session or transaction, whichever "
                "its pool_mode is (docs/pgbouncer.md)"
            )
        return
    else:
        if limits is None:
            return
        pooler, transaction_pooler = limits.pooler, limits.transaction_pooler
    if transaction_pooler:
        message = (
            f"{pooler} answers for PostgreSQL, and DB_PGBOUNCER={settings.pgbouncer}: "
            "the server-side limits (statement_timeout...) would hold on one server session "
            "and the statements run on others; set DB_PGBOUNCER=transaction (docs/pgbouncer.md)"
        )
        raise ConfigurationError(message)
    elif pooler is not None and settings.pgbouncer == "off":
        backend.pooler_reported = True
        logger.warning(
            "%s answers for PostgreSQL, and DB_PGBOUNCER is off: the server-side limits "
            "may not be in force, and under transaction pooling statements fail; "
            "set DB_PGBOUNCER=session or transaction, whichever its pool_mode is "
            "(docs/pgbouncer.md)",
            pooler,
        )


def _shared_server_session(error: DBAPIError) -> bool:
    # asyncpg names its statements per client connection (__asyncpg_stmt_1__...): a
    # name already taken, or gone, on a new connection was another client's.
    return "prepared statement" in str(error.orig)
