"""The dependencies: public functions, so ``app.dependency_overrides`` works on each.

``SessionDep``, ``ReadSessionDep``, ``ReadConnectionDep`` and ``DatabaseDep`` are
``Annotated`` aliases of ``get_session``, ``get_read_session``, ``get_read_connection``
and ``get_database``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from starlette.requests import HTTPConnection

from ..database import Database
from ..errors import DatabaseNotStartedError
from .request_scope import defer_end, enter_for_request, note_rollback

__all__ = [
    "DatabaseDep",
    "ReadConnectionDep",
    "ReadSessionDep",
    "SessionDep",
    "get_database",
    "get_read_connection",
    "get_read_session",
    "get_session",
]

STATE_KEY = "fastapi_asyncdb"


def get_database(connection: HTTPConnection) -> Database:
    """The ``Database`` that ``install(app, db)`` put on the app."""
    database: Database | None = getattr(connection.app.state, STATE_KEY, None)
    if database is None:
        raise DatabaseNotStartedError(
            "no Database is installed on this app: call install(app, db) after creating it"
        )
    return database


async def get_session(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """The request's unit of work: committed as the response starts, unless it is an error.

    Any exception rolls it back. Once the endpoint has returned, the decision waits for
    the response's status: below 400 commits, 400 and above rolls back (call
    ``await session.commit()`` yourself to keep writes despite an error response).
    """
    unit = get_database(connection).unit_of_work()
    session = await unit.begin()
    try:
        yield session
    except BaseException as error:
        await unit.end(commit=False)
        note_rollback(connection.scope, error)
        raise
    if not defer_end(connection.scope, unit):
        await unit.end(commit=True)  # a WebSocket: no response status to wait for


# Reads have nothing to do before the response, so their dependencies are plain
# functions (no yield, a fifth of a read's CPU): RequestScope closes the session or
# connection just before the last of the response body is sent.
async def get_read_session(connection: HTTPConnection) -> AsyncSession:
    """A read-only session on the autocommit engine: no transaction, writes refused."""
    return await enter_for_request(connection.scope, get_database(connection).read_session())


async def get_read_connection(connection: HTTPConnection) -> AsyncConnection:
    """A read-only Core connection: the cheapest way to read, for hot endpoints."""
    return await enter_for_request(connection.scope, get_database(connection).read_connection())


# scope="function": the dependency's exit runs before the response is sent, so the unit
# of work is handed to RequestScope while the request is still being answered.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
"""A fresh session per request, committed before the response or rolled back on any error."""

ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]
"""A fresh read-only session per request: no transaction, writes refused."""

ReadConnectionDep = Annotated[AsyncConnection, Depends(get_read_connection)]
"""A read-only Core connection per request: the cheapest way to read, for hot endpoints."""

DatabaseDep = Annotated[Database, Depends(get_database)]
"""The installed ``Database``, for ``run_transaction`` with retries inside an endpoint."""
