"""A code that names only names keeps its text only in the server's own wording.

A MariaDB routine may SIGNAL any error code with any text, and a PostgreSQL function
may RAISE any SQLSTATE: the code alone never vouches for the text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from fastapi_asyncdb import Database
from fastapi_asyncdb.server_messages import MYSQL_NAMES_ONLY_CODES, RAISED, redact_mysql

pytestmark = pytest.mark.usefixtures("clean_environment")

# What a routine may write: printable ASCII and newlines, quotes over-represented.
# The marks appear in no server message, so any piece of the text that passes shows.
signalled_texts = st.text(
    alphabet=st.one_of(st.characters(min_codepoint=32, max_codepoint=126), st.sampled_from("'`\n")),
    max_size=90,
).map(lambda value: f"<<{value}>>")

# The servers' own messages for each names-only code (MariaDB 10.11 and the client's).
GENUINE = {
    1044: "Access denied for user 'app'@'localhost' to database 'ledger'",
    1045: "Access denied for user 'app'@'10.0.0.7' (using password: YES)",
    1046: "No database selected",
    1048: "Column 'nn' cannot be null",
    1049: "Unknown database 'nosuchdb'",
    1050: "Table 'p' already exists",
    1051: "Unknown table 'db.nosuch,db.nosuch2'",
    1054: "Unknown column 'nosuch.x' in 'WHERE'",
    1091: "Can't DROP FOREIGN KEY `nosuch`; check that it exists",
    1142: "SELECT command denied to user 'app'@'localhost' for table `db`.`t`",
    1146: "Table 'db.nosuch' doesn't exist",
    1040: "Too many connections",
    1203: "User app already has more than 'max_user_connections' active connections",
    1205: "Lock wait timeout exceeded; try restarting transaction",
    1213: "Deadlock found when trying to get lock; try restarting transaction",
    1290: "The MariaDB server is running with the --read-only option so it cannot execute "
    "this statement",
    1317: "Query execution was interrupted",
    1792: "Cannot execute statement in a READ ONLY transaction",
    1927: "Connection was killed",
    1969: "Query execution was interrupted (max_statement_time exceeded)",
    3024: "Query execution was interrupted, maximum statement execution time exceeded",
    1216: "Cannot add or update a child row: a foreign key constraint fails",
    1217: "Cannot delete or update a parent row: a foreign key constraint fails",
    1451: "Cannot delete or update a parent row: a foreign key constraint fails (`db`.`c`, "
    "CONSTRAINT `fk` FOREIGN KEY (`pid`) REFERENCES `p` (`id`) ON DELETE CASCADE)",
    1452: "Cannot add or update a child row: a foreign key constraint fails (`db`.`c`, "
    "CONSTRAINT `fk` FOREIGN KEY (`a`, `b`) REFERENCES `p` (`a`, `b`))",
    1364: "Field 'nn' doesn't have a default value",
    1406: "Data too long for column 's' at row 1",
    1264: "Out of range value for column 't' at row 12",
    1265: "Data truncated for column 'mood' at row 1",
    3819: "Check constraint 'ck' is violated.",
    4025: "CONSTRAINT `ck` failed for `db`.`c`",
    2002: "Can't connect to local MySQL server through socket '/run/mysqld/mysqld.sock' (2)",
    2003: "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connect call failed "
    "('127.0.0.1', 3306))",
    2006: "MySQL server has gone away (ConnectionResetError(104, 'Connection reset by peer'))",
    2013: "Lost connection to MySQL server during query (read timeout)",
    2014: "Command Out of Sync",
    2055: "Lost connection to MySQL server at 'reading initial communication packet', "
    "system error: 0",
}


def test_every_names_only_code_has_a_genuine_message_here() -> None:
    assert set(GENUINE) == MYSQL_NAMES_ONLY_CODES


@pytest.mark.parametrize("code", sorted(GENUINE))
def test_a_names_only_code_keeps_the_servers_own_message(code: int) -> None:
    assert redact_mysql(code, GENUINE[code], None) == GENUINE[code]


@settings(max_examples=300, deadline=None)
@given(code=st.sampled_from(sorted(MYSQL_NAMES_ONLY_CODES)), signalled=signalled_texts)
def test_a_names_only_code_with_other_words_is_masked_like_a_raised_message(
    code: int, signalled: str
) -> None:
    assert redact_mysql(code, signalled, None) == RAISED
    # Nor does the value pass when it follows or precedes the server's words.
    assert redact_mysql(code, GENUINE[code] + signalled, None) == RAISED
    assert redact_mysql(code, signalled + GENUINE[code], None) == RAISED


# Numbers no server or client error has: a routine's own choice (SIGNAL takes up to 65534).
routine_codes = st.one_of(st.integers(1, 999), st.integers(10000, 65534))


@settings(max_examples=200, deadline=None)
@given(
    code=routine_codes,
    signalled=st.one_of(signalled_texts, st.sampled_from(list(GENUINE.values()))),
)
def test_a_code_of_the_routines_own_choosing_is_masked_whatever_its_words(
    code: int, signalled: str
) -> None:
    assert redact_mysql(code, signalled, None) == RAISED


# --- on a real MariaDB -----------------------------------------------------------------

_TABLES = ("srvmsg_c", "srvmsg_p")


@pytest.fixture
async def mariadb(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url) as database:
        async with database.transaction() as session:
            for table in _TABLES:
                await session.execute(text(f"DROP TABLE IF EXISTS {table}"))
            await session.execute(text("DROP PROCEDURE IF EXISTS srvmsg_signal"))
            await session.execute(
                text(
                    "CREATE PROCEDURE srvmsg_signal(IN code int, IN v varchar(200)) "
                    "SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = code, MESSAGE_TEXT = v"
                )
            )
            await session.execute(text("CREATE TABLE srvmsg_p (id int primary key)"))
            await session.execute(
                text(
                    "CREATE TABLE srvmsg_c (id int primary key, pid int, nn int not null, "
                    "s varchar(3), t tinyint, CONSTRAINT srvmsg_ck CHECK (t < 5), "
                    "CONSTRAINT srvmsg_fk FOREIGN KEY (pid) REFERENCES srvmsg_p (id))"
                )
            )
        yield database
        async with database.transaction() as session:
            for table in _TABLES:
                await session.execute(text(f"DROP TABLE IF EXISTS {table}"))
            await session.execute(text("DROP PROCEDURE IF EXISTS srvmsg_signal"))


async def _error_of(database: Database, *statements: str, **params: Any) -> DBAPIError:
    with pytest.raises(DBAPIError) as raised:
        async with database.transaction() as session:
            for statement in statements:
                await session.execute(text(statement), params)
    return raised.value


@pytest.mark.backends("mysql")
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    code=st.one_of(st.sampled_from(sorted(MYSQL_NAMES_ONLY_CODES)), routine_codes),
    signalled=signalled_texts,
)
async def test_a_routine_signalling_a_names_only_code_shows_no_value(
    mariadb: Database, code: int, signalled: str
) -> None:
    error = await _error_of(mariadb, "CALL srvmsg_signal(:code, :v)", code=code, v=signalled)
    assert error.orig is not None
    assert error.orig.args == (code, RAISED)
    assert "<<" not in str(error)
    assert ">>" not in str(error)


# Statements that make MariaDB raise each names-only code it can raise here, with the
# words that must survive.
_GENUINE_ON_MARIADB = {
    1048: (["INSERT INTO srvmsg_c (id, nn) VALUES (1, NULL)"], "Column 'nn' cannot be null"),
    1364: (["INSERT INTO srvmsg_c (id) VALUES (1)"], "Field 'nn' doesn't have a default value"),
    1406: (
        [
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES'",
            "INSERT INTO srvmsg_c VALUES (1, NULL, 1, 'abcd', 1)",
        ],
        "Data too long for column 's' at row 1",
    ),
    1264: (
        [
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES'",
            "INSERT INTO srvmsg_c VALUES (1, NULL, 1, 'a', 999)",
        ],
        "Out of range value for column 't' at row 1",
    ),
    4025: (
        ["INSERT INTO srvmsg_c VALUES (1, NULL, 1, 'a', 7)"],
        "CONSTRAINT `srvmsg_ck` failed for",
    ),
    1452: (
        ["INSERT INTO srvmsg_c VALUES (1, 9, 1, 'a', 1)"],
        "Cannot add or update a child row: a foreign key constraint fails (",
    ),
    1451: (
        [
            "INSERT INTO srvmsg_p VALUES (1)",
            "INSERT INTO srvmsg_c VALUES (1, 1, 1, 'a', 1)",
            "DELETE FROM srvmsg_p",
        ],
        "Cannot delete or update a parent row: a foreign key constraint fails (",
    ),
    1054: (["SELECT nosuch FROM srvmsg_c"], "Unknown column 'nosuch' in "),
    1146: (["SELECT * FROM srvmsg_nosuch"], "srvmsg_nosuch' doesn't exist"),
    1050: (["CREATE TABLE srvmsg_p (id int)"], "Table 'srvmsg_p' already exists"),
    1051: (["DROP TABLE srvmsg_nosuch"], "Unknown table '"),
    1091: (["ALTER TABLE srvmsg_c DROP COLUMN nosuch"], "Can't DROP COLUMN `nosuch`"),
    1049: (["USE srvmsg_nosuchdb"], "Unknown database 'srvmsg_nosuchdb'"),
    1969: (
        ["SET STATEMENT max_statement_time = 0.01 FOR SELECT SLEEP(1)"],
        "Query execution was interrupted (max_statement_time exceeded)",
    ),
    1792: (
        ["SET TRANSACTION READ ONLY", "START TRANSACTION", "INSERT INTO srvmsg_p VALUES (5)"],
        "Cannot execute statement in a READ ONLY transaction",
    ),
}


@pytest.mark.backends("mysql")
@pytest.mark.parametrize("code", sorted(_GENUINE_ON_MARIADB))
async def test_mariadbs_own_names_only_errors_keep_their_message(
    mariadb: Database, code: int
) -> None:
    statements, words = _GENUINE_ON_MARIADB[code]
    error = await _error_of(mariadb, *statements)
    assert error.orig is not None
    assert error.orig.args[0] == code
    assert words in error.orig.args[1]
    assert RAISED not in str(error)


# --- on a real PostgreSQL --------------------------------------------------------------


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("sqlstate", ["23505", "23503", "08006", "28000", "3D000", "42P01"])
async def test_a_function_raising_a_names_only_sqlstate_shows_no_value(
    database_url: str, sqlstate: str
) -> None:
    # PostgreSQL says which routine raised an error: RAISE's text is hidden by its
    # origin, whatever SQLSTATE its author chose.
    value = "-".join(("SSN", "123", "45", "6789"))
    async with Database(url=database_url) as database:
        error = await _error_of(
            database,
            "SELECT set_config('srvmsg.v', :v, false)",
            "DO $$ BEGIN RAISE EXCEPTION USING MESSAGE = 'Key (tok)=(' || "
            f"current_setting('srvmsg.v') || ') exists', ERRCODE = '{sqlstate}'; END $$",
            v=value,
        )
    assert error.orig is not None
    assert value not in str(error)
    assert "raised by a function or trigger: ***" in str(error)
