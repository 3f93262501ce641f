"""The ledger under ``uvicorn --workers 2`` and gunicorn with two uvicorn workers, on PostgreSQL.

Each server starts on an empty database (but for Alembic's version table, empty and
locked by the test until both workers wait on the database), so both workers run
the migrations at startup at once: one applies them while the other waits, then
finds them applied, and both serve.
Then clients send transfers from fresh connections, so both workers answer, some
keys sent twice (a client retrying on another connection, so possibly to the other
worker); and the bank's invariants must hold: money conserved, no balance negative,
every 201 applied once. Meanwhile the server's connections never exceed what the
documentation says N workers open. SIGTERM ends it cleanly, leaving no connection.

Each run draws its own seed; LEDGER_SERVERS_SEED=<seed> replays its choices.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from fastapi_asyncdb import DatabaseSettings
from fastapi_asyncdb.backends import ConnectionLimits
from fastapi_asyncdb.budget import connection_budget
from fastapi_asyncdb.migrations import alembic_config
from ledger.migrate import ALEMBIC_INI
from ledger.models import Base
from tests.conftest import prepare_server
from tests.fastapi_asyncdb.served import (
    answering,
    connections_left,
    gunicorn_command,
    server_environment,
    serving,
    uvicorn_command,
)
from tests.ledger.served_ledger import WORKER_HEADER

pytestmark = [pytest.mark.usefixtures("clean_environment")]

FACTORY = "tests.ledger.served_ledger:create_app"
WORKERS = 2
SETTINGS = {
    "DB_POOL_SIZE": 3,
    "DB_MAX_OVERFLOW": 2,
    "DB_READ_POOL_SIZE": 2,
    "DB_READ_MAX_OVERFLOW": 1,
}
ACCOUNTS = 6
OPENING_BALANCE = 100
TRANSFERS = 120
CLIENTS = 8
RESENT = 0.2  # share of transfers whose request is sent a second time

SERVERS: dict[str, Callable[[int], Sequence[str]]] = {
    "uvicorn --workers 2": lambda port: uvicorn_command(FACTORY, port, workers=WORKERS),
    "gunicorn -k UvicornWorker -w 2": lambda port: gunicorn_command(
        FACTORY, port, workers=WORKERS, graceful_timeout=30
    ),
}


def run_seed() -> int:
    return int(os.environ.get("LEDGER_SERVERS_SEED") or random.randrange(2**32))


def most_connections(workers: int) -> int:
    """What docs/operating.md says N workers open at most: every pool, and the probe's one.

    The arithmetic the startup check and the doctor use.
    """
    settings = DatabaseSettings(
        workers=workers, **{name.removeprefix("DB_").lower(): v for name, v in SETTINGS.items()}
    )
    limits = ConnectionLimits(max_connections=None)
    return connection_budget(settings, limits).needed


@pytest.fixture
def server_url() -> str:
    # Outside the test's event loop: prepare_server runs one of its own.
    return prepare_server("postgresql", "ledger_servers")


@pytest.fixture
async def empty_database_url(server_url: str) -> str:
    engine = create_async_engine(server_url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.drop_all)
            await connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        await engine.dispose()
    return server_url


async def query(url: str, statement: str, **parameters: object) -> list[tuple[object, ...]]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(text(statement), parameters)]
    finally:
        await engine.dispose()


@asynccontextmanager
async def migrations_held(url: str) -> AsyncIterator[None]:
    """Alembic's version table, empty and locked: a migration waits at its first read."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.execute(
                text(
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
                )
            )
            await connection.commit()
            await connection.execute(text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
            yield
            await connection.rollback()
    finally:
        await engine.dispose()


async def lock_waits(url: str, application_name: str, count: int) -> list[str]:
    """What the server's sessions wait for, once ``count`` of them wait on a lock."""
    statement = (
        "SELECT wait_event FROM pg_stat_activity "
        "WHERE application_name = :n AND wait_event_type = 'Lock'"
    )
    for _ in range(600):
        waits = [str(row[0]) for row in await query(url, statement, n=application_name)]
        if len(waits) >= count:
            return sorted(waits)
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {waits} wait on a lock")


async def watch_connections(url: str, application_name: str, counts: list[int]) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    statement = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n")
    try:
        async with engine.connect() as connection:
            while True:
                result = await connection.execute(statement, {"n": application_name})
                counts.append(int(result.scalar_one()))
                await connection.rollback()  # a fresh snapshot of the statistics each time
                await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("server", list(SERVERS))
async def test_ledger_workers_migrate_once_both_serve_and_keep_the_books(
    server: str, empty_database_url: str, tmp_path: Path
) -> None:
    seed = run_seed()
    rng = random.Random(seed)
    url = empty_database_url
    application_name = f"ledger-{uuid.uuid4().hex[:12]}"
    # WEB_CONCURRENCY, as a platform sets it: the library's DB_WORKERS default, so the
    # startup check counts both workers' pools.
    environment = server_environment(
        url, **SETTINGS, DB_APPLICATION_NAME=application_name, WEB_CONCURRENCY=WORKERS
    )
    counts: list[int] = []
    watcher = asyncio.create_task(watch_connections(url, application_name, counts))
    log_path = tmp_path / "server.log"
    with serving(SERVERS[server], environment, log_path, ready=None) as served:
        async with migrations_held(url):
            # Both workers are in their startup's migrations: one at the version
            # table, the other kept from it by the migration lock (which it polls,
            # saying so in its log).
            waits = await lock_waits(url, application_name, 1)
            for _ in range(600):
                if "another process is migrating this database" in served.log():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("no worker waited for the migration lock")
        await answering(served)
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=served.base_url, limits=limits, timeout=30) as client:
            accounts = []
            for _ in range(ACCOUNTS):
                response = await client.post(
                    "/accounts", json={"owner": "alice", "balance": OPENING_BALANCE}
                )
                assert response.status_code == 201, response.text
                accounts.append(response.json()["id"])

            plans = []
            for n in range(TRANSFERS):
                source, target = rng.sample(accounts, 2)
                body = {"from_account": source, "to_account": target, "amount": rng.randint(1, 60)}
                plans.append((f"{seed}-{n}", body))
                if rng.random() < RESENT:
                    plans.append((f"{seed}-{n}", body))
            rng.shuffle(plans)
            queue: asyncio.Queue[tuple[str, dict[str, int]]] = asyncio.Queue()
            for plan in plans:
                queue.put_nowait(plan)
            answers: list[tuple[str, dict[str, int], httpx.Response]] = []

            async def send_transfers() -> None:
                while not queue.empty():
                    key, body = queue.get_nowait()
                    response = await client.post(
                        "/transfers", json=body, headers={"Idempotency-Key": key}
                    )
                    answers.append((key, body, response))

            await asyncio.gather(*(send_transfers() for _ in range(CLIENTS)))
            total = (await client.get("/accounts/total")).json()
            balances = {
                account: (await client.get(f"/accounts/{account}")).json()["balance"]
                for account in accounts
            }
        watcher.cancel()
        served.terminate()
        code, _took = await served.exited(within=60)
        log = served.log()

    where = f"seed {seed}"
    # Both workers ran the migrations at startup, one at a time; one applied them,
    # and both serve.
    assert waits.count("relation") == 1, f"waits on the database: {waits}"
    assert log.count("Application startup complete") == WORKERS, log
    # Every revision applied by one worker (each log line starts with its pid).
    upgraders = {line.split()[0] for line in log.splitlines() if "Running upgrade" in line}
    assert len(upgraders) == 1, log
    head = ScriptDirectory.from_config(alembic_config(ALEMBIC_INI)).get_current_head()
    assert await query(url, "SELECT version_num FROM alembic_version") == [(head,)]
    assert len({response.headers[WORKER_HEADER] for _, _, response in answers}) == WORKERS

    # The books: every 201 applied once, money conserved, nothing negative.
    assert {response.status_code for _, _, response in answers} <= {201, 409}, where
    applied: dict[str, int] = {}
    counted: set[str] = set()
    expected = dict.fromkeys(accounts, OPENING_BALANCE)
    for key, body, response in answers:
        if response.status_code != 201:
            continue
        transfer_id = response.json()["id"]
        # A key answered 201 twice names one transfer: the second was a replay.
        if applied.setdefault(key, transfer_id) == transfer_id and key not in counted:
            counted.add(key)
            expected[body["from_account"]] -= body["amount"]
            expected[body["to_account"]] += body["amount"]
        assert applied[key] == transfer_id, f"{where}: {key} applied twice"
    stored = await query(url, "SELECT idempotency_key, id FROM transfers")
    assert {str(key): int(str(number)) for key, number in stored} == applied, where
    assert balances == expected, where
    assert min(balances.values()) >= 0
    assert total == {"accounts": ACCOUNTS, "total": ACCOUNTS * OPENING_BALANCE}

    assert counts, "the connections were never counted"
    assert max(counts) <= most_connections(WORKERS), f"{where}: {max(counts)} connections"
    assert code in (0, -signal.SIGTERM), log
    assert log.count("Application shutdown complete") == WORKERS, log
    assert await connections_left(url, application_name) == [], where
