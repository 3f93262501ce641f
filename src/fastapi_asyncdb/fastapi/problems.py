"""Every error a client gets, as RFC 9457 problem details, from one table.

``ERROR_ANSWERS`` maps each ``ErrorKind`` to its HTTP answer. ``install`` uses it as is
or with your entries over it (``install(app, db, answers={ErrorKind.CONFLICT:
ErrorAnswer(422, ...)})``); ``DatabaseErrorHandler`` serves the same answers in an app
you wire yourself. Bodies never carry SQL, bound values or the client's input.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..database import Database
from ..errors import DatabaseUnavailableError, ErrorKind, ReadOnlySessionError
from ..redaction import redact_exception

__all__ = [
    "ERROR_ANSWERS",
    "PROBLEM_JSON",
    "DatabaseErrorHandler",
    "ErrorAnswer",
    "Problem",
    "ValidationIssue",
    "ValidationProblem",
    "http_exception_handler",
    "problem_response",
    "unexpected_error_handler",
    "validation_exception_handler",
]

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# Bounds on what a validation answer repeats of a bad request.
_MAX_ISSUES = 20
_MAX_MESSAGE = 300
_MAX_LOCATION_PART = 100
_MAX_LOCATION_DEPTH = 10


class Problem(BaseModel):
    """The body of every error response (RFC 9457)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", description="A URI naming the problem type.")
    title: str = Field(description="The status code's phrase.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What happened, for a human; never SQL or values.")


class ValidationIssue(BaseModel):
    """One reason the request was refused; the offending input is never echoed."""

    loc: list[str | int] = Field(description="Where: body, query, path or header, then keys.")
    msg: str
    type: str


class ValidationProblem(Problem):
    """A 422: the request did not match the endpoint's parameters or body."""

    errors: list[ValidationIssue]


@dataclass(frozen=True)
class ErrorAnswer:
    """How one kind of database failure is answered over HTTP."""

    status: int
    detail: str
    retry_after: bool = False
    """Add ``Retry-After``: the failure is transient and the client should try again."""
    log_level: int = logging.WARNING
    log_traceback: bool = False

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase


ERROR_ANSWERS: Mapping[ErrorKind, ErrorAnswer] = MappingProxyType(
    {
        ErrorKind.UNAVAILABLE: ErrorAnswer(
            503, "the database cannot be reached or has no free connection", retry_after=True
        ),
        ErrorKind.TIMEOUT: ErrorAnswer(
            503, "the database did not answer in time", retry_after=True
        ),
        ErrorKind.BUSY: ErrorAnswer(
            503, "the database is busy with other writes", retry_after=True
        ),
        ErrorKind.RETRYABLE: ErrorAnswer(
            503, "the change lost a race with another; retry the request", retry_after=True
        ),
        ErrorKind.CONFLICT: ErrorAnswer(
            409, "the change conflicts with data already stored", log_level=logging.INFO
        ),
        ErrorKind.READ_ONLY: ErrorAnswer(
            500, "a write was attempted on a read-only session", log_level=logging.ERROR
        ),
        ErrorKind.OTHER: ErrorAnswer(
            500, "a database error occurred", log_level=logging.ERROR, log_traceback=True
        ),
    }
)


def problem_response(
    status: int,
    title: str | None = None,
    detail: str = "",
    *,
    retry_after: float | None = None,
    **extra: Any,
) -> JSONResponse:
    """An ``application/problem+json`` response, the shape of every error this package sends."""
    headers = None if retry_after is None else {"Retry-After": str(math.ceil(retry_after))}
    body = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


class DatabaseErrorHandler:
    """Answers a database error from the table: an exception handler for FastAPI."""

    def __init__(
        self, database: Database, answers: Mapping[ErrorKind, ErrorAnswer] | None = None
    ) -> None:
        self.database = database
        self.answers: Mapping[ErrorKind, ErrorAnswer] = {**ERROR_ANSWERS, **(answers or {})}

    def response(self, error: Exception) -> Response:
        kind = self.database.classify(error)
        answer = self.answers[kind]
        retry_after: float | None = None
        detail = answer.detail
        if isinstance(error, DatabaseUnavailableError):
            # Our own message, written for clients; and the error knows how long to wait.
            detail, retry_after = error.detail, error.retry_after
        elif isinstance(error, ReadOnlySessionError):
            detail = str(error)
        if answer.retry_after and retry_after is None:
            retry_after = self.database.settings.unavailable_retry_after
        if answer.status == 503:
            self.database.metrics.served_unavailable(error, kind)
        logger.log(
            answer.log_level,
            "database error answered %d (%s): %s",
            answer.status,
            kind,
            _driver_error_name(error),
            exc_info=error if answer.log_traceback else None,
        )
        return problem_response(
            answer.status,
            answer.title,
            detail,
            retry_after=retry_after if answer.retry_after else None,
        )

    async def __call__(self, _request: Request, error: Exception) -> Response:
        return self.response(error)


def _driver_error_name(error: BaseException) -> str:
    """The driver's own exception type: SQLAlchemy's adapter (asyncpg's) wraps it in one
    named plain ``Error`` or ``InterfaceError``, which tells nothing of the cause."""
    orig = getattr(error, "orig", None) or error
    cause = orig.__cause__
    if type(orig).__module__.startswith("sqlalchemy") and cause is not None:
        return f"{type(orig).__name__} ({type(cause).__name__})"
    return type(orig).__name__


async def http_exception_handler(_request: Request, error: Exception) -> Response:
    """``HTTPException`` as problem details, its headers kept."""
    assert isinstance(error, HTTPException)
    detail = error.detail if isinstance(error.detail, str) else HTTPStatus(error.status_code).phrase
    response = problem_response(error.status_code, detail=detail)
    if error.headers:
        response.headers.update(error.headers)
    return response


async def validation_exception_handler(_request: Request, error: Exception) -> Response:
    """A 422 listing where and why, without echoing the input (it can be huge, or NaN)."""
    assert isinstance(error, RequestValidationError)
    issues = [
        {
            # Keys of the client's own choosing appear here: bounded like the message.
            "loc": [
                part if isinstance(part, int) else str(part)[:_MAX_LOCATION_PART]
                for part in issue.get("loc", ())[:_MAX_LOCATION_DEPTH]
            ],
            "msg": str(issue.get("msg", ""))[:_MAX_MESSAGE],
            "type": str(issue.get("type", "")),
        }
        for issue in error.errors()[:_MAX_ISSUES]
    ]
    return problem_response(
        422, detail="the request does not match what this endpoint accepts", errors=issues
    )


async def unexpected_error_handler(request: Request, error: Exception) -> Response:
    """Any other exception: a 500 in problem details, logged with values masked.

    Some errors carry data from outside the database's error path: a row value that
    its column type cannot convert back (a non-native ``Enum`` holding a value another
    program wrote) raises ``LookupError`` quoting it; a model that does not fit a row
    (a response model, ``Model.model_validate(row)``) fails with the row's values in its
    errors. The error is redacted in place (a validation error keeps its class, count,
    locations and types), so the server's own log of it is masked too: Starlette
    re-raises the very object after answering, and nothing can replace it there.
    """
    redact_exception(error)
    logger.error(
        "unexpected error answered 500 on %s %s: %s",
        request.method,
        request.url.path,
        type(error).__name__,
        exc_info=error,
    )
    return problem_response(500, detail="an unexpected error occurred")
