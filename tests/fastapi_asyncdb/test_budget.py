"""At startup, workers x pools are checked against what the real server allows.

The servers' max_connections are never changed: a configuration is made too large by
its number of workers, or by a role's own connection limit.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import make_url

from fastapi_asyncdb import ConfigurationError, Database, DatabaseSettings
from fastapi_asyncdb.backends import ConnectionLimits
from fastapi_asyncdb.budget import connection_budget
from fastapi_asyncdb.doctor import examine
from fastapi_asyncdb.pooler_check import pooler_as_finding
from tests.servers.pgbouncer import PgBouncer

from .proxy import free_port

pytestmark = pytest.mark.usefixtures("clean_environment")

servers = pytest.mark.backends("postgresql", "mysql")
MANY_WORKERS = 400
BUDGET_LOGGER = "fastapi_asyncdb.budget"


def budget_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == BUDGET_LOGGER and record.levelno >= logging.WARNING
    ]


async def test_a_configuration_that_fits_starts_without_a_warning(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Database(url=database_url, workers=2) as database:
        assert database.is_started
    assert budget_warnings(caplog) == []


@servers
async def test_too_many_workers_are_refused_with_the_arithmetic_and_what_to_change(
    database_url: str,
) -> None:
    database = Database(url=database_url, workers=MANY_WORKERS)
    with pytest.raises(ConfigurationError) as refused:
        await database.start()
    message = str(refused.value)
    assert (
        f"{MANY_WORKERS} workers x (10 + 5 write + 10 + 5 read + 1 probe) = "
        f"{MANY_WORKERS * 31} connections; the server allows " in message
    )
    for remedy in ("DB_POOL_SIZE", "DB_WORKERS", "max_connections", "DB_BUDGET_CHECK=warn"):
        assert remedy in message
    assert not database.is_started


@servers
async def test_warn_mode_logs_one_warning_with_the_arithmetic_and_starts(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Database(url=database_url, workers=MANY_WORKERS, budget_check="warn") as database:
        assert database.is_started
    (warning,) = budget_warnings(caplog)
    assert f"= {MANY_WORKERS * 31} connections; the server allows" in warning


async def test_off_neither_reads_the_server_nor_logs(
    database_url: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backend != "sqlite":
        # Nothing answers here: a check would log that it could not read the limits.
        database_url = make_url(database_url).set(port=free_port()).render_as_string(False)
    async with Database(url=database_url, workers=MANY_WORKERS, budget_check="off") as database:
        assert database.is_started
    assert budget_warnings(caplog) == []


@servers
async def test_a_server_that_does_not_answer_is_not_a_refusal_but_one_warning(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = make_url(database_url).set(port=free_port(), password="s3cret-pw")
    url = unreachable.render_as_string(hide_password=False)
    async with Database(url=url, workers=MANY_WORKERS) as database:
        assert database.is_started
    (warning,) = budget_warnings(caplog)
    assert "not checked" in warning
    assert "s3cret-pw" not in caplog.text


@pytest.mark.backends("sqlite")
async def test_sqlite_has_no_budget_to_check(database_url: str) -> None:
    async with Database(url=database_url, workers=MANY_WORKERS) as database:
        assert database.is_started


@servers
async def test_the_doctor_reports_the_arithmetic_startup_refuses_with(database_url: str) -> None:
    findings = await examine(Database(url=database_url, workers=MANY_WORKERS))
    (budget,) = [finding for finding in findings if finding.check == "connections"]
    assert budget.level == "error"
    with pytest.raises(ConfigurationError) as refused:
        await Database(url=database_url, workers=MANY_WORKERS).start()
    assert budget.message in str(refused.value)


@pytest.fixture
async def limited_role_url(database_url: str) -> AsyncIterator[str]:
    """A PostgreSQL role allowed 5 connections, where the server allows far more."""
    async with Database(url=database_url) as database, database.engine.begin() as connection:
        await connection.execute(text("DROP ROLE IF EXISTS workers_budget_app"))
        await connection.execute(text("CREATE ROLE workers_budget_app LOGIN CONNECTION LIMIT 5"))
    yield make_url(database_url).set(username="workers_budget_app").render_as_string(False)
    async with Database(url=database_url) as database, database.engine.begin() as connection:
        await connection.execute(text("DROP ROLE workers_budget_app"))


@pytest.mark.backends("postgresql")
async def test_a_role_connection_limit_tighter_than_the_server_is_what_counts(
    limited_role_url: str,
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        await Database(url=limited_role_url, pool_size=2, max_overflow=1).start()
    assert "role workers_budget_app's CONNECTION LIMIT 5" in str(refused.value)
    # The advice names the limit that binds, not the server's.
    assert "or raise role workers_budget_app's CONNECTION LIMIT;" in str(refused.value)
    assert "max_connections" not in str(refused.value)
    assert "(2 + 1 write + 2 + 1 read + 1 probe) = 7 connections" in str(refused.value)
    async with Database(url=limited_role_url, pool_size=1, max_overflow=0, read_pool_size=1):
        pass  # 1 + 0 + 1 + 0 + 1 probe = 3 connections fit in 5


@pytest.fixture
async def server_limits(database_url: str) -> ConnectionLimits:
    """The limits as the doctor reads them, on the app's own engine."""
    async with (
        Database(url=database_url, budget_check="off") as database,
        database.engine.connect() as connection,
    ):
        limits = await connection.run_sync(database.backend.connection_limits)
    assert limits is not None
    return limits


pool_sizes = st.integers(min_value=1, max_value=40)
overflows = st.integers(min_value=0, max_value=40)


@servers
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    workers=st.integers(min_value=1, max_value=12),
    pool=st.tuples(pool_sizes, overflows),
    read=st.one_of(st.none(), st.tuples(pool_sizes, overflows)),
)
async def test_startup_refuses_exactly_the_configurations_the_budget_exceeds(
    database_url: str,
    server_limits: ConnectionLimits,
    workers: int,
    pool: tuple[int, int],
    read: tuple[int, int] | None,
) -> None:
    read_size, read_overflow = read if read is not None else (None, None)
    settings_ = DatabaseSettings(
        url=database_url,
        workers=workers,
        pool_size=pool[0],
        max_overflow=pool[1],
        read_pool_size=read_size,
        read_max_overflow=read_overflow,
    )
    database = Database(settings_)
    budget = connection_budget(settings_, server_limits)
    assert budget.fits is not None
    if budget.fits:
        async with database:
            pass
    else:
        with pytest.raises(ConfigurationError, match=re.escape(budget.arithmetic())):
            await database.start()


@servers
@settings(max_examples=200, deadline=None)
@given(
    workers=st.integers(min_value=1, max_value=64),
    pool=st.tuples(pool_sizes, overflows),
    read=st.tuples(pool_sizes, overflows),
    max_connections=st.integers(min_value=1, max_value=5000),
    reserved=st.integers(min_value=0, max_value=50),
    account_limit=st.one_of(st.none(), st.integers(min_value=0, max_value=5000)),
)
def test_the_arithmetic_reads_back_to_the_numbers_it_decides_by(
    workers: int,
    pool: tuple[int, int],
    read: tuple[int, int],
    max_connections: int,
    reserved: int,
    account_limit: int | None,
) -> None:
    limits = ConnectionLimits(
        max_connections,
        reserved=reserved,
        account_limit=account_limit,
        account_limit_detail="the role's CONNECTION LIMIT",
    )
    settings_ = DatabaseSettings(
        workers=workers,
        pool_size=pool[0],
        max_overflow=pool[1],
        read_pool_size=read[0],
        read_max_overflow=read[1],
    )
    budget = connection_budget(settings_, limits)
    numbers = [int(number) for number in re.findall(r"-?\d+", budget.arithmetic())]
    assert numbers[:7] == [workers, *pool, *read, 1, budget.needed]
    assert budget.needed == workers * (sum(pool) + sum(read) + 1)
    allowed = [max_connections - reserved] + ([account_limit] if account_limit is not None else [])
    assert budget.available == min(allowed)
    assert budget.fits == (budget.needed <= min(allowed))
    assert numbers[-1] == (account_limit if account_limit is not None else allowed[0])


async def test_through_a_pooler_the_servers_limits_are_not_the_clients(
    start_pgbouncer: Callable[..., PgBouncer],
    pgbouncer_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Session pooling, told to ignore the library's startup parameters: the pooler is
    # seen by its port, which is not the server's.
    bouncer = start_pgbouncer(
        pool_mode="session",
        ignore_startup_parameters=(
            "extra_float_digits",
            "statement_timeout",
            "idle_in_transaction_session_timeout",
            "client_connection_check_interval",
            "default_transaction_read_only",
        ),
    )
    caplog.set_level(logging.INFO, logger=BUDGET_LOGGER)
    url = bouncer.url(pgbouncer_database)
    # The pooler check would refuse this start (the limits are not in force): the
    # budget's own word is what is tested here.
    with pooler_as_finding():
        async with Database(url=url, workers=MANY_WORKERS) as database:
            assert database.is_started
    (record,) = [record for record in caplog.records if record.name == BUDGET_LOGGER]
    assert record.levelno == logging.INFO
    assert "not checked" in record.getMessage()
    assert "max_client_conn" in record.getMessage()
    findings = await examine(Database(url=url, workers=MANY_WORKERS))
    (budget,) = [finding for finding in findings if finding.check == "connections"]
    assert budget.level == "warning"
    assert record.getMessage().endswith(budget.message.removeprefix("not checked: "))


@pytest.fixture
async def limited_user_url(database_url: str) -> AsyncIterator[str]:
    """A MariaDB account allowed 5 connections (MAX_USER_CONNECTIONS)."""
    database_name = make_url(database_url).database
    async with Database(url=database_url) as database, database.engine.begin() as connection:
        await connection.execute(text("DROP USER IF EXISTS 'workers_budget'@'%'"))
        await connection.execute(
            text("CREATE USER 'workers_budget'@'%' WITH MAX_USER_CONNECTIONS 5")
        )
        await connection.execute(text(f"GRANT ALL ON `{database_name}`.* TO 'workers_budget'@'%'"))
    yield make_url(database_url).set(username="workers_budget").render_as_string(False)
    async with Database(url=database_url) as database, database.engine.begin() as connection:
        await connection.execute(text("DROP USER 'workers_budget'@'%'"))


@pytest.mark.backends("mysql")
async def test_an_account_connection_limit_tighter_than_the_server_is_what_counts(
    limited_user_url: str,
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        await Database(url=limited_user_url, pool_size=2, max_overflow=1).start()
    assert "= 7 connections; the server allows" in str(refused.value)
    assert "and max_user_connections 5" in str(refused.value)
    assert "or raise max_user_connections;" in str(refused.value)
    assert "max_connections" not in str(refused.value)
    async with Database(url=limited_user_url, pool_size=1, max_overflow=0, read_pool_size=1):
        pass


@servers
async def test_the_doctor_warns_of_other_clients_that_leave_no_room(
    database_url: str, server_limits: ConnectionLimits
) -> None:
    available = connection_budget(DatabaseSettings(), server_limits).available
    assert available is not None
    # One connection short of the limit, while two others are open.
    fitting = Database(
        url=database_url,
        pool_size=available - 3,
        max_overflow=0,
        read_pool_size=1,
        read_max_overflow=0,
    )
    async with (
        Database(url=database_url) as others,
        others.engine.connect(),
        others.engine.connect(),
    ):
        findings = await examine(fitting)
    fits, others_too = [finding for finding in findings if finding.check == "connections"]
    assert fits.level == "warning"  # it fits, with little room
    assert f"= {available - 1} connections" in fits.message
    assert others_too.level == "warning"
    assert "other connection(s) are open on the server now" in others_too.message


@pytest.mark.backends("postgresql")
async def test_the_doctor_sees_other_roles_clients_without_reading_all_statistics(
    database_url: str,
) -> None:
    # An unprivileged role sees other roles' rows of pg_stat_activity with most columns
    # hidden: their connections still count against max_connections.
    role = f"budget_plain_{os.getpid()}"
    async with Database(url=database_url) as admin, admin.engine.begin() as connection:
        await connection.execute(text(f"CREATE ROLE {role} LOGIN"))
    try:
        plain_url = make_url(database_url).set(username=role).render_as_string(False)
        async with (
            Database(url=plain_url, budget_check="off") as database,
            Database(url=database_url) as others,
            others.engine.connect(),
            others.engine.connect(),
            database.engine.connect() as connection,
        ):
            limits = await connection.run_sync(database.backend.connection_limits)
        assert limits is not None
        # The two others' and this one, at least (other clients may be there too).
        assert limits.in_use is not None
        assert limits.in_use >= 3
    finally:
        async with Database(url=database_url) as admin, admin.engine.begin() as connection:
            await connection.execute(text(f"DROP ROLE {role}"))
