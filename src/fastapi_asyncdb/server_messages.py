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
    "MYSQL_NAMES_ONLY_CODES",
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


# MySQL/MariaDB messages that quote only names (tables, columns, constraints, users and
# hosts) or nothing at all, by error code: the server's own wording for each (MariaDB's
# and MySQL's). A routine may SIGNAL any code with any text (SET MYSQL_ERRNO = 1048,
# MESSAGE_TEXT = CONCAT(...a value...)): its text passes only when it has the shape of
# the server's own, else it is masked like any raised message. A routine that imitates
# a template with a value in a name's place is not told apart.
_NAME = r"'[^'\n]{1,200}'"
_IDENT = r"`[^`\n]{1,200}`"
_IDENTS = rf"{_IDENT}(?:, {_IDENT})*"
_QUALIFIED = rf"{_IDENT}(?:\.{_IDENT})?"
_FOREIGN_KEY = (
    rf"a foreign key constraint fails(?: \({_QUALIFIED}, CONSTRAINT {_IDENT} FOREIGN KEY "
    rf"\({_IDENTS}\) REFERENCES {_QUALIFIED} \({_IDENTS}\)"
    r"(?: ON (?:DELETE|UPDATE) (?:CASCADE|SET NULL|SET DEFAULT|RESTRICT|NO ACTION))*\))?"
)
# The client's own connection errors end with the socket's complaint, which may nest
# one pair of parentheses ("[Errno 111] Connect call failed ('127.0.0.1', 3306)").
_REASON = r"(?: \([^()\n]*(?:\([^()\n]*\)[^()\n]*)*\))?"
_MYSQL_TEMPLATES: dict[int, str] = {
    1044: rf"Access denied for user {_NAME}@{_NAME} to database {_NAME}",
    1045: rf"Access denied for user {_NAME}@{_NAME} \(using password: (?:YES|NO)\)",
    1046: r"No database selected",
    1048: rf"Column {_NAME} cannot be null",
    1049: rf"Unknown database {_NAME}",
    1050: rf"Table {_NAME} already exists",
    1051: rf"Unknown table {_NAME}",
    1054: rf"Unknown column {_NAME} in {_NAME}",
    1091: rf"Can't DROP (?:[A-Z]+ ){{0,2}}(?:{_IDENT}|{_NAME}); check that it exists",
    1142: rf"[A-Z ]{{1,40}} command denied to user {_NAME}@{_NAME} for table "
    rf"(?:{_NAME}|{_QUALIFIED})",
    1146: rf"Table {_NAME} doesn't exist",
    1040: r"Too many connections",
    1203: r"User [^\s']{1,200} already has more than 'max_user_connections' active connections",
    1205: r"Lock wait timeout exceeded; try restarting transaction",
    1213: r"Deadlock found when trying to get lock; try restarting transaction",
    1290: r"The (?:MySQL|MariaDB) server is running with the [\w-]{1,60} option so it "
    r"cannot execute this statement",
    1317: r"Query execution was interrupted",
    1792: r"Cannot execute statement in a READ ONLY transaction\.?",
    1927: r"Connection was killed",
    1969: r"Query execution was interrupted \(max_statement_time exceeded\)",
    3024: r"Query execution was interrupted, maximum statement execution time exceeded",
    1216: rf"Cannot add or update a child row: {_FOREIGN_KEY}",
    1217: rf"Cannot delete or update a parent row: {_FOREIGN_KEY}",
    1451: rf"Cannot delete or update a parent row: {_FOREIGN_KEY}",
    1452: rf"Cannot add or update a child row: {_FOREIGN_KEY}",
    1364: rf"Field {_NAME} doesn't have a default value",
    1406: rf"Data too long for column {_NAME} at row \d+",
    1264: rf"Out of range value for column {_NAME} at row \d+",
    1265: rf"Data truncated for column {_NAME} at row \d+",
    3819: rf"Check constraint {_NAME} is violated\.",
    4025: rf"CONSTRAINT {_IDENT} failed for {_QUALIFIED}",
    2002: rf"Can't connect to (?:local )?(?:MySQL|MariaDB) server(?: on {_NAME}| through "
    rf"socket {_NAME}){_REASON}",
    2003: rf"Can't connect to (?:MySQL|MariaDB) server on {_NAME}{_REASON}",
    2006: rf"(?:MySQL|MariaDB) server has gone away{_REASON}",
    2013: rf"Lost connection to (?:MySQL|MariaDB) server during query{_REASON}",
    2014: r"Commands? Out of Sync",
    2055: rf"Lost connection to (?:MySQL|MariaDB) server at {_NAME}, system error: \d+",
}
_MYSQL_NAMES_ONLY = {code: re.compile(template) for code, template in _MYSQL_TEMPLATES.items()}
MYSQL_NAMES_ONLY_CODES = frozenset(_MYSQL_NAMES_ONLY)
_MYSQL_SYNTAX_ERROR = 1064
# SIGNAL's codes (1644 for SQLSTATE 45000): the message a trigger or routine wrote.
_MYSQL_SIGNAL_CODES = frozenset({1642, 1643, 1644})
# The numbers of the errors a server or client sends (1000-9999: numbers from 10000 on
# name messages of the server's own log); a routine that picks its own number
# (SET MYSQL_ERRNO = 50001, a common habit) picks one outside them.
_MYSQL_OWN_CODES = range(1000, 10000)
_MYSQL_DUPLICATE_ENTRY = re.compile(r"^(Duplicate entry )'.*'( for key '[^']*')$", re.DOTALL)


def redact_mysql(code: object, text: str, statement: str | None) -> str:
    names_only = _MYSQL_NAMES_ONLY.get(code) if isinstance(code, int) else None
    if names_only is not None:
        return text if names_only.fullmatch(text) else RAISED
    if code in _MYSQL_SIGNAL_CODES or (isinstance(code, int) and code not in _MYSQL_OWN_CODES):
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
