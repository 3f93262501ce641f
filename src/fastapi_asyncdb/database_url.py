"""The URL as text, checked before anything reads it: a URL at all, and no password
spilled into the host, database or query by an unencoded '@'."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["MAX_PORT", "check_url_text"]

MAX_PORT = 65_535


def check_url_text(raw: str) -> None:
    """Raise ``ValueError`` saying what is wrong with ``raw``, quoting none of it."""
    # Whether a backend and its driver can use the URL is the backends' to judge, when
    # the Database is constructed; here only that it is a URL at all.
    if raw != raw.strip() or any(character < " " for character in raw):
        # A secret file's last newline, say: it would end up in the database name, and
        # the app would start and then fail every unit of work.
        raise ValueError(
            "has whitespace at its start or end, or a control character (a newline from "
            "a file?); remove it"
        )
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # a port that is not a number raises ValueError
        raise ValueError(
            "is not a valid SQLAlchemy URL; expected e.g. postgresql+asyncpg://user@host/db "
            "(a password holding '@', ':' or '/' must be percent-encoded: %40, %3A, %2F)"
        ) from None
    # No part of the URL in this message: where it was split wrongly, the pieces named
    # host, database or query are pieces of the password. Any second '@' counts, even
    # after a '?' (a password holding '@?' puts its rest in the query); an '@' in a
    # query value is written %40 as well. A SQLite file name may hold '@'.
    if url.get_backend_name() != "sqlite" and (
        raw.partition("://")[2].count("@") > 1
        or "@" in (url.host or "")
        or "@" in (url.database or "")
    ):
        # The password ended at its own '@', and the rest of it reads as the host
        # name, database or query: it would be printed, logged and sent to DNS.
        raise ValueError(
            "has an '@' where a host or database name should be: a password (or user "
            "name) holding '@' must be percent-encoded as %40 (and '/' as %2F, ':' as %3A)"
        )
    if url.port is not None and not 1 <= url.port <= MAX_PORT:
        raise ValueError(f"has a port out of range: a port is from 1 to {MAX_PORT}")
