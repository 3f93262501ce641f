"""The fast path against ``execute`` in the connection's harder states: concurrent
calls on one connection, a closed or invalidated connection, a call cancelled while
it runs, a prepared statement made stale by a schema change."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from fastapi_asyncdb import Database, Prepared
from fastapi_asyncdb.prepared import run_statement

from .differential import DIFFERENTIAL, Tally, assert_same, describe_error, observe
from .prepared_runs import execute_uncounted, sqlalchemy_runs

pytestmark = pytest.mark.usefixtures("clean_environment")

metadata = MetaData()
entry = Table(
    "state_entry",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(10), nullable=False),
)
BY_ID = select(entry.c.id, entry.c.name).where(entry.c.id == bindparam("id"))
UP_TO = select(entry.c.id, entry.c.name).where(entry.c.id <= bindparam("id")).order_by(entry.c.id)
RENAME = entry.update().where(entry.c.id == bindparam("key")).values(name=bindparam("new"))
SLEEP = select(func.pg_sleep(bindparam("seconds", type_=Numeric)))


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with Database(url=database_url) as database:
        await fill(database)
        yield database


async def fill(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.run_sync(metadata.create_all)
        await connection.execute(insert(entry), [{"id": n, "name": f"e{n}"} for n in range(1, 5)])


# ---------------------------------------------------------------------------------
# Concurrent calls on one connection


@dataclass
class Interleaving:
    statement: Any
    method: str
    calls: list[tuple[str, dict[str, Any]]]  # ("prepared" | "execute", parameters)

    def __repr__(self) -> str:
        return f"Interleaving({self.method}, {str(self.statement)!r}, calls {self.calls})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # how Hypothesis shows a failing case


@st.composite
def interleavings(draw: st.DrawFn) -> Interleaving:
    parameters = st.fixed_dictionaries({"id": st.one_of(st.integers(0, 5), st.just("x"))})
    return Interleaving(
        statement=draw(st.sampled_from([BY_ID, UP_TO])),
        method=draw(st.sampled_from(["all", "one", "one_or_none", "scalar"])),
        calls=draw(
            st.lists(
                st.tuples(st.sampled_from(["prepared", "prepared", "execute"]), parameters),
                min_size=2,
                max_size=6,
            )
        ),
    )


async def compare_concurrent(database: Database, case: Interleaving, tally: Tally) -> None:
    prepared: Prepared[Any] = Prepared(case.statement)
    keys = [*case.statement.selected_columns, *entry.columns, "id", "name"]

    async def through_execute(parameters: dict[str, Any]) -> Any:
        return getattr(
            await execute_uncounted(connection, case.statement, parameters), case.method
        )()

    def call(kind: str, parameters: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            if kind == "execute":
                return await through_execute(parameters)
            return await getattr(prepared, case.method)(connection, parameters)

        return run

    async def described(run: Callable[[], Awaitable[Any]]) -> Any:
        return await observe(run, keys)

    tally.examples += 1
    async with database.read_connection() as connection:
        one_at_a_time = [await described(call("execute", p)) for _, p in case.calls]
        # The first round learns (through SQLAlchemy); the second may be the driver's.
        for _ in range(2):
            with sqlalchemy_runs() as runs:
                together = await asyncio.gather(
                    *(call(kind, parameters)() for kind, parameters in case.calls),
                    return_exceptions=True,
                )
            # Described one at a time: warnings are caught process-wide, not per task.
            assert_same([await described(replay(outcome)) for outcome in together], one_at_a_time)
            tally.calls += sum(kind == "prepared" for kind, _ in case.calls)
            tally.through_sqlalchemy += runs.of(case.statement)


def replay(outcome: Any) -> Callable[[], Awaitable[Any]]:
    async def again() -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return again


def test_concurrent_calls_on_one_connection_take_turns_as_execute_does(
    database_url: str, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = Tally()
    with asyncio.Runner() as runner:
        database = Database(url=database_url)
        runner.run(database.start())
        try:
            runner.run(fill(database))

            @settings(DIFFERENTIAL, max_examples=40 if backend == "postgresql" else 15)
            @given(case=interleavings())
            def check(case: Interleaving) -> None:
                runner.run(compare_concurrent(database, case, tally))

            check()
        finally:
            runner.run(database.stop())
    with capsys.disabled():
        print(f"\n[{backend}] concurrent calls vs execute one at a time: {tally}")
    assert tally.examples >= 15
    assert (tally.fast > 0) is (backend == "postgresql")


async def test_concurrent_run_statements_on_one_connection_as_through_sqlalchemy(
    database: Database,
) -> None:
    async def round_of_writes(first_name: str) -> list[Any]:
        async with database.engine.connect() as connection:
            outcomes = await asyncio.gather(
                *(
                    run_statement(connection, RENAME, {"key": n, "new": f"{first_name}{n}"})
                    for n in (1, 2, 3)
                ),
                return_exceptions=True,
            )
        names = await read_names(database)
        return [describe_error(o) if isinstance(o, BaseException) else o for o in outcomes] + [
            names
        ]

    # One after the other: the first round is SQLAlchemy's, the second the driver's.
    first, second = await round_of_writes("a"), await round_of_writes("b")
    assert first[:3] == second[:3]
    assert first[0] is None
    if database.backend.name == "postgresql":
        # The others found the first one's transaction begun: asyncpg's BEGIN waits for
        # a statement. (The SQLite engine's BEGIN IMMEDIATE is a round trip, during
        # which the next run_statement begins too, and fails in SQLite's own way.)
        assert [outcome[1] for outcome in first[1:3]] == [RuntimeError, RuntimeError]
    assert first[3] == ["a1", "e2", "e3", "e4"]
    assert second[3] == ["b1", "e2", "e3", "e4"]


async def read_names(database: Database) -> list[str]:
    async with database.read_connection() as connection:
        return list((await connection.execute(select(entry.c.name).order_by(entry.c.id))).scalars())


# ---------------------------------------------------------------------------------
# Closed, invalidated


async def learnt(database: Database, prepared: Prepared[Any]) -> None:
    async with database.read_connection() as connection:
        await prepared.one(connection, {"id": 1})


@pytest.mark.parametrize("state", ["closed", "invalidated"])
async def test_a_closed_or_invalidated_connection_fails_as_through_execute(
    database: Database, state: str
) -> None:
    prepared = Prepared(BY_ID)
    await learnt(database, prepared)

    async def outcome(run: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
        async with database.read_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            if state == "closed":
                await connection.close()
            else:
                await connection.invalidate()
            return await observe(lambda: run(connection), [])

    expected = await outcome(lambda c: execute_uncounted(c, BY_ID, {"id": 1}))
    assert expected[0][0] == "error"
    assert await outcome(lambda c: prepared.one(c, {"id": 1})) == expected


# ---------------------------------------------------------------------------------
# Cancelled, stale


@pytest.mark.backends("postgresql")
async def test_a_call_cancelled_while_it_runs_invalidates_as_through_execute(
    database: Database,
) -> None:
    prepared = Prepared(SLEEP)
    await learnt_sleep(database, prepared)

    async def after_cancel(run: Callable[[AsyncConnection], Coroutine[Any, Any, Any]]) -> Any:
        async with database.read_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            task = asyncio.create_task(run(connection))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return connection.invalidated, connection.in_transaction()

    expected = await after_cancel(lambda c: execute_uncounted(c, SLEEP, {"seconds": Decimal(5)}))
    with sqlalchemy_runs() as runs:
        observed = await after_cancel(lambda c: prepared.scalar(c, {"seconds": Decimal(5)}))
    assert runs.of(SLEEP) == 0  # the cancelled call was the driver's
    assert observed == expected
    assert expected[0] is True
    status = database.pool_status()["read"]
    assert (status["in_use"], status["checked_out"]) == (0, 0)


async def learnt_sleep(database: Database, prepared: Prepared[Any]) -> None:
    async with database.read_connection() as connection:
        await prepared.scalar(connection, {"seconds": Decimal(0)})


@pytest.mark.backends("postgresql")
async def test_a_statement_made_stale_by_a_schema_change_fails_and_recovers_as_execute(
    database_url: str,
) -> None:
    async def scenario(prepared_read: bool) -> list[Any]:
        async with Database(url=database_url) as database:
            await fill(database)
            prepared = Prepared(BY_ID)

            async def read(connection: AsyncConnection) -> Any:
                if prepared_read:
                    return await prepared.one(connection, {"id": 2})
                return (await execute_uncounted(connection, BY_ID, {"id": 2})).one()

            outcomes = []
            async with database.read_engine.connect() as connection:
                for _ in range(2):
                    outcomes.append(await observe(lambda: read(connection), []))
                async with database.engine.begin() as admin:  # the result type changes
                    await admin.execute(text("ALTER TABLE state_entry ALTER name TYPE varchar(20)"))
                for _ in range(2):  # fails once, as asyncpg's cached statement is stale
                    outcomes.append(await observe(lambda: read(connection), []))
            return outcomes

    expected = await scenario(prepared_read=False)
    assert expected[2][0][0] == "error"
    assert expected[3] == expected[0]
    assert await scenario(prepared_read=True) == expected


# ---------------------------------------------------------------------------------
# Lifetime


async def test_plans_do_not_keep_a_disposed_engine_alive(
    database: Database, database_url: str
) -> None:
    prepared = Prepared(BY_ID)  # as at module level: it outlives every engine
    dialect = await learn_and_dispose(database_url, prepared)
    gc.collect()
    assert dialect() is None


async def learn_and_dispose(database_url: str, prepared: Prepared[Any]) -> weakref.ref[Any]:
    """Learn a read and a write on an engine of its own, dispose of it: a weak
    reference to its dialect."""
    engine = create_async_engine(database_url)
    try:
        for n in (1, 2):
            async with engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await prepared.one(connection, {"id": n})
            async with engine.connect() as connection:
                await run_statement(connection, RENAME, {"key": n, "new": "x"})
        return weakref.ref(engine.sync_engine.dialect)
    finally:
        await engine.dispose()
