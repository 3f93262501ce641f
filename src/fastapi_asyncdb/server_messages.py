"""How each server's error messages quote values, and how to mask them there.

Values are found by where they sit in a message, never by comparing with the bound
parameters (``redaction`` explains why): each backend's messages have their own
places for names, which stay, and for values, which go.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable

__all__ = [
    "HIDDEN",
    "PG_DATA_FIELDS",
    "PG_RAISE_SOURCE",
    "RAISED",
    "TYPE_NAMES",
    "in_statement",
    "redact_mysql",
    "redact_postgres",
    "redact_quoted",
]

HIDDEN = "***"

_QUOTES = "'\"`"
_MASKED = f"'{HIDDEN}'"
TYPE_NAMES = frozenset(name for name, value in vars(builtins).items() if isinstance(value, type))


def redact_quoted(
    text: str, *, quotes: str = _QUOTES, keep: Callable[[str], bool] | None = None
) -> str:
    """Mask every quoted stretch of ``text`` unless ``keep`` accepts what it holds.

    A stretch runs from a quote to the last quote of the same kind, so a value that
    holds that quote itself is masked whole rather than split into pieces; text
    outside quotes is the message's own wording and stays. A masked stretch always
    reads ``'***'``: which quote a ``repr`` chose would tell what the value held.
    """
    pieces: list[str] = []
    position = 0
    while True:
        start = min((i for i in (text.find(q, position) for q in quotes) if i >= 0), default=-1)
        if start < 0:
            pieces.append(text[position:])
            return "".join(pieces)
        mark = text[start]
        end = text.rfind(mark)
        pieces.append(text[position:start])
        if end == start:  # an unmatched quote: what follows it may be a value
            pieces.append(_MASKED)
            return "".join(pieces)
        inside = text[start + 1 : end]
        pieces.append(text[start : end + 1] if keep and keep(inside) else _MASKED)
        position = end + 1


def in_statement(statement: str | None, *, fold: bool = False) -> Callable[[str], bool]:
    """Quoted text that is part of the statement's SQL (a syntax error's excerpt) says
    nothing that the SQL shown beside it does not."""
    sql = str(statement or "")
    if fold:
        sql = sql.casefold()
    return lambda inside: (
        bool(sql) and bool(inside) and (inside.casefold() if fold else inside) in sql
    )


# PostgreSQL's SQLSTATE classes whose primary message quotes only names the server
# chose (constraints and relations: 23) or the connection's own (08, 28, 3D); their
# data is in DETAIL, dropped anyway.
_PG_NAMES_ONLY_CLASSES = frozenset({"08", "23", "28", "3D"})
# Classes that quote names from the statement, but also what the server parsed out of
# a value: to_tsquery(:q) gives 42601 'syntax error in tsquery: "<the value>"',
# current_setting(:n) 42704, a value cast to regclass 42P01 (lowercased), its schema
# 3F000. Quoted text stays only when the statement holds it (names are folded).
_PG_STATEMENT_NAMES_CLASSES = frozenset(
    {"0A", "0P", "21", "25", "3B", "3F", "40", "42", "53", "55", "57"}
)
# A message written by a function or trigger (RAISE) may be built from a row: its
# SQLSTATE is P0001 unless the author chose another, and its origin says RAISE.
PG_RAISE_SOURCE = "exec_stmt_raise"
RAISED = f"raised by a function or trigger: {HIDDEN}"
# asyncpg's own message for a value it cannot encode: "invalid input for query
# argument $1: <the value's repr> (<why>)".
_ASYNCPG_ARGUMENT = re.compile(
    r"^((?:invalid input for )?query argument \$\d+"
    r"(?: in element #\d+ of executemany\(\) sequence)?)"
)
# Fields of a PostgreSQL error that hold data (the failing key, row or input) or
# the text of other sessions' queries (a deadlock's DETAIL).
PG_DATA_FIELDS = ("detail", "hint", "context")


def redact_postgres(text: str, sqlstate: str | None, statement: str | None) -> str:
    if sqlstate is not None and sqlstate.startswith("P0"):
        return RAISED
    argument = _ASYNCPG_ARGUMENT.match(text)
    if argument:
        return f"{argument.group(1)}: {HIDDEN}"
    if sqlstate is not None and sqlstate[:2] in _PG_NAMES_ONLY_CLASSES:
        return text
    if sqlstate is not None and sqlstate[:2] in _PG_STATEMENT_NAMES_CLASSES:
        return redact_quoted(text, keep=in_statement(statement, fold=True))
    # Data errors (22), limits (54) and the rest put values after a colon,
    # quoted or not ("date field value out of range: 1987-13-24"): the words before
    # the first colon say what went wrong, what follows may be the value.
    # Quoted values go first, so a value holding ": " cannot move the cut.
    head, colon, _value = redact_quoted(text).partition(": ")
    return head + (f": {HIDDEN}" if colon else "")


# MySQL/MariaDB error codes whose message quotes only names (tables, columns,
# constraints, users and hosts), or nothing at all.
_MYSQL_NAMES_ONLY_CODES = frozenset(
    {
        *(1044, 1045, 1046, 1048, 1049, 1050, 1051, 1054, 1091, 1142, 1146),  # names
        *(1040, 1203, 1205, 1213, 1290, 1317, 1792, 1927, 1969, 3024),  # state, limits
        *(1216, 1217, 1364, 1406, 1264, 1265, 1451, 1452, 3819, 4025),  # constraints
        *(2002, 2003, 2006, 2013, 2014, 2055),  # the client's connection errors
    }
)
_MYSQL_SYNTAX_ERROR = 1064
# SIGNAL's codes (1644 for SQLSTATE 45000): the message a trigger or routine wrote.
_MYSQL_SIGNAL_CODES = frozenset({1642, 1643, 1644})
_MYSQL_DUPLICATE_ENTRY = re.compile(r"^(Duplicate entry )'.*'( for key '[^']*')$", re.DOTALL)


def redact_mysql(code: object, text: str, statement: str | None) -> str:
    if code in _MYSQL_NAMES_ONLY_CODES:
        return text
    if code in _MYSQL_SIGNAL_CODES:
        return RAISED
    # The value may hold quotes, the key name never does: anchor on the end.
    duplicate = _MYSQL_DUPLICATE_ENTRY.match(text)
    if duplicate:
        return f"{duplicate.group(1)}'{HIDDEN}'{duplicate.group(2)}"
    # The client interpolates values into the SQL, so a syntax error's excerpt may hold
    # one; it is kept only when it is a piece of the statement as written.
    keep = in_statement(statement) if code == _MYSQL_SYNTAX_ERROR else None
    # Backquotes hold identifiers; values are in single or double quotes.
    return redact_quoted(text, quotes="'\"", keep=keep)
