"""Keep secrets out of what people read: URLs, error texts, reprs and logs.

Secrets reach text in four ways: in a URL (a password, or ``?sslpassword=`` and
friends, which SQLAlchemy does not mask); in the values that drivers and servers quote
back in their messages (a duplicate key, a bad cast, a failing row); in the bound
parameters that exceptions carry; and in what drivers and SQLAlchemy log at DEBUG
(result rows, the calls with their arguments).

Values are found by where they sit in a message, never by comparing with the bound
parameters: servers truncate (MariaDB prints only the start of a duplicate entry), and
a value need not be a parameter at all (a row read back, a column default). What
helps an operator stays: the error class, the SQLSTATE or error code, constraint and
table names, the SQL text with its placeholders.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import URL, Engine, ExceptionContext
from sqlalchemy.exc import StatementError

from . import _compat
from .server_messages import (
    HIDDEN,
    PG_DATA_FIELDS,
    PG_RAISE_SOURCE,
    TYPE_NAMES,
    in_statement,
    redact_mysql,
    redact_postgres,
    redact_quoted,
)
from .validation_errors import redact_validation_error

__all__ = [
    "HIDDEN",
    "install_log_filters",
    "install_parameter_redaction",
    "is_secret_query_key",
    "mask_url",
    "redact_connect_error",
    "redact_exception",
    "redact_quoted",
    "redact_type_error",
    "remove_log_filters",
]

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
        f"{key}={HIDDEN if is_secret_query_key(key) else value}" for key, value in url.query.items()
    )
    return f"{base}?{'&'.join(pairs)}"


def install_parameter_redaction(engine: Engine) -> None:
    """Keep data out of the engine's errors and out of the logs of its driver.

    For an engine with ``hide_parameters``: that setting drops the parameter list from
    SQLAlchemy's own message, but the value still travels in the driver's message,
    in the server's DETAIL and HINT, in the exception's ``params``, and in DEBUG logs.

    The redaction goes first among the engine's ``handle_error`` listeners, whenever
    they were added: SQLAlchemy hands every listener the same exception objects, and
    one registered earlier (OpenTelemetry's, when the instrumentation wraps
    ``create_async_engine`` before the engine exists) would otherwise read the driver's
    text unredacted and record it in its span's status.
    """
    _compat.handle_error_first(engine, _redact_on_error)
    install_log_filters()


def _redact_on_error(context: ExceptionContext) -> None:
    for error in (context.sqlalchemy_exception, context.original_exception):
        if error is not None:
            redact_exception(error, statement=context.statement)


# --- exceptions ----------------------------------------------------------------------


def redact_exception(error: BaseException, *, statement: str | None = None) -> None:
    """Take data out of ``error`` and everything chained to it, in place.

    Visits what ``logging`` prints with ``exc_info`` (the ``__cause__`` and
    ``__context__`` chain) and what SQLAlchemy keeps (``.orig``, ``.params``).
    SQLAlchemy's own message was built from the driver's text when it was raised,
    so it is rebuilt from the redacted driver error.
    """
    chain = list(_chain(error))
    before = {id(item): _text_of(item) for item in chain}
    try:
        for item in chain:
            if not isinstance(item, StatementError):
                _redact_one(item, statement)
        for item in chain:
            if isinstance(item, StatementError):
                _redact_statement_error(item, before, statement)
    except Exception:
        # Raising here would replace the database's error with this one: hide
        # every text instead, keeping codes (drivers' classifiers read them).
        for item in chain:
            _hide_all_text(item)


def redact_type_error(error: BaseException) -> None:
    """Redact an error that SQLAlchemy's own code raised over a value, in place.

    A column type converts values in SQLAlchemy, outside the driver's error path: a
    non-native ``Enum`` reading back a value it does not know raises ``LookupError``
    quoting it, and no ``handle_error`` sees it. Errors raised elsewhere are the
    app's own and stay as they are.
    """
    if isinstance(error, StatementError) or not isinstance(error, Exception):
        return  # handle_error saw those; cancellation carries no data
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is not None and traceback.tb_frame.f_globals.get("__name__", "").startswith(
        "sqlalchemy."
    ):
        redact_exception(error)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        item = pending.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        orig = getattr(item, "orig", None)
        pending.extend((item.__cause__, item.__context__))
        if isinstance(orig, BaseException):
            pending.append(orig)


def _text_of(error: BaseException) -> str | None:
    try:
        return str(error)
    except Exception:
        return None


def _redact_one(error: BaseException, statement: str | None) -> None:
    if not isinstance(error, Exception):
        return  # cancellation and exit: nothing from a database in them
    module = type(error).__module__
    if "asyncpg" in module:
        sqlstate = getattr(error, "sqlstate", None)
        if _raised_by_function(error):
            sqlstate = "P0001"  # whatever ERRCODE its author chose, the text is theirs
        for field in PG_DATA_FIELDS:
            if getattr(error, field, None) is not None:
                setattr(error, field, None)
        if isinstance(getattr(error, "message", None), str):
            error.message = redact_postgres(error.message, sqlstate, statement)  # type: ignore[attr-defined]
        _replace_args(error, lambda text: redact_postgres(text, sqlstate, statement))
    elif module.startswith("asyncmy"):
        code = error.args[0] if error.args else None
        _replace_args(error, lambda text: redact_mysql(code, text, statement))
    elif module.startswith("sqlite3"):
        _replace_args(error, lambda text: redact_quoted(text, keep=in_statement(statement)))
    elif module.startswith(("sqlalchemy", "fastapi_asyncdb")):
        return  # their own words, and StatementError is rebuilt apart
    elif redact_validation_error(error):
        return  # a model's errors, the values they quote masked
    elif isinstance(error, KeyError):
        # Its argument is the missing key itself (a non-native Enum's lookup of a value).
        error.args = tuple(HIDDEN for _ in error.args)
    elif not isinstance(error, OSError):  # an OSError's text is its errno and address
        # An encoder's complaint about a value (asyncpg's TypeError, ValueError...).
        _replace_args(error, lambda text: redact_quoted(text, keep=TYPE_NAMES.__contains__))


def _raised_by_function(error: BaseException) -> bool:
    """asyncpg's error, or SQLAlchemy's adaptation of it (its cause), came from RAISE."""
    for item in (error, error.__cause__):
        if getattr(item, "server_source_function", None) == PG_RAISE_SOURCE:
            return True
    return False


def _hide_all_text(error: BaseException) -> None:
    _replace_args(error, lambda _text: HIDDEN)
    for field in PG_DATA_FIELDS:
        if isinstance(getattr(error, field, None), str):
            setattr(error, field, None)
    if isinstance(error, StatementError) and error.params:
        error.params = HIDDEN


def _replace_args(error: BaseException, redact: Callable[[str], str]) -> None:
    args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in error.args)
    if args != error.args:
        error.args = args


def _redact_statement_error(
    error: StatementError, before: Mapping[int, str | None], statement: str | None
) -> None:
    if error.params:
        error.params = _masked(error.params)
    if not error.args or not isinstance(error.args[0], str):
        return
    message = error.args[0]
    orig = error.orig
    old = before.get(id(orig)) if orig is not None else None
    new = _text_of(orig) if orig is not None else None
    if old and new is not None and old in message:
        message = message.replace(old, new)
    else:
        message = redact_quoted(message, keep=in_statement(statement or error.statement))
    error.args = (message, *error.args[1:])


def _masked(params: Any) -> Any:
    """The parameters' shape with every value hidden: names stay, values go."""
    if isinstance(params, Mapping):
        return {key: HIDDEN for key in params}
    if isinstance(params, list | tuple):
        return type(params)(
            _masked(item) if isinstance(item, Mapping | list | tuple) else HIDDEN for item in params
        )
    return HIDDEN


def redact_connect_error(error: BaseException, connect_arguments: Mapping[str, Any]) -> None:
    """Take credentials out of a failed connect's error and its chain, in place.

    Drivers may echo a DSN (``user:password@host``) or a connect argument; the
    password and every secret-looking argument (``sslpassword``, ``token``...) are
    masked wherever they appear, in clear or percent-encoded, and any DSN's password
    by its place.
    """
    secrets = {
        str(value)
        for key, value in connect_arguments.items()
        if (key == "password" or is_secret_query_key(key)) and value and len(str(value)) > 2
    }
    encoded = {quote(s, safe="", errors="surrogatepass") for s in secrets}
    variants = sorted(secrets | encoded, key=len, reverse=True)

    def redact(text: str) -> str:
        for secret in variants:
            text = text.replace(secret, HIDDEN)
        text = _DSN_PASSWORD.sub(rf"\1{HIDDEN}@", text)
        return _SECRET_ASSIGNMENT.sub(rf"\1{HIDDEN}", text)

    for item in _chain(error):
        if isinstance(item, Exception) and not isinstance(item, OSError):
            try:
                _replace_args(item, redact)
            except Exception:
                _hide_all_text(item)


_DSN_PASSWORD = re.compile(r"(\w[\w+.-]*://[^:/@\s]*:)[^@\s]*@")
_SECRET_ASSIGNMENT = re.compile(
    r"(\b\w*(?:pass|pwd|secret|token|key|auth|credential)\w*\s*=\s*)[^\s&,;)]+", re.IGNORECASE
)


# --- logs ----------------------------------------------------------------------------


class _Hidden:
    def __init__(self, what: str) -> None:
        self._what = what

    def __repr__(self) -> str:
        return f"<{self._what} hidden: hide_parameters>"

    __str__ = __repr__


_ROW_HIDDEN = _Hidden("values")


class _SQLAlchemyRowFilter(logging.Filter):
    """SQLAlchemy logs each result row at DEBUG (even without ``echo``, once its logger
    is at DEBUG); ``hide_parameters`` hides the parameters only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.endswith("Row %r"):
            record.args = (_ROW_HIDDEN,)
        return True


class _AiosqliteCallFilter(logging.Filter):
    """aiosqlite logs each call to its thread, arguments and all, at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_describe(arg) for arg in record.args)
        return True


def _describe(arg: object) -> object:
    if isinstance(arg, BaseException):
        return f"{type(arg).__name__}: {redact_quoted(str(arg))}"
    function = getattr(arg, "func", arg)  # a functools.partial holds the arguments
    return getattr(function, "__qualname__", None) or type(function).__name__


class _QuotedValueFilter(logging.Filter):
    """asyncmy logs the server's warnings, which quote values ("Truncated incorrect
    INTEGER value: '...'"), at WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_quoted(record.getMessage(), quotes="'\"")
        record.args = ()
        return True


# Which logger each filter guards. The loggers are shared by every engine of the
# process and their records do not say which engine wrote them: once an engine that
# hides parameters exists, rows and driver calls are hidden for all.
_LOG_FILTERS: dict[str, logging.Filter] = {
    "sqlalchemy.engine.Engine": _SQLAlchemyRowFilter(),
    "aiosqlite": _AiosqliteCallFilter(),
    "asyncmy": _QuotedValueFilter(),
}


def install_log_filters() -> None:
    """Hide values in the shared loggers of SQLAlchemy, aiosqlite and asyncmy."""
    for name, log_filter in _LOG_FILTERS.items():
        logging.getLogger(name).addFilter(log_filter)  # adding it twice keeps one


def remove_log_filters() -> None:
    """Undo what engines with ``hide_parameters`` did to the shared loggers (for tests)."""
    for name, log_filter in _LOG_FILTERS.items():
        logging.getLogger(name).removeFilter(log_filter)
