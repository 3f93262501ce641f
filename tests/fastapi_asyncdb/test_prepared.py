"""Prepared and run_statement: SQLAlchemy's results and errors, at the driver's speed
only where that is exact."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Enum,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    TypeDecorator,
    bindparam,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    MultipleResultsFound,
    NoResultFound,
    StatementError,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from fastapi_asyncdb import Database, DatabaseUnavailableError, Prepared
from fastapi_asyncdb.prepared import run_statement

from .prepared_runs import sqlalchemy_runs

pytestmark = pytest.mark.usefixtures("clean_environment")


class Kind(enum.Enum):
    small = "small"
    large = "large"


class Shouting(TypeDecorator[str]):
    """Converts on the way out, as user types do: only SQLAlchemy knows to apply it."""

    impl = String(50)
    cache_ok = True

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else value.upper()


metadata = MetaData()
item = Table(
    "prepared_item",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
    Column("owner_id", Integer, nullable=False),
)
owner = Table(
    "prepared_owner",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
    Column("kind", Enum(Kind), nullable=False),
    Column("weight", Numeric(10, 2, asdecimal=False), nullable=False),
    Column("motto", Shouting, nullable=False),
)

ITEM_BY_ID = select(item.c.id, item.c.name).where(item.c.id == bindparam("id"))
ITEMS_OF_OWNER = (
    select(item.c.id, item.c.name, owner.c.id, owner.c.name)
    .join_from(item, owner, item.c.owner_id == owner.c.id)
    .where(owner.c.id == bindparam("owner"))
    .order_by(item.c.id)
)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url) as database:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)
            await connection.run_sync(metadata.create_all)
            await connection.execute(
                insert(owner),
                [
                    {"id": 1, "name": "ann", "kind": Kind.small, "weight": 1.5, "motto": "go"},
                    {"id": 2, "name": "bob", "kind": Kind.large, "weight": 2.25, "motto": "no"},
                ],
            )
            await connection.execute(
                insert(item),
                [{"id": n, "name": f"item {n}", "owner_id": 1 + n % 2} for n in range(1, 7)],
            )
        yield database


def logged_queries(connection: AsyncConnection) -> list[str]:
    """The first word of each query asyncpg logs on this connection: its simple query
    path and executemany, as used for BEGIN, COMMIT and executemany; prepared
    statements, by which both SQLAlchemy's adapter and the fast path run one statement,
    are not logged. asyncpg calls its query loggers soon after each query, not during
    it: read the list after ``logged()``."""
    sent: list[str] = []
    sync = connection.sync_connection
    assert sync is not None
    driver: Any = sync.connection.driver_connection
    driver.add_query_logger(lambda query: sent.append(query.query.split()[0].rstrip(";").upper()))
    return sent


async def logged() -> None:
    await asyncio.sleep(0.01)


async def test_prepared_gives_the_rows_connection_execute_gives(database: Database) -> None:
    by_id, of_owner = Prepared(ITEM_BY_ID), Prepared(ITEMS_OF_OWNER)
    literal = Prepared(select(item.c.name).where(item.c.id == 3))
    async with database.read_connection() as connection:

        async def expected(statement: Any, parameters: dict[str, Any] | None = None) -> list[Any]:
            return list((await connection.execute(statement, parameters)).all())

        for _ in range(3):  # the first run learns through SQLAlchemy; the others may not
            row = await by_id.one(connection, {"id": 2})
            assert row == (2, "item 2")
            assert (row.id, row.name, row._mapping["name"]) == (2, "item 2", "item 2")
            rows = await of_owner.all(connection, {"owner": 2})
            assert rows == await expected(ITEMS_OF_OWNER, {"owner": 2})
            assert (
                rows[0]._fields == (await connection.execute(ITEMS_OF_OWNER, {"owner": 2})).keys()
            )
            assert await of_owner.all(connection, {"owner": 9}) == []
            assert await by_id.one_or_none(connection, {"id": 99}) is None
            assert await by_id.scalar(connection, {"id": 4}) == 4
            assert await by_id.scalar(connection, {"id": 99}) is None
            assert await literal.scalar(connection) == "item 3"


async def test_prepared_raises_what_result_one_raises(database: Database) -> None:
    of_owner = Prepared(ITEMS_OF_OWNER)
    async with database.read_connection() as connection:
        for _ in range(2):
            with pytest.raises(NoResultFound, match="No row was found when one was required"):
                await of_owner.one(connection, {"owner": 9})
            with pytest.raises(MultipleResultsFound, match="exactly one"):
                await of_owner.one(connection, {"owner": 1})
            with pytest.raises(MultipleResultsFound, match="one or none"):
                await of_owner.one_or_none(connection, {"owner": 1})
            with pytest.raises(StatementError, match="A value is required for bind parameter"):
                await of_owner.all(connection)


async def test_a_prepared_statement_keeps_its_own_literal_values(database: Database) -> None:
    # Equal statements share SQLAlchemy's compiled cache; their values must not.
    third, fifth = (Prepared(select(item.c.name).where(item.c.id == n)) for n in (3, 5))
    async with database.read_connection() as connection:
        for _ in range(2):
            assert await third.scalar(connection) == "item 3"
            assert await fifth.scalar(connection) == "item 5"


@pytest.mark.backends("postgresql")
async def test_on_a_postgresql_read_connection_only_the_first_run_goes_through_sqlalchemy(
    database: Database,
) -> None:
    by_id = Prepared(ITEM_BY_ID)
    with sqlalchemy_runs() as runs:
        async with database.read_connection() as connection:
            for n in range(1, 5):
                assert await by_id.scalar(connection, {"id": n}) == n
        async with database.read_connection() as connection:
            assert await by_id.scalar(connection, {"id": 5}) == 5
    assert runs.of(ITEM_BY_ID) == 1


@pytest.mark.backends("postgresql")
async def test_prepared_leaves_a_transaction_to_sqlalchemy(database: Database) -> None:
    by_id = Prepared(ITEM_BY_ID)
    async with database.read_connection() as connection:
        await by_id.scalar(connection, {"id": 1})  # learnt: later runs may be the driver's
    with sqlalchemy_runs() as runs:
        async with database.transaction() as session:
            connection = await session.connection()
            await connection.execute(insert(item).values(id=50, name="new", owner_id=1))
            for _ in range(3):
                # Sees the transaction's own uncommitted row: it ran inside the transaction.
                assert await by_id.scalar(connection, {"id": 50}) == 50
            await session.rollback()
    assert runs.of(ITEM_BY_ID) == 3


@pytest.mark.backends("postgresql")
async def test_types_that_convert_values_are_left_to_sqlalchemy(database: Database) -> None:
    converting_statement = select(owner.c.kind, owner.c.weight, owner.c.motto).order_by(owner.c.id)
    plain_statement = select(owner.c.name).order_by(owner.c.id)
    converting, plain = Prepared(converting_statement), Prepared(plain_statement)
    with sqlalchemy_runs() as runs:
        async with database.read_connection() as connection:
            for _ in range(3):
                assert await converting.all(connection) == [
                    (Kind.small, 1.5, "GO"),
                    (Kind.large, 2.25, "NO"),
                ]
                assert await plain.all(connection) == [("ann",), ("bob",)]
    assert (runs.of(converting_statement), runs.of(plain_statement)) == (3, 1)


@pytest.mark.backends("postgresql")
async def test_expanding_parameters_are_left_to_sqlalchemy(database: Database) -> None:
    statement = select(item.c.id).where(item.c.id.in_(bindparam("ids", expanding=True)))
    in_list = Prepared(statement)
    with sqlalchemy_runs() as runs:
        async with database.read_connection() as connection:
            for ids in ([1, 2], [3], [4, 5, 6]):
                assert [row.id for row in await in_list.all(connection, {"ids": ids})] == ids
    assert runs.of(statement) == 3


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("event_name", ["before_cursor_execute", "before_execute"])
async def test_execution_event_listeners_see_every_statement(
    database: Database, event_name: str
) -> None:
    by_id = Prepared(ITEM_BY_ID)
    seen: list[object] = []

    def listener(*args: Any) -> None:
        seen.append(args)

    engine = database.read_engine.sync_engine
    event.listen(engine, event_name, listener)
    try:
        async with database.read_connection() as connection:
            for n in (1, 2, 3):
                assert await by_id.scalar(connection, {"id": n}) == n
    finally:
        event.remove(engine, event_name, listener)
    assert len(seen) == 3


@pytest.mark.backends("postgresql")
async def test_driver_errors_become_the_errors_sqlalchemy_raises(database: Database) -> None:
    by_id = Prepared(ITEM_BY_ID)
    secret = "hunter2-not-an-integer"
    async with database.read_connection() as connection:
        await by_id.scalar(connection, {"id": 1})  # learn: later runs are the driver's
        with pytest.raises(DBAPIError) as from_sqlalchemy:
            await connection.execute(ITEM_BY_ID, {"id": secret})
        with sqlalchemy_runs() as runs, pytest.raises(DBAPIError) as from_driver:
            await by_id.scalar(connection, {"id": secret})
        assert runs.of(ITEM_BY_ID) == 0
        assert str(from_driver.value) == str(from_sqlalchemy.value)
        assert type(from_driver.value) is type(from_sqlalchemy.value)
        assert type(from_driver.value.orig) is type(from_sqlalchemy.value.orig)
        assert not from_driver.value.connection_invalidated
        # The engine's redaction hook ran: the bound value is nowhere in the error chain.
        error: BaseException | None = from_driver.value
        while error is not None:
            assert secret not in str(error)
            error = error.__cause__ or error.__context__
        assert await by_id.scalar(connection, {"id": 2}) == 2  # the connection is fine


@pytest.mark.backends("postgresql")
async def test_the_command_timeout_is_the_503_error_as_through_sqlalchemy(
    database_url: str,
) -> None:
    statement = select(func.pg_sleep(bindparam("seconds", type_=Numeric)))
    sleep = Prepared(statement)
    async with Database(url=database_url, command_timeout=0.3) as database:
        async with database.read_connection() as connection:
            await sleep.scalar(connection, {"seconds": Decimal(0)})
            with (
                sqlalchemy_runs() as runs,
                pytest.raises(DatabaseUnavailableError, match=r"did not answer within 0\.3 s"),
            ):
                await sleep.scalar(connection, {"seconds": Decimal(2)})
            assert runs.of(statement) == 0
        async with database.read_connection() as connection:
            assert await sleep.scalar(connection, {"seconds": Decimal(0)}) is None


async def _backend_pid(connection: AsyncConnection) -> int:
    return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


@pytest.mark.backends("postgresql")
async def test_a_connection_lost_under_the_driver_is_invalidated_and_replaced(
    database: Database,
) -> None:
    by_id = Prepared(ITEM_BY_ID)
    async with database.read_connection() as connection:
        await by_id.scalar(connection, {"id": 1})  # learnt: the next run is the driver's
        lost = await _backend_pid(connection)
    async with database.engine.connect() as admin:
        await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": lost})
    with sqlalchemy_runs() as runs, pytest.raises(DBAPIError) as failure:
        async with database.read_connection() as connection:
            await by_id.scalar(connection, {"id": 1})
    assert runs.of(ITEM_BY_ID) == 0
    assert failure.value.connection_invalidated
    async with database.read_connection() as connection:
        assert await by_id.scalar(connection, {"id": 2}) == 2
        assert await _backend_pid(connection) != lost
    assert database.pool_status()["read"]["checked_out"] == 0


@pytest.mark.backends("postgresql")
async def test_a_statement_cancelled_on_the_driver_does_not_hand_its_connection_on(
    database: Database,
) -> None:
    sleep = Prepared(select(func.pg_sleep(bindparam("seconds", type_=Numeric))))
    started = asyncio.Event()
    pids: list[int] = []

    async def sleep_long() -> None:
        async with database.read_connection() as connection:
            await sleep.scalar(connection, {"seconds": Decimal(0)})
            pids.append(await _backend_pid(connection))
            started.set()
            await sleep.scalar(connection, {"seconds": Decimal(5)})

    task = asyncio.create_task(sleep_long())
    await started.wait()
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with database.read_connection() as connection:
        assert await _backend_pid(connection) != pids[0]
    status = database.pool_status()["read"]
    assert (status["in_use"], status["checked_out"]) == (0, 0)


def test_prepared_is_built_at_import_without_a_database() -> None:
    prepared: Prepared[int, str] = Prepared(ITEM_BY_ID)
    assert prepared.statement is ITEM_BY_ID
    assert "FROM prepared_item" in repr(prepared)


counter = Table(
    "prepared_counter",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", Integer, nullable=False),
    Column("label", String(20), nullable=False, default=lambda: "computed in Python"),
)
SET_VALUE = counter.update().where(counter.c.id == bindparam("row")).values(value=bindparam("to"))
COUNTER_VALUES = select(counter.c.id, counter.c.value).order_by(counter.c.id)


async def counter_values(database: Database) -> list[tuple[int, int]]:
    async with database.read_connection() as connection:
        return [(row.id, row.value) for row in await connection.execute(COUNTER_VALUES)]


async def test_run_statement_commits_every_row_before_it_returns(database: Database) -> None:
    await database.run_statement(
        insert(counter), [{"id": n, "value": 0, "label": "given"} for n in (1, 2, 3)]
    )
    await database.run_statement(SET_VALUE, [{"row": 1, "to": 10}, {"row": 3, "to": 30}])
    await database.run_statement(SET_VALUE, {"row": 2, "to": 20})
    # Read on another connection: committed, not merely sent.
    assert await counter_values(database) == [(1, 10), (2, 20), (3, 30)]
    assert database.pool_status()["primary"]["checked_out"] == 0


async def test_run_statement_writes_every_row_or_none(database: Database) -> None:
    await database.run_statement(insert(counter), {"id": 1, "value": 0, "label": "given"})
    rows = [{"id": n, "value": n, "label": "given"} for n in (2, 3, 1, 4)]  # 1 exists already
    with pytest.raises(IntegrityError):
        await database.run_statement(insert(counter), rows)
    assert await counter_values(database) == [(1, 0)]


async def test_run_statement_fills_python_side_defaults(database: Database) -> None:
    await database.run_statement(insert(counter), [{"id": 1, "value": 1}, {"id": 2, "value": 2}])
    async with database.read_connection() as connection:
        labels = (await connection.execute(select(counter.c.label))).scalars().all()
    assert labels == ["computed in Python"] * 2


@pytest.mark.backends("postgresql")
async def test_on_postgresql_a_statement_is_its_own_transaction_without_begin_or_commit(
    database: Database,
) -> None:
    await database.run_statement(insert(counter), [{"id": n, "value": 0} for n in (1, 2)])
    async with database.engine.connect() as connection:
        sent = logged_queries(connection)
        # The first run of each statement and parameter shape is SQLAlchemy's.
        await run_statement(connection, SET_VALUE, [{"row": 1, "to": 3}, {"row": 2, "to": 4}])
        await logged()
        assert sent == ["BEGIN", "UPDATE", "COMMIT"]
        sent.clear()
        await run_statement(connection, SET_VALUE, [{"row": 1, "to": 5}, {"row": 2, "to": 6}])
        await logged()
        assert sent == ["UPDATE"]
        # A statement that needs SQLAlchemy at run time gets its BEGIN and COMMIT each time.
        for n in (3, 4):
            sent.clear()
            await run_statement(connection, insert(counter), {"id": n, "value": 7})
            await logged()
            assert sent == ["BEGIN", "COMMIT"]  # the INSERT itself is a prepared statement
    assert await counter_values(database) == [(1, 5), (2, 6), (3, 7), (4, 7)]


@pytest.mark.backends("postgresql")
async def test_a_write_cancelled_on_the_driver_does_not_hand_its_connection_on(
    database: Database,
) -> None:
    await database.run_statement(insert(counter), {"id": 1, "value": 0})
    await database.run_statement(SET_VALUE, {"row": 1, "to": 0})  # learnt: the driver's next
    async with database.engine.connect() as holder:
        await holder.execute(SET_VALUE, {"row": 1, "to": 99})  # holds the row's lock
        blocked = asyncio.create_task(database.run_statement(SET_VALUE, {"row": 1, "to": 1}))
        await asyncio.sleep(0.3)
        task_was_blocked = not blocked.done()
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        await holder.rollback()
    assert task_was_blocked
    status = database.pool_status()["primary"]
    assert (status["in_use"], status["checked_out"]) == (0, 0)
    await database.run_statement(SET_VALUE, {"row": 1, "to": 2})
    assert await counter_values(database) == [(1, 2)]


async def test_run_statement_refuses_a_connection_already_in_a_transaction(
    database: Database,
) -> None:
    async with database.engine.connect() as connection:
        await connection.begin()
        with pytest.raises(RuntimeError, match="no transaction begun"):
            await run_statement(connection, SET_VALUE, {"row": 1, "to": 1})
