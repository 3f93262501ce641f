"""The ledger through a real PgBouncer, in transaction and session mode.

Migrated on a direct connection (the migration lock needs one server session), then
served through PgBouncer with ``DB_PGBOUNCER``: concurrent transfers, some sent twice
under one idempotency key, must leave the bank consistent.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from fastapi_asyncdb import Database
from ledger.app import create_app
from ledger.migrate import ALEMBIC_INI
from tests.conftest import prepare_server
from tests.ledger.ledger_api import LedgerApi
from tests.servers.pgbouncer import PgBouncer

pytestmark = [pytest.mark.usefixtures("clean_environment")]

StartPgBouncer = Callable[..., PgBouncer]
ACCOUNTS = 6
OPENING_BALANCE = 100
TRANSFERS = 60


@pytest.fixture
def direct_url() -> str:
    """This run's ledger database on the suite's PostgreSQL (created here, synchronously)."""
    return prepare_server("postgresql", "pgb_ledger")


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_the_bank_stays_consistent_through_pgbouncer(
    start_pgbouncer: StartPgBouncer, direct_url: str, mode: str
) -> None:
    direct = Database(url=direct_url)
    async with direct:
        async with direct.engine.begin() as connection:
            await connection.execute(
                text("DROP TABLE IF EXISTS transfers, accounts, alembic_version")
            )
        await direct.migrate(ALEMBIC_INI)
    # Session mode: a server connection per client connection of the app.
    bouncer = start_pgbouncer(pool_mode=mode, default_pool_size=3 if mode == "transaction" else 30)
    database = Database(
        url=bouncer.url(str(make_url(direct_url).database)),
        pgbouncer=mode,
        pool_size=6,
        max_overflow=4,
        pool_timeout=20,
    )
    app = create_app(database, migrate_on_startup=False)
    rng = random.Random(13)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as client:
            api = LedgerApi(client)
            accounts = [await api.open_account(OPENING_BALANCE) for _ in range(ACCOUNTS)]
            sends = []
            for number in range(TRANSFERS):
                source, target = rng.sample(accounts, 2)
                amount = rng.randint(1, 40)
                sends.append((f"{mode}-{number}", source, target, amount))
            # A third of them sent twice, concurrently: applied once.
            sends += sends[::3]
            answers = await asyncio.gather(*(api.transfer(*send) for send in sends))
            assert {answer.status_code for answer in answers} <= {201, 409}
            total = await api.total()
            balances = await api.balances(*accounts)
    applied = {
        send[0]: send
        for send, answer in zip(sends, answers, strict=True)
        if answer.status_code == 201
    }
    assert applied
    assert total["total"] == ACCOUNTS * OPENING_BALANCE
    expected = dict.fromkeys(accounts, OPENING_BALANCE)
    for _, source, target, amount in applied.values():
        expected[source] -= amount
        expected[target] += amount
    assert balances == [expected[account] for account in accounts]
    assert min(balances) >= 0
