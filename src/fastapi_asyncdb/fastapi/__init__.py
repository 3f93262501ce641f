"""The FastAPI integration: dependencies, error answers, health routes, ASGI middleware.

Nothing outside this package imports FastAPI; the core works without it.
"""

from .dependencies import (
    DatabaseDep,
    ReadConnectionDep,
    ReadSessionDep,
    SessionDep,
    get_database,
    get_read_connection,
    get_read_session,
    get_session,
)
from .health import Liveness, PoolStatus, Readiness
from .install import install
from .pagination import BigIntegerAfter, IntegerAfter, PageLimit, PageOffset
from .problems import (
    ERROR_ANSWERS,
    PROBLEM_JSON,
    DatabaseErrorHandler,
    ErrorAnswer,
    Problem,
    ValidationIssue,
    ValidationProblem,
    problem_response,
)

__all__ = [
    "ERROR_ANSWERS",
    "PROBLEM_JSON",
    "BigIntegerAfter",
    "DatabaseDep",
    "DatabaseErrorHandler",
    "ErrorAnswer",
    "IntegerAfter",
    "Liveness",
    "PageLimit",
    "PageOffset",
    "PoolStatus",
    "Problem",
    "ReadConnectionDep",
    "ReadSessionDep",
    "Readiness",
    "SessionDep",
    "ValidationIssue",
    "ValidationProblem",
    "get_database",
    "get_read_connection",
    "get_read_session",
    "get_session",
    "install",
    "problem_response",
]
