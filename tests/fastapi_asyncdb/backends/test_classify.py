"""Each backend's classification of real failures, provoked on the real databases.

Every test makes the server (or the library's guards) fail the way an app meets it,
catches what the app's code receives (SQLAlchemy's exception, or the library's own),
and asks ``Database.classify``: the entry point the error answers, the retries and
the metrics use. docs/errors.md is the contract: its table says which kind each
failure is.

A kind is tested where it can occur: SQLite has no server to refuse or drop a
connection, no statement or lock timeout (a lock not had in time is ``busy``) and no
lost race (``BEGIN IMMEDIATE`` queues writers); ``busy`` is SQLite's alone. A lock wait
past its limit (PostgreSQL's lock_timeout, MariaDB's innodb_lock_wait_timeout, error
1205) is ``timeout``, not ``retryable``, and a command past the client's
DB_COMMAND_TIMEOUT is ``unavailable``, as the table says.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_asyncdb import Database
from fastapi_asyncdb.errors import (
    DatabaseUnavailableError,
    ErrorKind,
    ReadOnlySessionError,
    UnavailableCause,
)

from ..proxy import free_port

pytestmark = pytest.mark.usefixtures("clean_environment")

SERVERS = ("postgresql", "mysql")
SESSION_ID_SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
KILL_SQL = {"postgresql": "SELECT pg_terminate_backend({})", "mysql": "KILL {}"}
SLEEP_SQL = {"postgresql": "SELECT pg_sleep(5)", "mysql": "SELECT SLEEP(5)"}
# Long enough for the server to end the statement first, short enough for a test.
LIMIT = 0.3
# Bounds a test whose two transactions wait for each other, should one fail early.
WAIT = 15


@dataclass
class Schema:
    parents: Table
    children: Table


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url) as database:
        yield database


@pytest.fixture
async def schema(database: Database) -> AsyncIterator[Schema]:
    """A parent and a child table, named for this test alone, with one parent row."""
    suffix = uuid.uuid4().hex[:8]
    metadata = MetaData()
    parents = Table(
        f"classify_parents_{suffix}",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("value", Integer, nullable=False),
    )
    children = Table(
        f"classify_children_{suffix}",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("parent_id", Integer, ForeignKey(parents.c.id), nullable=False),
        Column("code", String(20), nullable=False, unique=True),
        Column("quantity", Integer, CheckConstraint("quantity >= 0"), nullable=False),
    )
    await database.create_all(metadata)
    async with database.transaction() as session:
        await session.execute(insert(parents), [{"id": 1, "value": 0}, {"id": 2, "value": 0}])
        await session.execute(insert(children).values(id=1, parent_id=1, code="taken", quantity=1))
    try:
        yield Schema(parents, children)
    finally:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)


def sleep_in_a_unit(database: Database) -> Callable[[], Awaitable[None]]:
    """A unit of work that sleeps in the server for longer than the test's limits."""

    async def sleep() -> None:
        async with database.transaction() as session:
            await session.execute(text(SLEEP_SQL[database.backend.name]))

    return sleep


async def classify_failure(database: Database, work: Callable[[], Awaitable[object]]) -> ErrorKind:
    """The kind of the exception ``work`` raises, as the library classifies it."""
    with pytest.raises(Exception) as caught:  # noqa: PT011 - any failure, classified below
        await work()
    return database.classify(caught.value)


def child(**values: object) -> dict[str, object]:
    return {"id": 2, "parent_id": 1, "code": "free", "quantity": 1} | values


# -- conflict: every constraint violation, on every backend ---------------------------


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(child(code="taken"), id="unique"),
        pytest.param(child(id=1, code="other"), id="primary-key"),
        pytest.param(child(parent_id=99), id="foreign-key"),
        pytest.param(child(quantity=-1), id="check"),
    ],
)
async def test_a_constraint_violation_is_a_conflict(
    database: Database, schema: Schema, values: dict[str, object]
) -> None:
    async def insert_child() -> None:
        async with database.transaction() as session:
            await session.execute(insert(schema.children).values(**values))

    assert await classify_failure(database, insert_child) is ErrorKind.CONFLICT


async def test_deleting_a_referenced_row_is_a_conflict(database: Database, schema: Schema) -> None:
    async def delete_parent() -> None:
        async with database.transaction() as session:
            await session.execute(schema.parents.delete().where(schema.parents.c.id == 1))

    assert await classify_failure(database, delete_parent) is ErrorKind.CONFLICT


# -- retryable: lost races between two real transactions ------------------------------


@pytest.mark.backends("postgresql")
async def test_a_serialization_failure_is_retryable(database: Database, schema: Schema) -> None:
    parents = schema.parents
    snapshot_taken, other_committed = asyncio.Event(), asyncio.Event()

    async def repeatable_read_writer() -> None:
        async with database.transaction() as session:
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            await session.execute(select(parents.c.value).where(parents.c.id == 1))
            snapshot_taken.set()
            await other_committed.wait()
            # The row changed after this transaction's snapshot: the server refuses.
            await session.execute(update(parents).where(parents.c.id == 1).values(value=1))

    async def other_writer() -> None:
        await snapshot_taken.wait()
        async with database.transaction() as session:
            await session.execute(update(parents).where(parents.c.id == 1).values(value=2))
        other_committed.set()

    async with asyncio.timeout(WAIT):
        failing = asyncio.create_task(repeatable_read_writer())
        await other_writer()
        assert await classify_failure(database, lambda: failing) is ErrorKind.RETRYABLE


@pytest.mark.backends(*SERVERS)
async def test_a_deadlock_is_retryable(database: Database, schema: Schema) -> None:
    parents = schema.parents
    first_locks = [asyncio.Event(), asyncio.Event()]

    async def lock_in_order(mine: int, theirs: int, locked: asyncio.Event) -> None:
        async with database.transaction() as session:
            await set_value(session, parents, mine)
            locked.set()
            await asyncio.gather(*(event.wait() for event in first_locks))
            await set_value(session, parents, theirs)  # each waits for the other

    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(
            lock_in_order(1, 2, first_locks[0]),
            lock_in_order(2, 1, first_locks[1]),
            return_exceptions=True,
        )
    # The server picks one victim; the other transaction then gets its lock and commits.
    failures = [result for result in results if isinstance(result, BaseException)]
    assert len(failures) == 1, results
    assert database.classify(failures[0]) is ErrorKind.RETRYABLE


async def set_value(session: AsyncSession, parents: Table, row: int) -> None:
    await session.execute(update(parents).where(parents.c.id == row).values(value=row))


# -- timeout: statements and lock waits past their limits -----------------------------


@pytest.mark.backends(*SERVERS)
async def test_a_statement_past_the_statement_timeout_is_a_timeout(database_url: str) -> None:
    # DB_STATEMENT_TIMEOUT: statement_timeout on PostgreSQL, max_statement_time on MariaDB.
    async with Database(url=database_url, statement_timeout=LIMIT) as database:
        assert await classify_failure(database, sleep_in_a_unit(database)) is ErrorKind.TIMEOUT


@pytest.mark.backends("postgresql")
async def test_a_statement_past_a_local_statement_timeout_is_a_timeout(
    database: Database,
) -> None:
    async def sleep() -> None:
        async with database.transaction() as session:
            await session.execute(text(f"SET LOCAL statement_timeout = {int(LIMIT * 1000)}"))
            await session.execute(text(SLEEP_SQL["postgresql"]))

    assert await classify_failure(database, sleep) is ErrorKind.TIMEOUT


# The lock wait limit, set for the waiting transaction alone.
LOCK_WAIT_SQL = {
    "postgresql": f"SET LOCAL lock_timeout = {int(LIMIT * 1000)}",
    "mysql": "SET SESSION innodb_lock_wait_timeout = 1",  # whole seconds only
}


@pytest.mark.backends(*SERVERS)
async def test_a_lock_wait_past_its_limit_is_a_timeout(database: Database, schema: Schema) -> None:
    parents = schema.parents
    locked, waited = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with database.transaction() as session:
            await set_value(session, parents, 1)
            locked.set()
            await waited.wait()

    async def waiter() -> None:
        await locked.wait()
        try:
            async with database.transaction() as session:
                await session.execute(text(LOCK_WAIT_SQL[database.backend.name]))
                await set_value(session, parents, 1)
        finally:
            waited.set()

    async with asyncio.timeout(WAIT):
        holding = asyncio.create_task(holder())
        assert await classify_failure(database, waiter) is ErrorKind.TIMEOUT
        await holding


# -- read_only: writes where the server or the library refuses them -------------------

READ_ONLY_TRANSACTION_SQL = {
    "postgresql": "SET TRANSACTION READ ONLY",
    "mysql": "START TRANSACTION READ ONLY",
    "sqlite": "PRAGMA query_only = ON",
}


async def test_a_write_in_a_read_only_transaction_is_read_only(
    database: Database, schema: Schema
) -> None:
    async def write() -> None:
        async with database.transaction() as session:
            await session.execute(text(READ_ONLY_TRANSACTION_SQL[database.backend.name]))
            await set_value(session, schema.parents, 1)

    try:
        assert await classify_failure(database, write) is ErrorKind.READ_ONLY
    finally:
        if database.backend.name == "sqlite":
            # query_only belongs to the connection, which the pool keeps.
            await database.engine.dispose()


async def test_a_write_through_a_read_connection_is_read_only(
    database: Database, schema: Schema
) -> None:
    async def write() -> None:
        async with database.read_connection() as connection:
            await connection.execute(update(schema.parents).values(value=3))

    with pytest.raises(ReadOnlySessionError) as caught:
        await write()
    assert database.classify(caught.value) is ErrorKind.READ_ONLY
    # Under the library's error, the server's own refusal: the read engine's connections
    # are read-only on the server, and the backend reads the refusal as such.
    refusal = caught.value.__cause__
    assert refusal is not None
    assert database.classify(refusal) is ErrorKind.READ_ONLY


# -- unavailable: no server, a lost connection, no answer in time ---------------------


@pytest.mark.backends(*SERVERS)
async def test_a_refused_connection_is_unavailable(database_url: str) -> None:
    closed = make_url(database_url).set(port=free_port()).render_as_string(False)
    async with Database(url=closed, connect_timeout=1) as database:

        async def connect() -> None:
            async with database.transaction() as session:
                await session.execute(text("SELECT 1"))

        with pytest.raises(DatabaseUnavailableError) as caught:
            await connect()
    assert caught.value.cause is UnavailableCause.UNREACHABLE
    assert database.classify(caught.value) is ErrorKind.UNAVAILABLE


@pytest.mark.backends(*SERVERS)
async def test_a_connection_killed_by_the_server_is_unavailable(database: Database) -> None:
    backend = database.backend.name

    async def killed_mid_transaction() -> None:
        async with database.transaction() as session:
            session_id = (await session.execute(text(SESSION_ID_SQL[backend]))).scalar_one()
            async with database.engine.connect() as admin:
                await admin.execute(text(KILL_SQL[backend].format(int(session_id))))
            await asyncio.sleep(0.2)  # the server closes the session
            await session.execute(text("SELECT 1"))

    with pytest.raises(DBAPIError) as caught:
        await killed_mid_transaction()
    assert database.classify(caught.value) is ErrorKind.UNAVAILABLE
    # The driver's error alone, as a handle_error listener sees it, says the same.
    assert caught.value.orig is not None
    assert database.classify(caught.value.orig) is ErrorKind.UNAVAILABLE


@pytest.mark.backends(*SERVERS)
async def test_a_connection_killed_during_a_statement_is_unavailable(database: Database) -> None:
    backend = database.backend.name
    session_ids: asyncio.Queue[int] = asyncio.Queue()

    async def sleeper() -> None:
        async with database.transaction() as session:
            session_id = (await session.execute(text(SESSION_ID_SQL[backend]))).scalar_one()
            session_ids.put_nowait(int(session_id))
            await session.execute(text(SLEEP_SQL[backend]))

    async with asyncio.timeout(WAIT):
        sleeping = asyncio.create_task(sleeper())
        session_id = await session_ids.get()
        await asyncio.sleep(0.2)  # into the sleep
        async with database.engine.connect() as admin:
            await admin.execute(text(KILL_SQL[backend].format(session_id)))
        assert await classify_failure(database, lambda: sleeping) is ErrorKind.UNAVAILABLE


@pytest.mark.backends(*SERVERS)
async def test_a_command_past_the_command_timeout_is_unavailable(database_url: str) -> None:
    # DB_COMMAND_TIMEOUT is the client's limit: no answer in time reads as a lost
    # server (docs/errors.md), unlike the server's own statement timeout.
    async with Database(
        url=database_url, command_timeout=LIMIT, statement_timeout=None
    ) as database:
        assert await classify_failure(database, sleep_in_a_unit(database)) is ErrorKind.UNAVAILABLE


# -- busy: SQLite's one write lock, held by another process ---------------------------


@pytest.mark.backends("sqlite")
async def test_the_write_lock_held_elsewhere_past_the_busy_timeout_is_busy(
    database_url: str, database: Database, schema: Schema
) -> None:
    # A second Database on the same file stands for another worker process: the gate
    # queues this process's writers, not the other's. Its busy timeout is pool_timeout.
    async with (
        Database(url=database_url, pool_timeout=LIMIT) as other,
        database.transaction() as session,
    ):
        await set_value(session, schema.parents, 1)  # BEGIN IMMEDIATE: the lock is held

        async def write() -> None:
            async with other.transaction() as other_session:
                await set_value(other_session, schema.parents, 2)

        assert await classify_failure(other, write) is ErrorKind.BUSY


# -- other: the app's own mistakes ----------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("SELEC 1", id="syntax-error"),
        pytest.param("SELECT no_such_column FROM {parents}", id="unknown-column"),
        pytest.param("SELECT 1 FROM no_such_table", id="unknown-table"),
    ],
)
async def test_a_mistake_in_the_statement_is_other(
    database: Database, schema: Schema, sql: str
) -> None:
    async def run() -> None:
        async with database.transaction() as session:
            await session.execute(text(sql.format(parents=schema.parents.name)))

    assert await classify_failure(database, run) is ErrorKind.OTHER
