"""SQLAlchemy's pool logs an ERROR with a traceback when it fails to reset or close a
connection that a fault (a restart, a terminated backend, a cut network) had already
killed. Nothing is wrong by then: the connection is discarded and the next checkout gets
a new one; yet alerting on ERROR pages someone for it.

The same goes for a reset cut short by a cancellation (a client that left mid-unit):
the pool then discards the connection, and a disconnect is not a fault.

``install`` puts a filter on a pool's logger that turns exactly those records into one
WARNING line without the traceback, naming the error's class. Any other record,
including the same messages for an error that is not a lost connection, passes
unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["LostConnectionNoise", "install"]

# The pool's own messages when it resets, terminates or closes a connection.
_MESSAGES = (
    "Exception during reset or similar",
    "Exception terminating connection",
    "Exception closing connection",
)
# Exception classes, by name (the drivers are optional imports), that say the
# connection was already gone.
_LOST = frozenset(
    {
        "ConnectionDoesNotExistError",  # asyncpg: the server ended the backend
        "AdminShutdownError",
        "ConnectionFailureError",
    }
)
_CLOSED_PHRASES = ("connection is closed", "connection was closed", "underlying connection")


def _lost_connection(error: BaseException | None) -> bool:
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, ConnectionError) or type(error).__name__ in _LOST:
            return True
        if type(error).__name__ == "InterfaceError" and any(
            phrase in str(error) for phrase in _CLOSED_PHRASES
        ):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def _why_discarded(error: BaseException | None) -> str | None:
    if isinstance(error, asyncio.CancelledError):
        return "the unit of work was cancelled"
    if _lost_connection(error):
        return "the connection was already lost"
    return None


class LostConnectionNoise(logging.Filter):
    """Downgrades the pool's ERROR about a connection already lost to a WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno >= logging.ERROR
            and isinstance(record.msg, str)
            and record.msg.startswith(_MESSAGES)
            and record.exc_info
            and (why := _why_discarded(record.exc_info[1])) is not None
        ):
            error = record.exc_info[1]
            # The message's first words say what was attempted; the connection's repr
            # (SQLAlchemy's argument) adds nothing an operator can act on.
            attempted = next(message for message in _MESSAGES if record.msg.startswith(message))
            record.msg = "%s: %s (%s); the connection is discarded"
            record.args = (attempted, why, type(error).__name__)
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
            record.exc_info = None
            record.exc_text = None
        return True


def install(pool: Any) -> None:
    """Put the filter on ``pool``'s logger, once."""
    logger = getattr(pool, "logger", None)
    logger = getattr(logger, "logger", logger)  # SQLAlchemy's InstanceLogger wraps one
    if not isinstance(logger, logging.Logger):
        return
    if not any(isinstance(existing, LostConnectionNoise) for existing in logger.filters):
        logger.addFilter(LostConnectionNoise())
