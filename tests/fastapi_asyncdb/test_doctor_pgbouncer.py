"""The doctor through a real PgBouncer: the pooler seen, and DB_PGBOUNCER checked against it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fastapi_asyncdb import Database
from fastapi_asyncdb.doctor import Finding, examine
from tests.servers.pgbouncer import PgBouncer

pytestmark = pytest.mark.usefixtures("clean_environment")

StartPgBouncer = Callable[..., PgBouncer]
LENIENT = (
    "extra_float_digits",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "client_connection_check_interval",
)


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [finding for finding in findings if finding.check == check]


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_the_matching_setting_is_ok_with_limits_and_fast_path_explained(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str, mode: str
) -> None:
    bouncer = start_pgbouncer(pool_mode=mode, default_pool_size=3)
    database = Database(url=bouncer.url(pgbouncer_database), pgbouncer=mode, statement_timeout=7)
    findings = await examine(database, workers=1)
    assert not [finding for finding in findings if finding.level == "error"], findings
    (pooler,) = by_check(findings, "pooler")
    assert pooler.level == "ok"
    assert f"DB_PGBOUNCER={mode}" in pooler.message
    timeouts = [finding.message for finding in by_check(findings, "timeouts")]
    assert "statement_timeout 7 s in force" in timeouts
    (fast_path,) = by_check(findings, "fast path")
    assert ("off" in fast_path.message) is (mode == "transaction")


async def test_a_transaction_pooler_with_the_setting_off_is_an_error(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    bouncer = start_pgbouncer(default_pool_size=3, ignore_startup_parameters=LENIENT)
    findings = await examine(Database(url=bouncer.url(pgbouncer_database)), workers=1)
    (pooler,) = by_check(findings, "pooler")
    assert pooler.level == "error"
    assert "DB_PGBOUNCER=off" in pooler.message
    timeouts = by_check(findings, "timeouts")
    assert any(finding.level == "error" for finding in timeouts)


async def test_a_strict_pgbouncer_with_the_setting_off_names_the_setting(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    findings = await examine(Database(url=pgbouncer_transaction.url(pgbouncer_database)), workers=1)
    (reachable,) = by_check(findings, "reachable")
    assert reachable.level == "error"
    assert "unsupported startup parameter" in reachable.message
    assert "DB_PGBOUNCER" in reachable.message


async def test_the_setting_without_a_pooler_is_a_warning(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    target = pgbouncer_transaction.config
    url = f"postgresql+asyncpg://postgres@{target.target_host}:{target.target_port}/"
    findings = await examine(Database(url=url + pgbouncer_database, pgbouncer="session"), workers=1)
    (pooler,) = by_check(findings, "pooler")
    assert pooler.level == "warning"
    assert "no pooler" in pooler.message


async def test_the_budget_through_pgbouncer_is_the_pooler_s_not_the_server_s(
    pgbouncer_transaction: PgBouncer, pgbouncer_database: str
) -> None:
    database = Database(
        url=pgbouncer_transaction.url(pgbouncer_database),
        pgbouncer="transaction",
        pool_size=100,
        max_overflow=100,
    )
    findings = await examine(database, workers=8)
    (budget,) = by_check(findings, "connections")
    assert budget.level == "ok"
    assert "8 worker(s) x 401 connections = 3208 client connections to PgBouncer" in budget.message
    assert "max_client_conn" in budget.advice


async def test_the_session_setting_in_front_of_an_idle_transaction_pooler_is_an_error(
    start_pgbouncer: StartPgBouncer, pgbouncer_database: str
) -> None:
    # One client on a fresh PgBouncer: its transactions all meet one server connection.
    bouncer = start_pgbouncer(pool_mode="transaction", default_pool_size=3)
    database = Database(url=bouncer.url(pgbouncer_database), pgbouncer="session")
    findings = await examine(database, workers=1)
    (pooler,) = by_check(findings, "pooler")
    assert pooler.level == "error", pooler
    assert "transaction pooler" in pooler.message
    assert "DB_PGBOUNCER=session" in pooler.message
