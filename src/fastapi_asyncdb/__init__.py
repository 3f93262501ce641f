"""Asynchronous SQLAlchemy for FastAPI, correct under load and faults by default.

The core (``Database``, ``DatabaseSettings``, ``Prepared``) works without FastAPI;
``install``, the dependencies (``SessionDep``...) and the error answers are the FastAPI
integration, in ``fastapi_asyncdb.fastapi``.
"""

from .database import Database
from .errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseNotStartedError,
    DatabaseUnavailableError,
    ErrorKind,
    NestedUnitOfWorkError,
    ReadOnlySessionError,
    SharedConnectionTimeoutError,
    UnavailableCause,
)
from .fastapi import (
    ERROR_ANSWERS,
    BigIntegerAfter,
    DatabaseDep,
    ErrorAnswer,
    IntegerAfter,
    PageLimit,
    PageOffset,
    Problem,
    ReadConnectionDep,
    ReadSessionDep,
    SessionDep,
    get_database,
    get_read_connection,
    get_read_session,
    get_session,
    install,
    problem_response,
)
from .pagination import KeysetPage, OffsetPage, keyset_page, offset_page
from .prepared import Prepared
from .retry import Retry
from .settings import DatabaseSettings

__all__ = [
    "ERROR_ANSWERS",
    "BigIntegerAfter",
    "ConfigurationError",
    "Database",
    "DatabaseDep",
    "DatabaseError",
    "DatabaseNotStartedError",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "ErrorAnswer",
    "ErrorKind",
    "IntegerAfter",
    "KeysetPage",
    "NestedUnitOfWorkError",
    "OffsetPage",
    "PageLimit",
    "PageOffset",
    "Prepared",
    "Problem",
    "ReadConnectionDep",
    "ReadOnlySessionError",
    "ReadSessionDep",
    "Retry",
    "SessionDep",
    "SharedConnectionTimeoutError",
    "UnavailableCause",
    "get_database",
    "get_read_connection",
    "get_read_session",
    "get_session",
    "install",
    "keyset_page",
    "offset_page",
    "problem_response",
]
