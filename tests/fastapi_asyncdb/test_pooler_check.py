"""The start against the pooler in front of PostgreSQL, through a real PgBouncer.

A fresh PgBouncer with one client is idle: it serves that client's transactions from
one server connection, so only a second client connection tells transaction pooling
from session pooling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from sqlalchemy import text

from fastapi_asyncdb import Database
from fastapi_asyncdb.backends.base import TRANSACTION_POOLER
from fastapi_asyncdb.errors import ConfigurationError
from fastapi_asyncdb.probe import Probe
from tests.servers.pgbouncer import PgBouncer

pytestmark = pytest.mark.usefixtures("clean_environment")

StartPgBouncer = Callable[..., PgBouncer]
# PgBouncer drops these instead of refusing the login: DB_PGBOUNCER=off gets through.
LENIENT = (
    "extra_float_digits",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "client_connection_check_interval",
    "default_transaction_read_only",
)


def _pooler_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and "DB_PGBOUNCER" in record.getMessage()
    ]


@pytest.mark.parametrize("setting", ["transaction", "session"])
@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_the_pooler_s_mode_is_told_apart_even_when_pgbouncer_is_idle(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str, mode: str, setting: str
) -> None:
    bouncer = start_pgbouncer(pool_mode=mode, default_pool_size=3)
    database = Database(url=bouncer.url(pgbouncer_database), pgbouncer=setting)
    probe = Probe(database.settings, database.backend)
    try:
        limits = await probe.read(database.backend.connection_limits)
    finally:
        await probe.close()
    assert limits is not None
    assert limits.pooler is not None
    assert limits.transaction_pooler is (mode == "transaction"), limits.pooler


@pytest.mark.parametrize("budget_check", ["refuse", "off"])
@pytest.mark.parametrize(
    ("setting", "ignore"), [("session", ("extra_float_digits",)), ("off", LENIENT)]
)
async def test_the_start_is_refused_behind_a_transaction_pooler_unless_the_setting_says_so(
    start_pgbouncer: StartPgBouncer,
    pgbouncer_database: str,
    setting: str,
    ignore: tuple[str, ...],
    budget_check: str,
) -> None:
    bouncer = start_pgbouncer(
        pool_mode="transaction", default_pool_size=3, ignore_startup_parameters=ignore
    )
    database = Database(
        url=bouncer.url(pgbouncer_database), pgbouncer=setting, budget_check=budget_check
    )
    with pytest.raises(ConfigurationError) as refused:
        await database.start()
    assert not database.is_started
    message = str(refused.value)
    assert message.startswith(TRANSACTION_POOLER)
    assert f"DB_PGBOUNCER={setting}" in message
    assert "set DB_PGBOUNCER=transaction" in message


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_the_matching_setting_starts_without_a_warning(
    start_pgbouncer: StartPgBouncer,
    pgbouncer_database: str,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bouncer = start_pgbouncer(pool_mode=mode, default_pool_size=3)
    caplog.set_level(logging.WARNING)
    database = Database(url=bouncer.url(pgbouncer_database), pgbouncer=mode)
    async with database, database.read_connection() as connection:
        assert await connection.scalar(text("SELECT 1")) == 1
    assert not _pooler_warnings(caplog)


async def test_a_session_pooler_dropping_the_limits_with_the_setting_off_is_refused_at_start(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(pool_mode="session", ignore_startup_parameters=LENIENT)
    database = Database(
        url=bouncer.url(pgbouncer_database), statement_timeout=7, budget_check="off"
    )
    with pytest.raises(ConfigurationError) as refused:
        await database.start()
    assert not database.is_started
    message = str(refused.value)
    assert "\n" not in message
    # What was read back, not guessed: the read engine's kind of connection.
    assert "statement_timeout=7000 (has 0)" in message
    assert "default_transaction_read_only=on (has off)" in message
    assert "set DB_PGBOUNCER=session or transaction" in message


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_a_pooler_refusing_the_login_with_the_setting_off_is_refused_at_the_start(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str, mode: str
) -> None:
    bouncer = start_pgbouncer(pool_mode=mode)
    database = Database(url=bouncer.url(pgbouncer_database), budget_check="off")
    with pytest.raises(ConfigurationError, match="refuses the startup parameters") as refused:
        await database.start()
    assert not database.is_started
    assert "set DB_PGBOUNCER=session or transaction" in str(refused.value)
    assert "\n" not in str(refused.value)


async def test_no_pooler_warning_when_connecting_directly(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = pgbouncer_transaction.config
    url = f"postgresql+asyncpg://postgres@{target.target_host}:{target.target_port}/"
    caplog.set_level(logging.WARNING)
    database = Database(url=url + pgbouncer_database)
    async with database, database.transaction() as session:
        await session.execute(text("SELECT 1"))
    assert not _pooler_warnings(caplog)


async def test_a_direct_start_reads_its_limits_in_force_and_is_not_refused(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    target = pgbouncer_transaction.config
    url = f"postgresql+asyncpg://postgres@{target.target_host}:{target.target_port}/"
    database = Database(
        url=url + pgbouncer_database,
        statement_timeout=7,
        idle_in_transaction_timeout=9,
        client_connection_check_interval=3,
    )
    probe = Probe(database.settings, database.backend)
    try:
        assert await probe.read(database.backend.limits_not_in_force) == ()
    finally:
        await probe.close()
    async with database, database.read_connection() as connection:
        assert await connection.scalar(text("SHOW statement_timeout")) == "7s"
        assert await connection.scalar(text("SHOW transaction_read_only")) == "on"


async def test_a_statement_pooler_is_refused_at_the_start_saying_which_pool_mode_to_use(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    # Every unit of work is a transaction, which statement pooling refuses: without the
    # check the start succeeds and then every unit of work fails.
    bouncer = start_pgbouncer(pool_mode="statement", default_pool_size=3)
    database = Database(url=bouncer.url(pgbouncer_database), pgbouncer="transaction")
    with pytest.raises(ConfigurationError) as refused:
        await database.start()
    assert not database.is_started
    message = str(refused.value)
    assert message.startswith("a statement pooler (PgBouncer with pool_mode=statement)")
    assert "pool_mode=transaction" in message


async def test_a_refused_start_leaves_nothing_on_the_server_sessions_others_get(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    # One server connection, shared by every client of a transaction pooler: what a
    # refused start set on its session would reach the next client.
    bouncer = start_pgbouncer(
        pool_mode="transaction", default_pool_size=1, ignore_startup_parameters=LENIENT
    )
    url = bouncer.url(pgbouncer_database)
    for setting in ("session", "off"):
        with pytest.raises(ConfigurationError):
            await Database(url=url, pgbouncer=setting, statement_timeout=7).start()
    async with Database(url=url, pgbouncer="transaction", statement_timeout=None) as database:
        for _ in range(3):
            async with database.transaction() as session:
                read_only, timeout = (
                    await session.execute(
                        text(
                            "SELECT current_setting('default_transaction_read_only'), "
                            "current_setting('statement_timeout')"
                        )
                    )
                ).one()
            assert (read_only, timeout) == ("off", "0")
