"""Everything FastAPI-specific: request sessions, error responses, health routes."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from . import drivers
from .database import Database
from .disconnect import CancelOnDisconnect
from .errors import DatabaseNotStartedError, DatabaseUnavailableError, ReadOnlySessionError
from .request_scope import CloseWithRequest, enter_for_request

__all__ = [
    "DatabaseDep",
    "ReadConnectionDep",
    "ReadSessionDep",
    "SessionDep",
    "install",
    "problem_response",
]

logger = logging.getLogger("fastapi_asyncdb")

_STATE_KEY = "fastapi_asyncdb"
_PROBLEM_JSON = "application/problem+json"


def _database(request: Request) -> Database:
    database: Database | None = getattr(request.app.state, _STATE_KEY, None)
    if database is None:
        raise DatabaseNotStartedError(
            "no Database is installed on this app: call db.install(app) after creating it"
        )
    return database


async def _request_transaction(request: Request) -> AsyncIterator[AsyncSession]:
    async with _database(request).transaction() as session:
        yield session


# Reads have nothing to do before the response, so their dependencies are plain
# functions (no yield, a fifth of a read's CPU): CloseWithRequest closes the session or
# connection just before the last of the response body is sent.
async def _request_read_session(request: Request) -> AsyncSession:
    return await enter_for_request(request.scope, _database(request).read_session())


async def _request_read_connection(request: Request) -> AsyncConnection:
    return await enter_for_request(request.scope, _database(request).read_connection())


# scope="function" runs the code after ``yield`` (the commit) before the response is
# sent: a failing commit becomes an error response, never a 2xx.
SessionDep = Annotated[AsyncSession, Depends(_request_transaction, scope="function")]
"""A fresh session per request, committed before the response or rolled back on any error."""

ReadSessionDep = Annotated[AsyncSession, Depends(_request_read_session)]
"""A fresh read-only session per request: no transaction, writes refused."""

ReadConnectionDep = Annotated[AsyncConnection, Depends(_request_read_connection)]
"""A read-only Core connection per request: the cheapest way to read, for hot endpoints."""

DatabaseDep = Annotated[Database, Depends(_database)]
"""The installed ``Database``, for ``run_transaction`` with retries inside an endpoint."""


def problem_response(
    status: int, title: str, detail: str, *, retry_after: float | None = None
) -> JSONResponse:
    """An RFC 9457 problem+json response, the shape of every error this module sends."""
    headers = None if retry_after is None else {"Retry-After": str(math.ceil(retry_after))}
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        headers=headers,
        media_type=_PROBLEM_JSON,
    )


def install(
    database: Database,
    app: FastAPI,
    *,
    health_prefix: str = "/health",
    cancel_on_disconnect: bool = True,
    disconnect_watch_after: float = 0.5,
) -> None:
    """Make the dependencies find ``database``; map database errors; add health routes.

    Also installs the middleware that closes read sessions and connections once their
    request's response body has been produced.

    With ``cancel_on_disconnect``, a request whose client leaves before its response
    is cancelled, so its queries stop instead of running on for nobody; requests are
    watched from ``disconnect_watch_after`` seconds on.
    """
    setattr(app.state, _STATE_KEY, database)
    if cancel_on_disconnect:
        app.add_middleware(CancelOnDisconnect, watch_after=disconnect_watch_after)
    # Outermost, so that read sessions close after any cancellation was dealt with.
    app.add_middleware(CloseWithRequest)
    retry_after = database.settings.unavailable_retry_after
    backend = database.settings.backend

    def unavailable(detail: str) -> JSONResponse:
        return problem_response(503, "Service Unavailable", detail, retry_after=retry_after)

    async def on_unavailable(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, DatabaseUnavailableError)
        return problem_response(
            503, "Service Unavailable", error.reason, retry_after=error.retry_after
        )

    async def on_not_started(_request: Request, _error: Exception) -> JSONResponse:
        return unavailable("the database is starting or stopping")

    async def on_pool_timeout(_request: Request, _error: Exception) -> JSONResponse:
        return unavailable("no database connection became free in time")

    async def on_integrity(_request: Request, error: Exception) -> JSONResponse:
        logger.info("integrity error: %s", type(getattr(error, "orig", error)).__name__)
        return problem_response(409, "Conflict", "the change conflicts with data already stored")

    async def on_read_only(_request: Request, error: Exception) -> JSONResponse:
        logger.error("write attempted on a read-only session", exc_info=error)
        return problem_response(500, "Internal Server Error", str(error))

    async def on_database_error(_request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, DBAPIError) and drivers.is_constraint_violation(backend, error):
            return await on_integrity(_request, error)
        if isinstance(error, DBAPIError) and (
            error.connection_invalidated or drivers.is_busy(backend, error)
        ):
            logger.warning("database connection lost or busy: %s", type(error.orig).__name__)
            return unavailable("the database connection failed; retry the request")
        if isinstance(error, DBAPIError) and drivers.is_timeout(backend, error):
            logger.warning("database statement timed out: %s", type(error.orig).__name__)
            return unavailable("the database did not answer in time")
        logger.error("database error", exc_info=error)
        return problem_response(500, "Internal Server Error", "a database error occurred")

    app.add_exception_handler(DatabaseUnavailableError, on_unavailable)
    app.add_exception_handler(DatabaseNotStartedError, on_not_started)
    app.add_exception_handler(PoolTimeoutError, on_pool_timeout)
    app.add_exception_handler(IntegrityError, on_integrity)
    app.add_exception_handler(ReadOnlySessionError, on_read_only)
    app.add_exception_handler(SQLAlchemyError, on_database_error)

    async def live() -> dict[str, str]:
        """Liveness: the process answers. Never touches the database."""
        return {"status": "ok"}

    async def ready() -> JSONResponse:
        """Readiness: the database answers a ping within the health timeout."""
        report = await database.check_health()
        if report["status"] != "ok":
            return JSONResponse(report, status_code=503, headers={"Retry-After": str(retry_after)})
        return JSONResponse(report)

    async def pools() -> dict[str, dict[str, Any]]:
        """Pool state (in use, capacity, waiting, checked out, idle); never touches the database."""
        return database.pool_status()

    responses: dict[int | str, dict[str, Any]] = {503: {"description": "Database unavailable"}}
    app.add_api_route(f"{health_prefix}/live", live, methods=["GET"], tags=["health"])
    app.add_api_route(
        f"{health_prefix}/ready", ready, methods=["GET"], tags=["health"], responses=responses
    )
    app.add_api_route(
        f"{health_prefix}/pools", pools, methods=["GET"], tags=["health"], responses=responses
    )
