"""Asynchronous SQLAlchemy for FastAPI, correct under load and faults by default.

The core (``Database``, ``DatabaseSettings``, ``Prepared``) works without FastAPI;
``SessionDep``, ``ReadSessionDep``, ``ReadConnectionDep`` and ``Database.install`` are
the FastAPI integration.
"""

from .database import Database
from .errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseNotStartedError,
    DatabaseUnavailableError,
    ReadOnlySessionError,
)
from .fastapi import DatabaseDep, ReadConnectionDep, ReadSessionDep, SessionDep, problem_response
from .prepared import Prepared
from .retry import Retry
from .settings import DatabaseSettings

__all__ = [
    "ConfigurationError",
    "Database",
    "DatabaseDep",
    "DatabaseError",
    "DatabaseNotStartedError",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "Prepared",
    "ReadConnectionDep",
    "ReadOnlySessionError",
    "ReadSessionDep",
    "Retry",
    "SessionDep",
    "problem_response",
]
