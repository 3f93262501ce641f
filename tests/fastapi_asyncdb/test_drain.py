"""The drain at shutdown, in process, on real databases: what ``Database.stop()`` promises.

Each round draws units of work (writes and reads; some admitted before ``stop()``,
some queued, some arriving after it; some ending on their own before the deadline,
some never; some committing, some failing) and checks every one's fate against the
rule: refused with "shutting down" if not admitted when the drain began; its normal
outcome if it ended before the deadline; cancelled and rolled back otherwise. And
``stop()`` takes as long as the rule says, no longer.

Each run draws its own seed; DRAIN_SEED=<seed> replays its choices.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text

from fastapi_asyncdb import (
    ConfigurationError,
    Database,
    DatabaseSettings,
    DatabaseUnavailableError,
    SessionDep,
    install,
)
from fastapi_asyncdb.drain import SHUTTING_DOWN

from .models import Note, create_tables

pytestmark = pytest.mark.usefixtures("clean_environment")

DRAIN_TIMEOUT = 0.8
ROLLBACK_GRACE = 1.0
ROUNDS = 5
# Loop turns and scheduling on a loaded machine, past what the drain itself waits.
SLACK = 1.5


def run_seed() -> int:
    return int(os.environ.get("DRAIN_SEED") or random.randrange(2**32))


@dataclass(eq=False)
class Unit:
    number: int
    kind: str  # "write" or "read"
    ends: bool  # False: holds on until cancelled
    fails: bool
    release: asyncio.Event = field(default_factory=asyncio.Event)
    admitted: bool = False

    @property
    def body(self) -> str:
        return f"unit-{self.number}"


async def run_unit(database: Database, unit: Unit) -> None:
    if unit.kind == "write":
        async with database.transaction() as session:
            unit.admitted = True
            session.add(Note(body=unit.body))
            await session.flush()
            await unit.release.wait()
            if unit.fails:
                raise LookupError(unit.body)
    else:
        async with database.read_connection() as connection:
            unit.admitted = True
            await connection.execute(text("SELECT 1"))
            await unit.release.wait()
            if unit.fails:
                raise LookupError(unit.body)


def draw_units(rng: random.Random, first: int) -> list[Unit]:
    return [
        Unit(
            first + n,
            rng.choice(("write", "write", "read")),
            ends=rng.random() < 0.7,
            fails=rng.random() < 0.3,
        )
        for n in range(rng.randint(1, 7))
    ]


async def settled(database: Database, units: list[Unit]) -> None:
    """Until each unit is admitted or queued: none is between the gate and its connection."""
    while True:
        queued = sum(status["waiting"] for status in database.pool_status().values())
        if sum(unit.admitted for unit in units) + queued == len(units):
            return
        await asyncio.sleep(0.005)


async def stored_bodies(url: str) -> set[str]:
    async with Database(url=url) as reader, reader.read_connection() as connection:
        return set((await connection.execute(select(Note.body))).scalars())


async def connections_named(url: str, application_name: str) -> list[str]:
    async with Database(url=url) as reader, reader.read_connection() as connection:
        states = await connection.execute(
            text("SELECT coalesce(state, '') FROM pg_stat_activity WHERE application_name = :n"),
            {"n": application_name},
        )
        return list(states.scalars())


async def test_stop_refuses_newcomers_lets_admitted_units_end_and_cancels_the_late(
    database_url: str, backend: str
) -> None:
    seed = run_seed()
    rng = random.Random(seed)
    application_name = f"drain-{uuid.uuid4().hex[:12]}"
    for round_number in range(ROUNDS):
        where = f"seed {seed}, round {round_number}"
        # Zero: nothing admitted may go on; every unit still running is cancelled.
        drain_timeout = rng.choice((0.0, DRAIN_TIMEOUT, DRAIN_TIMEOUT))
        database = Database(
            url=database_url,
            pool_size=rng.randint(1, 3),
            max_overflow=0,
            pool_timeout=30,
            drain_timeout=drain_timeout,
            health_timeout=ROLLBACK_GRACE,
            application_name=application_name,
        )
        await database.start()
        await create_tables(database)
        before = draw_units(rng, 0)
        tasks = {unit: asyncio.create_task(run_unit(database, unit)) for unit in before}
        await settled(database, before)
        admitted = [unit for unit in before if unit.admitted]
        queued = [unit for unit in before if not unit.admitted]

        started = time.monotonic()
        stopping = asyncio.create_task(database.stop())
        await asyncio.sleep(0)
        assert database.is_draining, where
        after = draw_units(rng, len(before))
        tasks |= {unit: asyncio.create_task(run_unit(database, unit)) for unit in after}
        loop = asyncio.get_running_loop()
        ending = [unit for unit in admitted if unit.ends and drain_timeout]
        for unit in ending:
            # Well before the deadline, in a random order.
            loop.call_later(rng.uniform(0, drain_timeout / 4), unit.release.set)
        await stopping
        took = time.monotonic() - started
        for unit in before:
            unit.release.set()  # a unit the drain failed to end must not hang the test

        results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        outcomes = dict(zip(tasks, results, strict=True))
        for unit in queued + after:
            outcome = outcomes[unit]
            assert isinstance(outcome, DatabaseUnavailableError), f"{where}: {unit} {outcome!r}"
            assert outcome.reason == SHUTTING_DOWN
        cancelled = [unit for unit in admitted if unit not in ending]
        for unit in admitted:
            outcome = outcomes[unit]
            if unit in cancelled:
                assert isinstance(outcome, asyncio.CancelledError), f"{where}: {unit} {outcome!r}"
            elif unit.fails:
                assert isinstance(outcome, LookupError), f"{where}: {unit} {outcome!r}"
            else:
                assert outcome is None, f"{where}: {unit} {outcome!r}"
        if cancelled:
            assert drain_timeout <= took <= drain_timeout + ROLLBACK_GRACE + SLACK, where
        else:
            assert took < DRAIN_TIMEOUT, where
        assert not database.is_started
        assert not database.is_draining

        stored = await stored_bodies(database_url)
        written = {u.body for u in ending if u.kind == "write" and not u.fails}
        assert stored == written, where
        if backend == "postgresql":
            assert await connections_named(database_url, application_name) == [], where


async def test_a_unit_that_ignores_its_cancellation_does_not_hold_up_the_disposal(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(url=database_url, drain_timeout=0.2, health_timeout=0.3)
    await database.start()
    await create_tables(database)
    admitted = asyncio.Event()
    let_go = asyncio.Event()

    async def stubborn() -> None:
        async with database.transaction() as session:
            session.add(Note(body="stubborn"))
            await session.flush()
            admitted.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await let_go.wait()  # cleanup that takes its time, then the rollback
                raise

    holder = asyncio.create_task(stubborn())
    await admitted.wait()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fastapi_asyncdb"):
        await database.stop()
    assert 0.5 <= time.monotonic() - started < 0.5 + SLACK
    assert "still hold a connection after their cancellation; closing it" in caplog.text
    let_go.set()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert await stored_bodies(database_url) == set()


async def test_a_second_stop_waits_for_the_first_drain(database_url: str) -> None:
    database = Database(url=database_url, drain_timeout=5)
    await database.start()
    await create_tables(database)
    release = asyncio.Event()
    admitted = asyncio.Event()

    async def hold() -> None:
        async with database.transaction() as session:
            session.add(Note(body="held"))
            admitted.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await admitted.wait()
    first = asyncio.create_task(database.stop())
    second = asyncio.create_task(database.stop())
    await asyncio.sleep(0.05)
    assert not first.done()
    assert not second.done()
    release.set()
    await asyncio.gather(first, second, holder)
    assert not database.is_started
    assert await stored_bodies(database_url) == {"held"}


@pytest.fixture
async def draining_app(database_url: str) -> AsyncIterator[tuple[FastAPI, asyncio.Event]]:
    """An app whose database is draining: one unit of work holds it open until released."""
    database = Database(url=database_url, drain_timeout=10, unavailable_retry_after=3)
    app = FastAPI()
    install(app, database)

    @app.post("/notes", status_code=201)
    async def create(body: str, session: SessionDep) -> dict[str, str]:
        session.add(Note(body=body))
        return {"body": body}

    await database.start()
    await create_tables(database)
    release, admitted = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with database.transaction():
            admitted.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await admitted.wait()
    stopping = asyncio.create_task(database.stop())
    await asyncio.sleep(0)
    try:
        yield app, release
    finally:
        release.set()
        await asyncio.gather(holder, stopping)


async def test_while_draining_readiness_answers_503_and_writes_get_503_shutting_down(
    draining_app: tuple[FastAPI, asyncio.Event],
) -> None:
    app, _release = draining_app
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ready = await client.get("/health/ready")
        write = await client.post("/notes", params={"body": "late"})
    assert (ready.status_code, ready.headers["retry-after"]) == (503, "3")
    assert ready.json()["status"] == "draining"
    assert (write.status_code, write.headers["retry-after"]) == (503, "3")
    assert write.headers["content-type"] == "application/problem+json"
    assert write.json()["detail"] == SHUTTING_DOWN


def test_drain_timeout_comes_from_the_environment_and_cannot_be_negative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_DRAIN_TIMEOUT", "0")
    assert DatabaseSettings().drain_timeout == 0
    monkeypatch.setenv("DB_DRAIN_TIMEOUT", "-1")
    with pytest.raises(ConfigurationError, match="DB_DRAIN_TIMEOUT"):
        DatabaseSettings()
