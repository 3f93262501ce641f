"""The secret scan's cases: a schema that holds the secret, and the kinds of failure.

Each kind names the statements that provoke it (a read for the read paths, a write
for the others), the parameters that carry the secret, and on which backends and
statements it fails, so that a case can check that it did what it is named after.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    DDL,
    CheckConstraint,
    Column,
    Enum,
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
    event,
    func,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

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

# A trigger that refuses every row with a message built from it (RAISE, SIGNAL).
SIGNALED = Table(
    "scan_signaled",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("note", String(200)),
)
_REFUSE = {
    "postgresql": (
        "CREATE OR REPLACE FUNCTION scan_refuse() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION USING MESSAGE = 'note ' || NEW.note || ' refused'; END $$ "
        "LANGUAGE plpgsql",
        "CREATE TRIGGER scan_refuse BEFORE INSERT ON scan_signaled "
        "FOR EACH ROW EXECUTE FUNCTION scan_refuse()",
    ),
    "mysql": (
        "CREATE TRIGGER scan_refuse BEFORE INSERT ON scan_signaled FOR EACH ROW BEGIN "
        "SET @scan_message = CONCAT('note ', NEW.note, ' refused'); "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = @scan_message; END",
    ),
}
# The same, under the code of an error whose message quotes only names (a NOT NULL
# violation): the code alone must not let the text through.
SIGNALED_CODED = Table(
    "scan_signaled_coded",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("note", String(200)),
)
_REFUSE_CODED = {
    "postgresql": (
        "CREATE OR REPLACE FUNCTION scan_refuse_coded() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION USING MESSAGE = 'Column ' || NEW.note || ' cannot be null', "
        "ERRCODE = '23502'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER scan_refuse_coded BEFORE INSERT ON scan_signaled_coded "
        "FOR EACH ROW EXECUTE FUNCTION scan_refuse_coded()",
    ),
    "mysql": (
        "CREATE TRIGGER scan_refuse_coded BEFORE INSERT ON scan_signaled_coded FOR EACH ROW "
        "BEGIN SET @scan_message = CONCAT('Column ', NEW.note, ' cannot be null'); "
        "SIGNAL SQLSTATE '23000' SET MYSQL_ERRNO = 1048, MESSAGE_TEXT = @scan_message; END",
    ),
}
for _table, _refusals in ((SIGNALED, _REFUSE), (SIGNALED_CODED, _REFUSE_CODED)):
    for _dialect, _statements in _refusals.items():
        for _statement in _statements:
            _ddl = DDL(_statement)  # type: ignore[no-untyped-call]
            event.listen(_table, "after_create", _ddl.execute_if(dialect=_dialect))


class _Mood(enum.Enum):
    calm = "calm"


# A non-native Enum: the value is checked in Python, on the way in and on the way out.
_MOOD = Enum(_Mood, native_enum=False, validate_strings=True, length=200)


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
        # The server quotes what it parsed of the value in a class 42 message.
        "parsed_value",
        lambda secret: {"p": secret + " &"},
        read=lambda _b: select(func.to_tsquery(bindparam("p", type_=String))),
        backends=("postgresql",),
        warm=lambda _secret: {"p": "calm"},
    ),
    Kind(
        "setting_name",
        _secret_param,
        read=lambda _b: select(func.current_setting(bindparam("p", type_=String))),
        backends=("postgresql",),
        warm=lambda _secret: {"p": "search_path"},
    ),
    Kind(
        "raised_by_trigger",
        _secret_param,
        write=lambda _b: insert(SIGNALED).values(note=bindparam("p")),
        backends=("postgresql", "mysql"),
    ),
    Kind(
        "raised_under_a_names_only_code",
        _secret_param,
        write=lambda _b: insert(SIGNALED_CODED).values(note=bindparam("p")),
        backends=("postgresql", "mysql"),
    ),
    Kind(
        "enum_value",
        _secret_param,
        write=lambda _b: insert(VAULT).values(tok=bindparam("p", type_=_MOOD), n=1),
    ),
    Kind(
        # A stored value the column type cannot convert back, outside the error path.
        "stored_enum_value",
        _secret_param,
        read=lambda _b: select(type_coerce(VAULT.c.tok, _MOOD)).where(
            VAULT.c.tok == bindparam("p")
        ),
        warm=lambda _secret: {"p": "absent"},
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
