"""The secret scan's parts: the secret, the schema, the error kinds and the evidence.

A case plants a fresh secret where a user's secrets live (the URL's password and a
``?password=`` query value, bound parameters, stored rows), provokes one kind of
failure through one of the library's paths, and collects every text a person or a
log shipper could read afterwards.

The secret: 80 characters alternating an upper-case letter (not I or O) and a digit
(2 to 9), with a quote, a double quote, a parenthesis, a backslash and a per cent
sign at fixed places. Each of its four-character windows is a letter-digit-letter-digit
pattern (or holds one of those marks between them), which SQL, SQLSTATEs, hex
addresses, timestamps and English never produce, so any window found in the evidence
was put there by the secret: the scan can check windows as short as four characters
without false alarms, and so catches a truncated value (MariaDB keeps 64 characters
of a duplicate entry, asyncpg 40 of an argument's repr) as surely as a whole one. The
marks test that redaction by structure survives values that contain its delimiters.
"""

from __future__ import annotations

import json
import logging
import random
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    UpdateBase,
    Uuid,
    bindparam,
    cast,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from fastapi_asyncdb import Database

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


# --- the schema --------------------------------------------------------------------

metadata = MetaData()
KEYS = Table("scan_keys", metadata, Column("tok", String(200), primary_key=True))
VAULT = Table(
    "scan_vault",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tok", String(200), unique=True),
    Column("n", Integer),
    Column("key_tok", String(200), ForeignKey("scan_keys.tok")),
    CheckConstraint("n > 0", name="scan_n_positive"),
)


def planted_rows(secret: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows holding the secret: a key, a vault row that uses it, and a second vault row."""
    keys = [{"tok": secret}]
    vault = [
        {"tok": secret, "n": 1, "key_tok": secret},
        {"tok": secret + "b", "n": 1, "key_tok": None},
    ]
    return keys, vault


# --- the kinds of failure ----------------------------------------------------------


def _sleep(backend: str) -> ColumnElement[Any]:
    """A call that sleeps ``:s`` seconds and yields a number."""
    seconds = bindparam("s", type_=Float)
    if backend == "postgresql":
        return func.length(cast(func.pg_sleep(seconds), Text))
    return func.sleep(seconds)


def _bad_json(backend: str) -> Select[Any]:
    text = bindparam("p", type_=String)
    if backend == "postgresql":
        return select(func.jsonb_typeof(cast(text, JSONB)))
    if backend == "mysql":
        return select(func.json_extract(text, "$"))  # a warning, which asyncmy logs
    return select(func.json(text))


ReadBuilder = Callable[[str], Select[Any]]
WriteBuilder = Callable[[str], UpdateBase]


@dataclass(frozen=True)
class Kind:
    """One kind of failure: its statements, parameters and where it can happen."""

    name: str
    params: Callable[[str], dict[str, Any]]
    read: ReadBuilder | None = None
    write: WriteBuilder | None = None
    backends: tuple[str, ...] = ("sqlite", "postgresql", "mysql")
    # Parameters that succeed, for the Prepared statement's first run (which decides
    # whether later runs take the driver's own path).
    warm: Callable[[str], dict[str, Any]] | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    # Whether the statement fails, by backend and by whether it is the read or write.
    fails: Callable[[str, bool], bool] = lambda _backend, _write: True
    read_only_violation: bool = False


_secret_param: Callable[[str], dict[str, Any]] = lambda secret: {"p": secret}  # noqa: E731
_insert_secret: WriteBuilder = lambda _b: insert(VAULT).values(tok=bindparam("p"), n=1)  # noqa: E731

KINDS = [
    Kind(
        "read_row",
        _secret_param,
        read=lambda _b: select(VAULT.c.tok, VAULT.c.n).where(VAULT.c.tok == bindparam("p")),
        warm=_secret_param,
        fails=lambda _b, _w: False,
    ),
    Kind("unique_violation", _secret_param, write=_insert_secret),
    Kind(
        "check_violation",
        lambda secret: {"p": secret + "c"},
        write=lambda _b: insert(VAULT).values(tok=bindparam("p"), n=-1),
    ),
    Kind(
        "foreign_key_violation",
        lambda secret: {"t": "orphan", "p": secret + "m"},
        write=lambda _b: insert(VAULT).values(tok=bindparam("t"), n=1, key_tok=bindparam("p")),
    ),
    Kind(
        "bad_cast",
        lambda secret: {"t": "cast", "p": secret},
        read=lambda _b: select(cast(bindparam("p", type_=String), Integer)),
        write=lambda _b: insert(VAULT).values(
            tok=bindparam("t"), n=cast(bindparam("p", type_=String), Integer)
        ),
        warm=lambda _secret: {"p": "1"},
        # SQLite casts anything (then the CHECK refuses the 0); MariaDB warns on a read.
        fails=lambda backend, write: write or backend == "postgresql",
    ),
    Kind(
        "bad_json",
        _secret_param,
        read=_bad_json,
        warm=lambda _secret: {"p": "1"},
        fails=lambda backend, _w: backend != "mysql",
    ),
    Kind(
        "wrong_parameter_type",
        _secret_param,
        read=lambda _b: select(bindparam("p", type_=Uuid)),
        warm=lambda _secret: {"p": uuid.UUID(int=1)},
    ),
    Kind(
        "read_only_violation",
        lambda secret: {"p": secret + "r"},
        write=_insert_secret,
        read_only_violation=True,
    ),
    Kind(
        "statement_timeout",
        lambda secret: {"p": secret, "s": 3},
        read=lambda b: select(_sleep(b), bindparam("p", type_=String)),
        write=lambda b: (
            update(VAULT).where(VAULT.c.tok == bindparam("p")).values(n=VAULT.c.n + _sleep(b))
        ),
        backends=("postgresql", "mysql"),
        warm=lambda secret: {"p": secret, "s": 0},
        settings={"statement_timeout": 0.3},
    ),
    Kind(
        "lost_connection",
        lambda secret: {"p": secret, "s": 5},
        read=lambda b: select(_sleep(b), bindparam("p", type_=String)),
        write=lambda b: (
            update(VAULT).where(VAULT.c.tok == bindparam("p")).values(n=VAULT.c.n + _sleep(b))
        ),
        backends=("postgresql", "mysql"),
        warm=lambda secret: {"p": secret, "s": 0},
    ),
    Kind(
        "deadlock",
        lambda secret: {"first": secret, "second": secret + "b"},
        write=lambda _b: update(VAULT).where(VAULT.c.tok == bindparam("p")).values(n=VAULT.c.n + 1),
        backends=("postgresql", "mysql"),
    ),
    Kind(
        "connect_failure",
        _secret_param,
        read=lambda _b: select(VAULT.c.tok).where(VAULT.c.tok == bindparam("p")),
        write=_insert_secret,
        # No command timeout: with one, asyncmy reads through asyncio.wait_for, which on
        # Python 3.11 can swallow the cancellation that stops the breaker's probe.
        settings={"connect_timeout": 2, "command_timeout": None},
    ),
]
KINDS_BY_NAME = {kind.name: kind for kind in KINDS}

PATHS = ("transaction", "read_session", "prepared", "run_statement", "http")


def statement_for(kind: Kind, path: str, backend: str) -> tuple[Any, bool] | None:
    """The statement a path runs for a kind, and whether it is the write; None: not here."""
    if kind.read_only_violation:
        return (
            (kind.write(backend), True) if kind.write and path in ("read_session", "http") else None
        )
    if kind.name == "deadlock":
        return (
            (kind.write(backend), True) if kind.write and path in ("transaction", "http") else None
        )
    if path == "run_statement":
        return (kind.write(backend), True) if kind.write else None
    if path in ("read_session", "prepared"):
        return (kind.read(backend), False) if kind.read else None
    if kind.write is not None:
        return kind.write(backend), True
    return (kind.read(backend), False) if kind.read else None


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
        """What the library shows of itself: reprs, settings, pools, health."""
        self.add("repr(Database)", repr(database))
        self.add("settings", f"{database.settings!s} {database.settings!r}")
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


class _EvidenceHandler(logging.Handler):
    def __init__(self, evidence: Evidence) -> None:
        super().__init__(logging.DEBUG)
        self.evidence = evidence
        # The whole record as a log file would hold it, traceback and chain included.
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.evidence.add(f"log {record.name}", self.format(record))


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
