"""The exceptions this library raises, all under one base class."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DatabaseError",
    "DatabaseNotStartedError",
    "DatabaseUnavailableError",
    "ReadOnlySessionError",
]


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
    ``Retry-After`` instead of a hang or a bare 500.
    """

    def __init__(self, reason: str, *, retry_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ReadOnlySessionError(DatabaseError):
    """A write was attempted through a read-only session.

    Read sessions run without a transaction (and on a replica, later), so a write
    there would be either refused by the server or silently autocommitted.
    """
