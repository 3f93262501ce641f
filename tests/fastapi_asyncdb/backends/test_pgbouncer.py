"""The library through a real PgBouncer (``DB_PGBOUNCER``), in transaction and session mode.

In transaction mode PgBouncer's pool is smaller than the library's, so units of work
share server connections, and consecutive transactions of one client meet different
ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from fastapi_asyncdb import Database
from fastapi_asyncdb.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    ErrorKind,
    ReadOnlySessionError,
)
from fastapi_asyncdb.pooler_check import pooler_as_finding
from fastapi_asyncdb.prepared import Prepared
from fastapi_asyncdb.retry import Retry
from tests.fastapi_asyncdb.prepared_runs import sqlalchemy_runs
from tests.servers.pgbouncer import PgBouncer

pytestmark = [pytest.mark.usefixtures("clean_environment")]

StartPgBouncer = Callable[..., PgBouncer]
MODES = ["transaction", "session"]
LIMIT = 0.5
SLEEP = 5
LOADED = 15.0  # limits for tests about something else: above any stall of a busy machine


def _table() -> Table:
    return Table(
        f"pgb_items_{uuid.uuid4().hex[:8]}",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("value", Integer, nullable=False),
    )


def _database(bouncer: PgBouncer, name: str, mode: str, **settings: Any) -> Database:
    options: dict[str, Any] = {
        "url": bouncer.url(name),
        "pgbouncer": mode,
        "pool_size": 4,
        "max_overflow": 0,
        "statement_timeout": LIMIT,
        "idle_in_transaction_timeout": LIMIT * 2,
        "pool_timeout": 5,
    }
    return Database(**{**options, **settings})


@pytest.fixture(params=MODES)
async def through(
    request: pytest.FixtureRequest, start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> AsyncIterator[tuple[Database, Table, PgBouncer]]:
    # Transaction mode: fewer server connections than the library's pool.
    # In session mode each client connection holds a server connection: room for all.
    size = 2 if request.param == "transaction" else 20
    bouncer = start_pgbouncer(pool_mode=request.param, default_pool_size=size)
    database = _database(bouncer, pgbouncer_database, request.param)
    table = _table()
    # The schema is made and dropped without the tests' short statement limit: DDL on a
    # busy machine may take longer than the limit the tests are about.
    schema = _database(bouncer, pgbouncer_database, request.param, statement_timeout=None)
    async with schema:
        await schema.create_all(table.metadata)
    try:
        async with database:
            yield database, table, bouncer
    finally:
        async with schema, schema.engine.begin() as connection:
            await connection.run_sync(table.metadata.drop_all)


async def test_reads_writes_prepared_and_run_statement_stay_correct_under_concurrency(
    through: tuple[Database, Table, PgBouncer], pgbouncer_database: str
) -> None:
    limited, table, bouncer = through
    # Limits no stall of a loaded machine reaches: with the fixture's, a loop blocked
    # for LIMIT * 2 after a BEGIN has the server end that transaction (see the stall
    # test below), and this test is about concurrency, not limits.
    database = _database(
        bouncer,
        pgbouncer_database,
        limited.settings.pgbouncer,
        statement_timeout=LOADED,
        idle_in_transaction_timeout=LOADED * 2,
    )
    async with database:
        await _run_concurrent_clients(database, table)


async def _run_concurrent_clients(database: Database, table: Table) -> None:
    await database.run_statement(insert(table), [{"id": number, "value": 0} for number in range(8)])
    by_id = Prepared(select(table.c.value).where(table.c.id == bindparam("id")))
    bump = update(table).where(table.c.id == bindparam("key")).values(value=table.c.value + 1)

    async def client(number: int) -> None:
        for step in range(15):
            if step % 3 == 0:
                await database.run_statement(bump, {"key": number})
            elif step % 3 == 1:
                async with database.transaction() as session:
                    await session.execute(bump, {"key": number})
            else:
                async with database.read_connection() as connection:
                    assert await by_id.scalar(connection, {"id": number}) == (step // 3 + 1) * 2
                async with database.read_session() as session:
                    value = (await session.execute(select(table.c.value))).scalars().all()
                    assert len(value) == 8

    await asyncio.gather(*(client(number) for number in range(8)))
    async with database.read_connection() as connection:
        values = (await connection.execute(select(table.c.value))).scalars().all()
    assert values == [10] * 8


async def test_transactions_with_retries_run_through_the_pooler(
    through: tuple[Database, Table, PgBouncer],
) -> None:
    database, table, _ = through
    await database.run_statement(insert(table), {"id": 1, "value": 0})
    attempts = 0

    async def work(session: Any) -> int:
        nonlocal attempts
        attempts += 1
        await session.execute(update(table).values(value=table.c.value + 1))
        if attempts == 1:
            # As the server reports a lost race: the unit is rolled back and run again.
            await session.execute(
                text("DO $$ BEGIN RAISE EXCEPTION 'lost' USING ERRCODE = '40001'; END $$")
            )
        return int((await session.execute(select(table.c.value))).scalar_one())

    assert await database.run_transaction(work, retry=Retry(attempts=3)) == 1
    assert attempts == 2


async def test_statement_timeout_ends_a_slow_statement_in_writes_and_reads(
    through: tuple[Database, Table, PgBouncer],
) -> None:
    database, _, _ = through
    started = time.monotonic()
    with pytest.raises(DBAPIError) as in_transaction:
        async with database.transaction() as session:
            await session.execute(text(f"SELECT pg_sleep({SLEEP})"))
    with pytest.raises(DBAPIError) as in_read:
        async with database.read_session() as session:
            await session.execute(text(f"SELECT pg_sleep({SLEEP})"))
    assert database.classify(in_transaction.value) is ErrorKind.TIMEOUT
    assert database.classify(in_read.value) is ErrorKind.TIMEOUT
    assert time.monotonic() - started < SLEEP


async def test_reads_stay_read_only_through_the_pooler(
    through: tuple[Database, Table, PgBouncer],
) -> None:
    database, table, _ = through
    with pytest.raises(ReadOnlySessionError):
        async with database.read_session() as session:
            await session.execute(insert(table).values(id=99, value=1))


async def test_a_session_idle_in_transaction_is_ended_by_the_server(
    through: tuple[Database, Table, PgBouncer],
) -> None:
    database, _, _ = through
    with pytest.raises(DBAPIError) as ended:
        async with database.transaction() as session:
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(LIMIT * 4)
            await session.execute(text("SELECT 1"))
    assert database.classify(ended.value) is ErrorKind.UNAVAILABLE


async def test_limits_are_those_of_the_settings_inside_each_transaction(
    through: tuple[Database, Table, PgBouncer],
) -> None:
    database, _, _ = through
    names = "current_setting('statement_timeout'), current_setting('transaction_read_only')"
    async with database.transaction() as session:
        written = (await session.execute(text(f"SELECT {names}"))).one()
    async with database.read_session() as session:
        read = (await session.execute(text(f"SELECT {names}"))).one()
    assert tuple(written) == (f"{int(LIMIT * 1000)}ms", "off")
    assert tuple(read) == (f"{int(LIMIT * 1000)}ms", "on")


@pytest.mark.parametrize("mode", MODES)
async def test_a_transaction_the_server_ends_while_the_loop_stalls_is_an_unavailable_database(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str, mode: str
) -> None:
    """The event loop blocked (a busy machine, a CPU-bound callback) right after a BEGIN
    for longer than idle_in_transaction_timeout: the server ends the session, and its
    FATAL arrives in the same read as BEGIN's ReadyForQuery. asyncpg, idle, cannot read
    it; it refuses the next statement in its own words ("cannot switch to state 12;
    another operation (2) is in progress") and drops the connection. Still the
    unavailable database it is, and the connection is not handed out again."""
    bouncer = start_pgbouncer(pool_mode=mode, default_pool_size=2)
    idle_limit = 0.05
    database = _database(bouncer, pgbouncer_database, mode, idle_in_transaction_timeout=idle_limit)
    async with database:
        for _ in range(2):  # the adapter's statement cache: the next run is a bind alone
            async with database.transaction() as session:
                await session.execute(text("SELECT 1"))
        stalling = True

        async def stall() -> None:
            while stalling:
                time.sleep(idle_limit * 6)  # noqa: ASYNC251 - the stall: the loop reads nothing
                await asyncio.sleep(0)

        staller = asyncio.ensure_future(stall())
        try:
            with pytest.raises(DBAPIError) as ended:
                async with database.transaction() as session:
                    await session.execute(text("SELECT 1"))
        finally:
            stalling = False
            await staller
        async with database.transaction() as session:
            assert (await session.execute(text("SELECT 2"))).scalar() == 2
    assert database.classify(ended.value) is ErrorKind.UNAVAILABLE


@pytest.mark.parametrize("reset", ["RESET ALL", "DISCARD ALL", "SET statement_timeout = 0"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_unit_of_work_that_resets_its_session_leaves_later_transactions_bounded(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str, mode: str, reset: str
) -> None:
    bouncer = start_pgbouncer(pool_mode=mode, default_pool_size=2)
    # One pooled connection: the next unit of work meets the session this one reset.
    database = _database(bouncer, pgbouncer_database, mode, pool_size=1)
    async with database:
        async with database.engine.connect() as connection:
            # Outside a transaction (DISCARD ALL cannot run inside one).
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text(reset))
        async with database.transaction() as session:
            in_force = await session.scalar(text("SELECT current_setting('statement_timeout')"))
            with pytest.raises(DBAPIError) as ended:
                await session.execute(text(f"SELECT pg_sleep({SLEEP})"))
    assert in_force == f"{int(LIMIT * 1000)}ms"
    assert database.classify(ended.value) is ErrorKind.TIMEOUT


# -- the mode off: what a user sees ------------------------------------------------------


async def test_a_refused_startup_parameter_is_named_with_the_setting_to_change(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = _database(pgbouncer_transaction, pgbouncer_database, "off")
    caplog.set_level(logging.WARNING)
    # As if the start's own check had not run (the pooler did not answer then): the
    # start would refuse in one line.
    with pooler_as_finding():
        await database.start()
    try:
        with pytest.raises(DatabaseUnavailableError) as refused:
            async with database.transaction() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await database.stop()
    reason = refused.value.reason
    assert "ProtocolViolationError: unsupported startup parameter: " in reason
    assert "DB_PGBOUNCER" in reason
    assert f":{pgbouncer_transaction.port}" in reason
    # The breaker's line says the same.
    assert any(
        "unsupported startup parameter" in record.getMessage()
        and "failing fast" in record.getMessage()
        for record in caplog.records
    )


async def test_a_pooler_that_lets_the_login_through_is_reported_at_the_first_connection(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    lenient = start_pgbouncer(
        pool_mode="session",
        ignore_startup_parameters=(
            "extra_float_digits",
            "statement_timeout",
            "idle_in_transaction_session_timeout",
            "client_connection_check_interval",
            "default_transaction_read_only",
        ),
    )
    caplog.set_level(logging.WARNING)
    database = _database(lenient, pgbouncer_database, "off")
    # As if the start's own check had not run (say the server did not answer then): it
    # would refuse, the limits not being in force.
    with pooler_as_finding():
        await database.start()
    try:
        async with database.transaction() as session:
            await session.execute(text("SELECT 1"))
    finally:
        await database.stop()
    warnings = [r.getMessage() for r in caplog.records if "DB_PGBOUNCER is off" in r.getMessage()]
    assert len(warnings) == 1


# -- PgBouncer's own failures ---------------------------------------------------------------


async def test_query_wait_timeout_is_an_unavailable_database(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(default_pool_size=1, query_wait_timeout=LIMIT)
    async with _database(bouncer, pgbouncer_database, "transaction") as database:
        holding = asyncio.Event()

        async def hold() -> None:
            async with database.transaction() as session:
                await session.execute(text("SELECT 1"))
                holding.set()
                await asyncio.sleep(LIMIT * 1.8)

        holder = asyncio.ensure_future(hold())
        await holding.wait()
        with pytest.raises(DBAPIError) as waited:
            async with database.read_session() as session:
                await session.execute(text("SELECT 1"))
        await holder
    assert database.classify(waited.value) is ErrorKind.UNAVAILABLE
    # asyncpg 0.32 passes PgBouncer's reason on; 0.31 reports only the closed connection.
    reason = str(waited.value.orig)
    assert "query_wait_timeout" in reason or "closed in the middle of operation" in reason


async def test_a_pgbouncer_restart_fails_units_briefly_then_they_recover(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(default_pool_size=2)
    async with _database(bouncer, pgbouncer_database, "transaction") as database:
        async with database.read_session() as session:
            await session.execute(text("SELECT 1"))
        bouncer.restart()
        outcomes: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                async with asyncio.timeout(5):
                    async with database.read_session() as session:
                        await session.execute(text("SELECT 1"))
                outcomes.append("ok")
            except Exception as error:
                outcomes.append(database.classify(error).name)
            if outcomes[-3:] == ["ok"] * 3:
                break
            await asyncio.sleep(0.05)
    assert outcomes[-3:] == ["ok"] * 3
    assert set(outcomes) <= {"ok", ErrorKind.UNAVAILABLE.name}


async def test_migrations_are_refused_through_transaction_pooling(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    database = _database(pgbouncer_transaction, pgbouncer_database, "transaction")
    async with database, database.engine.connect() as connection:
        with pytest.raises(ConfigurationError, match="one server session"):
            await database.backend.acquire_migration_lock(connection, "ledger", wait=0)


@pytest.mark.parametrize("reader", ["session", "connection"])
async def test_a_read_whose_connection_dies_before_its_end_keeps_its_answer(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str, reader: str
) -> None:
    bouncer = start_pgbouncer(default_pool_size=2)
    database = _database(bouncer, pgbouncer_database, "transaction", pool_size=1)
    async with database:
        for settle in (0.0, 0.2):  # the loop has seen the socket close, or not yet
            opened = database.read_session() if reader == "session" else database.read_connection()
            async with opened as reading:
                assert (await reading.execute(text("SELECT 1"))).scalar() == 1
                bouncer.kill()
                await asyncio.sleep(settle)
            bouncer.start()
            # The dead connection is not handed out again.
            async with database.read_session() as session:
                assert (await session.execute(text("SELECT 2"))).scalar() == 2


@pytest.mark.parametrize("reader", ["session", "connection", "prepared"])
async def test_a_read_whose_session_the_server_ends_before_its_end_keeps_its_answer(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str, reader: str
) -> None:
    """The server ends the read's session after the answer (here its idle limit, the
    loop blocked meanwhile): PgBouncer passes the FATAL on, then closes. Whether the
    loop has read none of that, the FATAL alone (asyncpg then refuses the ROLLBACK in
    words of its own), or the end too, when the read ends: the answer is kept."""
    bouncer = start_pgbouncer(default_pool_size=2)
    idle_limit = 0.05
    database = _database(
        bouncer,
        pgbouncer_database,
        "transaction",
        pool_size=1,
        idle_in_transaction_timeout=idle_limit,
    )
    one = Prepared(select(func.abs(bindparam("value", type_=Integer))))
    async with database:
        async with database.read_connection() as connection:
            assert await one.scalar(connection, {"value": -1}) == 1  # learnt: the driver's next
        for turns in range(5):  # loop iterations between the stall and the read's end
            opened = database.read_session() if reader == "session" else database.read_connection()
            async with opened as reading:
                if reader == "prepared":
                    assert isinstance(reading, AsyncConnection)
                    assert await one.scalar(reading, {"value": -turns}) == turns
                else:
                    assert (await reading.execute(text(f"SELECT {turns}"))).scalar() == turns
                time.sleep(idle_limit * 6)  # noqa: ASYNC251 - the loop reads nothing meanwhile
                for _ in range(turns):
                    await asyncio.sleep(0)
            async with database.read_session() as session:  # the connection is replaced
                assert (await session.execute(text("SELECT 2"))).scalar() == 2


@pytest.mark.parametrize("dropped", [None, "connection_class", "statement_cache_size"])
async def test_an_async_creator_must_pass_the_pgbouncer_arguments_on(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str, dropped: str | None
) -> None:
    import asyncpg

    async def create(**arguments: Any) -> Any:
        arguments.pop(dropped or "", None)
        return await asyncpg.connect(**arguments)

    database = _database(pgbouncer_transaction, pgbouncer_database, "transaction")
    database.configure(async_creator=create)
    async with database:
        if dropped is None:
            async with database.transaction() as session:
                limit = (await session.execute(text("SHOW statement_timeout"))).scalar()
            assert limit == f"{int(LIMIT * 1000)}ms"
            return
        with pytest.raises(ConfigurationError, match=f"async_creator=: .*{dropped}"):
            async with database.transaction() as session:
                await session.execute(text("SELECT 1"))


async def test_prepared_reads_run_on_the_driver_inside_the_limits_of_their_transaction(
    through: tuple[Database, Table, PgBouncer],
) -> None:
    database, table, _ = through
    await database.run_statement(insert(table), [{"id": 1, "value": 7}])
    by_id = Prepared(select(table.c.value).where(table.c.id == bindparam("id")))
    slow = Prepared(select(func.pg_sleep(bindparam("seconds"))))
    bump = update(table).values(value=table.c.value + 1)
    with sqlalchemy_runs() as runs:
        for _ in range(4):
            async with database.read_connection() as connection:
                assert await by_id.scalar(connection, {"id": 1}) == 7
        for _ in range(3):
            async with database.read_connection() as connection:
                await slow.all(connection, {"seconds": 0})
        for _ in range(3):
            await database.run_statement(bump)
        started = time.monotonic()
        with pytest.raises(DBAPIError) as cancelled:
            async with database.read_connection() as connection:
                await slow.all(connection, {"seconds": SLEEP})
    # The first run of each statement teaches the fast path.
    assert runs.of(by_id.statement) == 1
    assert runs.of(slow.statement) == 1
    # Writes keep to SQLAlchemy in transaction mode: no BEGIN on the driver's path.
    assert runs.of(bump) == (3 if database.settings.pgbouncer == "transaction" else 1)
    assert database.classify(cancelled.value) is ErrorKind.TIMEOUT
    assert time.monotonic() - started < SLEEP / 2


async def test_a_connection_lost_while_being_set_up_is_an_unavailable_database(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    """PgBouncer lets the login through, then drops the client while it waits for a
    server: in SQLAlchemy's setup of the new connection (its type codecs' queries, whose
    errors SQLAlchemy raises unwrapped) or at the first statement."""
    import asyncpg

    bouncer = start_pgbouncer(default_pool_size=1, query_wait_timeout=LIMIT)
    holder = await asyncpg.connect(bouncer.dsn(pgbouncer_database), statement_cache_size=0)
    database = _database(bouncer, pgbouncer_database, "transaction")
    try:
        async with database:
            async with database.read_session() as session:  # the dialect learns the server
                await session.execute(text("SELECT 1"))
            await database.read_engine.dispose()  # the next read needs a new connection
            async with holder.transaction():  # the only server connection, held
                with pytest.raises((DBAPIError, DatabaseUnavailableError)) as lost:
                    async with database.read_session() as session:
                        await session.execute(text("SELECT 1"))
    finally:
        await holder.close()
    assert database.classify(lost.value) is ErrorKind.UNAVAILABLE


async def test_the_driver_s_closed_connection_error_is_an_unavailable_database(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    import asyncpg

    client = await asyncpg.connect(pgbouncer_transaction.dsn(pgbouncer_database))
    await client.close()
    with pytest.raises(asyncpg.InterfaceError) as closed:
        await client.set_type_codec("json", encoder=str, decoder=str, schema="pg_catalog")
    database = _database(pgbouncer_transaction, pgbouncer_database, "transaction")
    assert database.classify(closed.value) is ErrorKind.UNAVAILABLE
