"""Redaction by structure: what a message says stays, the values it quotes go.

The properties are checked on the drivers' own exception classes, built the way the
drivers build them from a server's answer, with every value Hypothesis can think of
(quotes, backslashes, newlines, the delimiters of the message itself): the redacted
text must not depend on the value at all. The behaviour on real servers is checked
at the end of this module and, exhaustively, by ``test_secret_scan``.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import traceback
from collections.abc import Callable
from typing import Any

import asyncmy.errors  # type: ignore[import-not-found,unused-ignore]
import asyncpg
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi as _asyncpg_dbapi
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from fastapi_asyncdb import Database, redaction

from .secret_scan_cases import KEYS, VAULT, metadata

pytestmark = pytest.mark.usefixtures("clean_environment")

# SQLAlchemy's emulated DBAPI exceptions for asyncpg (untyped).
AsyncAdapt_asyncpg_dbapi: Any = _asyncpg_dbapi

# Values of every shape, with the characters that delimit values in messages
# over-represented.
values = st.one_of(
    st.text(max_size=120),
    st.text(alphabet=st.sampled_from("ab7'\"`()\\%$ :=\n"), max_size=120),
)


def same_length_pair() -> st.SearchStrategy[tuple[str, str]]:
    """Two values of one length: some messages state the length of what they refuse."""
    return values.flatmap(
        lambda first: st.tuples(st.just(first), st.text(min_size=len(first), max_size=len(first)))
    )


def everything_readable(error: BaseException) -> str:
    """What logging, repr and an error reporter would show of the error and its chain."""
    parts = ["".join(traceback.format_exception(error))]
    item: BaseException | None = error
    seen = set()
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        parts += [repr(item), repr(vars(item))]
        as_dict = getattr(item, "as_dict", None)
        if callable(as_dict):
            parts.append(repr(as_dict()))
        orig = getattr(item, "orig", None)
        item = orig if isinstance(orig, BaseException) else item.__cause__
    return "\n".join(parts)


def postgres_error(fields: dict[str, str]) -> BaseException:
    """A server error as asyncpg raises it, adapted and wrapped as SQLAlchemy does."""
    driver_error = asyncpg.PostgresError.new({"S": "ERROR", **fields}, query="SELECT $1")
    adapted = AsyncAdapt_asyncpg_dbapi.Error(driver_error.args[0], driver_error)
    adapted.__cause__ = driver_error
    return wrapped(adapted, AsyncAdapt_asyncpg_dbapi.Error)


def wrapped(orig: Exception, dbapi_error: type[Exception], value: object = "v") -> BaseException:
    error = DBAPIError.instance(
        "SELECT $1", {"p": value}, orig, dbapi_error, hide_parameters=True, ismulti=False
    )
    error.__cause__ = orig
    return error


def redacted_text(make: Callable[[str], BaseException], value: str) -> str:
    error = make(value)
    redaction.redact_exception(error, statement="SELECT $1")
    return everything_readable(error)


POSTGRES_MESSAGES: dict[str, Callable[[str], dict[str, str]]] = {
    "bad integer": lambda v: {"C": "22P02", "M": f'invalid input syntax for type integer: "{v}"'},
    "bad json": lambda v: {
        "C": "22P02",
        "M": "invalid input syntax for type json",
        "D": f'Token "{v}" is invalid.',
        "W": f"JSON data, line 1: {v}",
    },
    "out of range": lambda v: {"C": "22003", "M": f'value "{v}" is out of range for type integer'},
    "duplicate key": lambda v: {
        "C": "23505",
        "M": 'duplicate key value violates unique constraint "scan_vault_tok_key"',
        "D": f"Key (tok)=({v}) already exists.",
        "n": "scan_vault_tok_key",
    },
    "check": lambda v: {
        "C": "23514",
        "M": 'new row for relation "scan_vault" violates check constraint "scan_n_positive"',
        "D": f"Failing row contains (1, {v}, -1).",
    },
    "raised by a function": lambda v: {"C": "P0001", "M": f"refused '{v}'", "H": v},
}


@pytest.mark.parametrize("message", sorted(POSTGRES_MESSAGES))
@settings(max_examples=150, deadline=None)
@given(first=values, second=values)
def test_postgresql_errors_say_the_same_whatever_the_value(
    message: str, first: str, second: str
) -> None:
    fields = POSTGRES_MESSAGES[message]

    def make(value: str) -> BaseException:
        return postgres_error(fields(value))

    assert redacted_text(make, first) == redacted_text(make, second)


# Messages that quote names from the statement, and also what the server parsed out of
# a bound value (to_tsquery(:q), current_setting(:n), CAST(:v AS regclass)...).
STATEMENT_NAME_MESSAGES: dict[str, Callable[[str], dict[str, str]]] = {
    "tsquery": lambda v: {"C": "42601", "M": f'syntax error in tsquery: "{v}"'},
    "tsvector": lambda v: {"C": "42601", "M": f'syntax error in tsvector: "{v}"'},
    "setting": lambda v: {"C": "42704", "M": f'unrecognized configuration parameter "{v}"'},
    "regclass": lambda v: {"C": "42P01", "M": f'relation "{v.lower()}" does not exist'},
    "schema": lambda v: {"C": "3F000", "M": f'schema "{v.lower()}" does not exist'},
}


@pytest.mark.parametrize("message", sorted(STATEMENT_NAME_MESSAGES))
@settings(max_examples=150, deadline=None)
@given(first=values, second=values)
def test_postgresql_name_errors_keep_only_the_names_the_statement_holds(
    message: str, first: str, second: str
) -> None:
    # What the statement holds is shown beside the message anyway.
    assume(not {first.casefold(), second.casefold()} & {"", *_pieces("select $1")})
    fields = STATEMENT_NAME_MESSAGES[message]

    def make(value: str) -> BaseException:
        return postgres_error(fields(value))

    assert redacted_text(make, first) == redacted_text(make, second)


def _pieces(text: str) -> set[str]:
    return {text[i:j] for i in range(len(text)) for j in range(i + 1, len(text) + 1)}


def test_a_name_from_the_statement_stays_in_the_message() -> None:
    error = postgres_error({"C": "42P01", "M": 'relation "scan_vaults" does not exist'})
    redaction.redact_exception(error, statement="SELECT * FROM Scan_Vaults")
    assert 'relation "scan_vaults" does not exist' in str(error)


@settings(max_examples=150, deadline=None)
@given(first=values, second=values, code=st.sampled_from(["P0001", "23505", "22023", "42501"]))
def test_a_message_raised_by_a_function_is_hidden_whatever_its_sqlstate(
    first: str, second: str, code: str
) -> None:
    def make(value: str) -> BaseException:
        # RAISE EXCEPTION 'email % not allowed' USING ERRCODE = code: no quotes, no colon.
        return postgres_error(
            {"C": code, "M": f"email {value} not allowed", "R": "exec_stmt_raise"}
        )

    assert redacted_text(make, first) == redacted_text(make, second)
    error = make(first)
    redaction.redact_exception(error)
    assert isinstance(error, DBAPIError)
    assert error.orig.__cause__.sqlstate == code  # type: ignore[union-attr]
    assert "raised by a function or trigger: ***" in str(error)


@settings(max_examples=150, deadline=None)
@given(first=values, second=values)
def test_a_mariadb_signal_message_is_hidden_and_its_code_kept(first: str, second: str) -> None:
    def make(value: str) -> BaseException:
        return wrapped(
            asyncmy.errors.OperationalError(1644, f"email {value} not allowed"),
            asyncmy.errors.Error,
            value,
        )

    assert redacted_text(make, first) == redacted_text(make, second)
    error = make(first)
    redaction.redact_exception(error)
    assert isinstance(error, DBAPIError)
    assert error.orig.args[0] == 1644  # type: ignore[union-attr]


@settings(max_examples=100, deadline=None)
@given(first=values, second=values)
def test_a_missing_key_chained_to_a_lookup_error_is_hidden(first: str, second: str) -> None:
    def make(value: str) -> BaseException:
        # A non-native Enum's bind processing: KeyError(value), then LookupError.
        try:
            try:
                raise KeyError(value)
            except KeyError as missing:
                raise LookupError(f"{value!r} is not among the defined enum values") from missing
        except LookupError as error:
            return error

    assert redacted_text(make, first) == redacted_text(make, second)


@settings(max_examples=150, deadline=None)
@given(pair=same_length_pair())
def test_a_value_asyncpg_cannot_encode_is_gone_from_the_message_and_its_cause(
    pair: tuple[str, str],
) -> None:
    def make(value: str) -> BaseException:
        # asyncpg's own words: the repr cut at 40 characters, then its cause.
        cause = ValueError(f"invalid UUID {value!r}: length must be between 32..36 characters")
        value_repr = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        driver_error = asyncpg.DataError(
            f"invalid input for query argument $1: {value_repr} ({cause})"
        )
        driver_error.__cause__ = cause
        adapted = AsyncAdapt_asyncpg_dbapi.Error(driver_error.args[0], driver_error)
        adapted.__cause__ = driver_error
        return wrapped(adapted, AsyncAdapt_asyncpg_dbapi.Error, value)

    assert redacted_text(make, pair[0]) == redacted_text(make, pair[1])


MARIADB_MESSAGES: dict[str, Callable[[str], Exception]] = {
    # The server cuts the entry to 64 characters and marks the cut.
    "duplicate entry": lambda v: asyncmy.errors.IntegrityError(
        1062, f"Duplicate entry '{v[:64]}{'...' if len(v) > 64 else ''}' for key 'tok'"
    ),
    "bad integer": lambda v: asyncmy.errors.DataError(
        1366, f"Incorrect integer value: '{v}' for column `test`.`scan_vault`.`n` at row 1"
    ),
    "truncated": lambda v: asyncmy.errors.OperationalError(
        1292, f"Truncated incorrect INTEGER value: '{v}'"
    ),
}


@pytest.mark.parametrize("message", sorted(MARIADB_MESSAGES))
@settings(max_examples=150, deadline=None)
@given(first=values, second=values)
def test_mariadb_errors_say_the_same_whatever_the_value(
    message: str, first: str, second: str
) -> None:
    def make(value: str) -> BaseException:
        return wrapped(MARIADB_MESSAGES[message](value), asyncmy.errors.Error, value)

    assert redacted_text(make, first) == redacted_text(make, second)


def test_what_helps_an_operator_stays() -> None:
    unique = postgres_error(POSTGRES_MESSAGES["duplicate key"]("the value"))
    redaction.redact_exception(unique, statement="INSERT INTO scan_vault (tok) VALUES ($1)")
    assert isinstance(unique, DBAPIError)
    driver_error = unique.orig.__cause__  # type: ignore[union-attr]
    assert isinstance(driver_error, asyncpg.UniqueViolationError)
    assert driver_error.sqlstate == "23505"
    assert driver_error.constraint_name == "scan_vault_tok_key"
    assert 'violates unique constraint "scan_vault_tok_key"' in str(unique)
    assert "[SQL: SELECT $1]" in str(unique)
    assert "the value" not in everything_readable(unique)

    duplicate = MARIADB_MESSAGES["duplicate entry"]("the value")
    redaction.redact_exception(duplicate)
    assert duplicate.args == (1062, "Duplicate entry '***' for key 'tok'")

    foreign_key = asyncmy.errors.IntegrityError(
        1452,
        "Cannot add or update a child row: a foreign key constraint fails (`test`.`scan_vault`, "
        "CONSTRAINT `fk` FOREIGN KEY (`key_tok`) REFERENCES `scan_keys` (`tok`))",
    )
    kept = foreign_key.args
    redaction.redact_exception(foreign_key)
    assert foreign_key.args == kept

    syntax = sqlite3.OperationalError('near "SELCT": syntax error')
    redaction.redact_exception(syntax, statement="SELCT 1")
    assert str(syntax) == 'near "SELCT": syntax error'


@settings(max_examples=150, deadline=None)
@given(params=st.dictionaries(st.text(max_size=10), values, max_size=5))
def test_an_exception_keeps_the_parameter_names_but_not_their_values(
    params: dict[str, str],
) -> None:
    error = DBAPIError.instance(
        "SELECT 1", params, sqlite3.Error("x"), sqlite3.Error, hide_parameters=True
    )
    redaction.redact_exception(error)
    expected = {key: redaction.HIDDEN for key in params} if params else params
    assert error.params == expected


@settings(max_examples=200, deadline=None)
@given(password=st.text(alphabet=st.characters(exclude_characters="*"), min_size=3, max_size=40))
def test_a_failed_connect_never_shows_the_password(password: str) -> None:
    cause = OSError("refused")
    error = ValueError(f"bad dsn postgresql://app:{password}@db/app (password={password})")
    error.__cause__ = cause
    redaction.redact_connect_error(error, {"password": password, "sslpassword": password})
    assert password not in str(error)


def test_a_dsn_password_is_masked_by_its_place() -> None:
    error = RuntimeError("cannot reach postgresql://app:unknown-to-us@db:5432/app?token=abc")
    redaction.redact_connect_error(error, {})
    assert str(error) == "cannot reach postgresql://app:***@db:5432/app?token=***"


def run_query(sql: str, parameters: tuple[str, ...]) -> None:
    """Stands for the sqlite3 call aiosqlite hands its thread."""


def test_driver_debug_logs_show_the_call_but_not_its_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redaction.install_log_filters()
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    logging.getLogger("aiosqlite").debug(
        "executing %s", functools.partial(run_query, "SELECT ?", ("x-value",))
    )
    logging.getLogger("asyncmy").warning("Truncated incorrect INTEGER value: 'x-value'")
    logging.getLogger("sqlalchemy.engine.Engine").debug("Row %r", ("x-value",))
    assert "x-value" not in caplog.text
    assert "executing run_query" in caplog.text
    assert "Truncated incorrect INTEGER value: '***'" in caplog.text
    assert "Row <values hidden: hide_parameters>" in caplog.text


# --- on the real servers -------------------------------------------------------------


# Built at run time: a traceback quotes source lines (Python 3.13 more of them), and a
# literal on the failing line would read as a leak.
PLANTED = "-".join(("plain", "value", "1234"))


async def _plant(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.run_sync(metadata.create_all)
        await connection.execute(insert(KEYS), [{"tok": PLANTED}])
        await connection.execute(insert(VAULT), [{"tok": PLANTED, "n": 1}])


async def _duplicate(database: Database) -> IntegrityError:
    with pytest.raises(IntegrityError) as caught:
        async with database.transaction() as session:
            await session.execute(
                text("INSERT INTO scan_vault (tok, n) VALUES (:p, 1)"), {"p": PLANTED}
            )
    return caught.value


async def test_a_duplicate_key_keeps_its_code_and_class_and_loses_its_value(
    database_url: str,
) -> None:
    async with Database(url=database_url) as database:
        await _plant(database)
        error = await _duplicate(database)
    readable = everything_readable(error)
    assert PLANTED not in readable
    assert "[SQL: INSERT INTO scan_vault (tok, n) VALUES" in str(error)
    assert "SQL parameters hidden" in str(error)
    backend = make_url(database_url).get_backend_name()
    driver_error: Any = error.orig
    if backend == "postgresql":
        assert driver_error.sqlstate == "23505"
        assert "unique constraint" in str(error)
    elif backend == "mysql":
        assert driver_error.args[0] == 1062
        assert "Duplicate entry '***' for key" in str(error)
    else:
        assert "UNIQUE constraint failed: scan_vault.tok" in str(error)


@pytest.mark.backends("postgresql", "mysql")
async def test_with_hide_parameters_off_the_values_stay(database_url: str) -> None:
    # The user asked to see values: the server's detail and the parameters stay.
    async with Database(url=database_url, hide_parameters=False) as database:
        await _plant(database)
        error = await _duplicate(database)
    assert PLANTED in everything_readable(error)
    assert PLANTED in str(error)
