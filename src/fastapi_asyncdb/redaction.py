"""Keep secrets out of what people read: URLs, driver messages, exceptions.

Secrets reach text in three ways: in a URL (a password, or ``?sslpassword=`` and
friends, which SQLAlchemy does not mask), in bound parameter values that drivers quote
in their own messages, and in values the server quotes back (a duplicate key, a bad
cast).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, ExceptionContext

__all__ = ["install_parameter_redaction", "is_secret_query_key", "mask_url"]

_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)


def is_secret_query_key(key: str) -> bool:
    """A URL query parameter whose value must never be printed (``sslpassword``, ``token``...)."""
    return _SECRET_QUERY_KEY.search(key) is not None


def mask_url(url: URL) -> str:
    """Render a URL for humans: the password and every secret-looking query value masked.

    SQLAlchemy masks only the password; ``?sslpassword=`` or ``?token=`` would print in clear.
    """
    base = url.set(query={}).render_as_string(hide_password=True)
    if not url.query:
        return base
    pairs = (
        f"{key}={'***' if is_secret_query_key(key) else value}" for key, value in url.query.items()
    )
    return f"{base}?{'&'.join(pairs)}"


def install_parameter_redaction(engine: Engine) -> None:
    """Take bound values out of driver messages too.

    ``hide_parameters`` drops the parameter list from SQLAlchemy's message, but
    drivers quote values in their own text (asyncpg: "invalid input for query
    argument $1: 'the value'"), which then reaches logs through the exception chain.
    """

    @event.listens_for(engine, "handle_error")
    def _redact(context: ExceptionContext) -> None:
        values = sorted(_string_values(context.parameters), key=len, reverse=True)
        if not values:
            return
        seen: set[int] = set()
        error: BaseException | None = context.sqlalchemy_exception or context.original_exception
        pending = [error, context.original_exception]
        while pending:
            error = pending.pop()
            if error is None or id(error) in seen:
                continue
            seen.add(id(error))
            error.args = tuple(_redact_text(arg, values) for arg in error.args)
            pending.extend((error.__cause__, error.__context__, getattr(error, "orig", None)))


def _string_values(parameters: Any) -> set[str]:
    # Very short values would redact ordinary words of the message; they say little anyway.
    if isinstance(parameters, str):
        return {parameters} if len(parameters) > 2 else set()
    if isinstance(parameters, dict):
        parameters = list(parameters.values())
    if not isinstance(parameters, list | tuple):
        return set()
    return set().union(*(_string_values(item) for item in parameters))


def _redact_text(arg: object, values: list[str]) -> object:
    if not isinstance(arg, str):
        return arg
    for value in values:
        arg = arg.replace(value, "***")
    return arg
