"""The secret scan's instruments: the secret, the search for it, and the evidence.

A case plants a fresh secret where a user's secrets live (the URL's password and a
``?password=`` query value, bound parameters, stored rows), provokes one kind of
failure through one of the library's paths, and collects every text a person or a
log shipper could read afterwards; ``find_leaks`` then looks for the secret in it.

The secret alternates an upper-case letter (not I or O) and a digit (not 0 or 1)
over ``SECRET_LENGTH`` characters, with a quote, a double quote, a parenthesis, a
backslash and a per cent sign at fixed places. Each of its ``WINDOW``-character
windows is a letter-digit-letter-digit run (or holds one of those marks), which SQL,
SQLSTATEs, hex addresses, timestamps and English do not produce: a window found in
the evidence was put there by the secret. So the search can use windows this short
without false alarms, and catches a cut value (MariaDB prints only the start of a
duplicate entry, asyncpg only the start of an argument's repr) as surely as a whole
one. The marks test that redaction by structure survives values that hold the very
delimiters it reads.
"""

from __future__ import annotations

import json
import logging
import random
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from fastapi_asyncdb import Database
from fastapi_asyncdb.prometheus import register

_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
_DIGITS = "23456789"
_MARKS = {15: "'", 31: '"', 47: ")", 55: "\\", 71: "%"}
SECRET_LENGTH = 80
WINDOW = 4


def new_secret() -> str:
    rng = random.SystemRandom()
    characters = [
        rng.choice(_LETTERS) if index % 2 == 0 else rng.choice(_DIGITS)
        for index in range(SECRET_LENGTH)
    ]
    for index, mark in _MARKS.items():
        characters[index] = mark
    return "".join(characters)


def find_leaks(secret: str, evidence: list[tuple[str, str]]) -> list[str]:
    """Every piece of evidence holding a window of the secret, with the place it was found."""
    windows = {secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1)}
    leaks = []
    for where, text in evidence:
        for window in sorted(windows):
            at = text.find(window)
            if at >= 0:
                excerpt = text[max(0, at - 60) : at + 60]
                leaks.append(f"{where}: {window!r} in ...{excerpt!r}...")
                break
    return leaks


# --- the evidence ------------------------------------------------------------------


class Evidence:
    """Every text the case produced: log records, exceptions, HTTP answers, reprs."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self.errors: list[BaseException] = []
        self.statuses: list[int] = []

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def exception(self, where: str, error: BaseException) -> None:
        self.errors.append(error)
        self.add(f"{where}: traceback", "".join(traceback.format_exception(error)))
        for item in _chain(error):
            name = type(item).__name__
            self.add(f"{where}: str({name})", _safely(str, item))
            self.add(f"{where}: repr({name})", _safely(repr, item))
            self.add(f"{where}: vars({name})", _safely(lambda e: repr(vars(e)), item))
            if callable(getattr(item, "as_dict", None)):
                self.add(f"{where}: {name}.as_dict()", _safely(lambda e: repr(e.as_dict()), item))  # type: ignore[attr-defined]

    def response(self, where: str, status: int, headers: Mapping[str, str], body: str) -> None:
        self.statuses.append(status)
        self.add(f"{where}: HTTP {status}", f"{json.dumps(dict(headers))}\n{body}")

    async def database_state(self, database: Database) -> None:
        """What the library shows of itself: reprs, settings, pools, health, metrics."""
        self.add("repr(Database)", repr(database))
        self.add("settings", f"{database.settings!s} {database.settings!r}")
        # A Prometheus scrape: every metric name, label and value, as a scraper stores it.
        registry = CollectorRegistry()
        register(database, registry)
        self.add("metrics", f"{database.metrics!r}\n{generate_latest(registry).decode()}")
        if database.is_started:
            for engine in (database.engine, database.read_engine):
                self.add("engine", f"{engine!r} {engine.url!r} {engine.url!s}")
            self.add("pool_status", json.dumps(database.pool_status()))
            self.add("check_health", json.dumps(await database.check_health()))


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[Any] = [error]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        pending.extend((item.__cause__, item.__context__, getattr(item, "orig", None)))


def _safely(render: Callable[[BaseException], str], item: BaseException) -> str:
    try:
        return render(item)
    except Exception as error:  # a repr that fails is evidence too
        return f"<{type(error).__name__} rendering {type(item).__name__}>"


_EXTRA_FIELDS = ("db_statement", "db_role", "db_duration_s", "request_id")


class _EvidenceHandler(logging.Handler):
    def __init__(self, evidence: Evidence) -> None:
        super().__init__(logging.DEBUG)
        self.evidence = evidence
        # The whole record as a log file would hold it, traceback and chain included.
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.evidence.add(f"log {record.name}", self.format(record))
        # The fields a structured formatter would write out (slow statements' extra=).
        extra = {name: getattr(record, name) for name in _EXTRA_FIELDS if hasattr(record, name)}
        if extra:
            self.evidence.add(f"log {record.name} extra", repr(extra))


@contextmanager
def capturing_logs(evidence: Evidence) -> Iterator[None]:
    """Every record of every logger at DEBUG, SQLAlchemy's included (it defaults to WARN)."""
    handler = _EvidenceHandler(evidence)
    loggers = [logging.getLogger(), logging.getLogger("sqlalchemy")]
    levels = [logger.level for logger in loggers]
    loggers[0].addHandler(handler)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        loggers[0].removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
