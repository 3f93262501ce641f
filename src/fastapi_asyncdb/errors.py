"""The exceptions this library raises, all under one base class, and the kinds of failure."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConfigurationError",
    "DatabaseError",
    "DatabaseNotStartedError",
    "DatabaseUnavailableError",
    "ErrorKind",
    "MigrationError",
    "MigrationLockTimeoutError",
    "NestedUnitOfWorkError",
    "ReadOnlySessionError",
    "SharedConnectionTimeoutError",
    "UnavailableCause",
]


class ErrorKind(StrEnum):
    """What went wrong with the database, whatever the backend said: a closed set.

    Each backend classifies its own errors into these kinds; everything above the
    backends (retries, the HTTP answers, metrics) works with the kinds only.
    """

    UNAVAILABLE = "unavailable"
    """No connection could be had or the connection was lost; retrying later can work."""
    TIMEOUT = "timeout"
    """A statement or a lock wait ran past its limit."""
    BUSY = "busy"
    """The database is locked by other writers (SQLite) and gave up waiting."""
    CONFLICT = "conflict"
    """A constraint refused the change: unique, foreign key, CHECK."""
    RETRYABLE = "retryable"
    """The transaction lost a race (serialization failure, deadlock): repeat it whole."""
    READ_ONLY = "read_only"
    """A write was sent through a read-only session or connection: a bug in the caller."""
    OTHER = "other"
    """Anything else: a bug, a schema mismatch, an unexpected server error."""


class UnavailableCause(StrEnum):
    """Why a ``DatabaseUnavailableError`` was raised: the label of its 503 in the metrics."""

    POOL_EXHAUSTED = "pool_exhausted"
    """No connection became free within the acquire timeout (``DB_POOL_TIMEOUT``)."""
    BREAKER_OPEN = "breaker_open"
    """Failed fast: new connections could not be made a moment ago."""
    UNREACHABLE = "unreachable"
    """A new connection could not be made."""
    DRAINING = "draining"
    """The service is shutting down and admits no new unit of work."""
    TIMEOUT = "timeout"
    """The database did not answer a command within ``DB_COMMAND_TIMEOUT``."""
    OTHER = "other"


class DatabaseError(Exception):
    """Base of every error raised by fastapi-asyncdb, so one ``except`` catches them all."""


class ConfigurationError(DatabaseError, ValueError):
    """The settings cannot work; raised at construction so a bad deploy fails at startup.

    The message says which setting to change and never contains a secret.
    """


class DatabaseNotStartedError(DatabaseError, RuntimeError):
    """The database was used outside its lifespan, where no engine exists.

    Engines are created at startup and disposed at shutdown; creating one lazily
    elsewhere would leak connections across event loops and test runs.
    """


class DatabaseUnavailableError(DatabaseError):
    """No connection could be had in time: the pool is exhausted or the server is unreachable.

    It is the one error a client should retry, so over HTTP it becomes a 503 with
    ``Retry-After`` instead of a hang or a bare 500. ``reason`` is for operators (logs,
    exceptions); ``detail`` is what a client may read, which says less where the reason
    names hosts, users or the driver's words. ``cause`` says which guard refused, for
    metrics and alerts.
    """

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float,
        detail: str | None = None,
        cause: UnavailableCause = UnavailableCause.OTHER,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause
        self.retry_after = retry_after
        self.detail = reason if detail is None else detail


class NestedUnitOfWorkError(DatabaseError, RuntimeError):
    """A unit of work was opened inside another one of the same task, on the same engine.

    The inner one needs a second connection while the outer holds the first: on SQLite
    (one writer) it can never have one, and elsewhere requests that each hold one and
    wait for another deadlock once the pool is full. Raised at once, instead of after
    the acquire timeout.
    """


class ReadOnlySessionError(DatabaseError):
    """A write was attempted through a read-only session.

    Read sessions run without a transaction (and on a replica, later), so a write
    there would be either refused by the server or silently autocommitted.
    """


class SharedConnectionTimeoutError(DatabaseError, RuntimeError):
    """Under test isolation, a unit of work waited too long for the one shared connection.

    ``Database.isolated()`` (the pytest plugin) runs every unit of work on one
    connection, one task at a time. A unit of work that waits, in another task, for one
    in progress that is itself waiting for it (``asyncio.gather(db.run_statement(...))``
    inside a request's ``SessionDep``) would wait forever; in production each has a
    connection of its own. Raised after ``pool_timeout`` instead.
    """


class MigrationError(DatabaseError):
    """The migrations could not run: Alembic missing, no configuration, an unknown
    revision, or an env.py that migrated elsewhere than on the connection handed over."""


class MigrationLockTimeoutError(MigrationError):
    """Another process held the database's migration lock for longer than the timeout."""
