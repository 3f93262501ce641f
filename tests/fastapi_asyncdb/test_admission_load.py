"""The gate under real load: many units of work on a real database, cancelled at random points.

Clients run units of work back to back (a unit's last step leaves the gate and the
next one's first step enters it, in one step of the loop, as a job loop does) while
the test cancels clients at random moments: waiting at the gate, inside a statement,
during the commit. On every turn of the loop no slot may be free while someone waits;
afterwards nothing may be in use, waiting or checked out, and a new unit must get in
at once rather than wait out the pool timeout.

Each run draws its own seed; ADMISSION_LOAD_SEED=<seed> replays its choices (the
database's timing is its own).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random

import pytest
from sqlalchemy import select, text

from fastapi_asyncdb import Database

from .models import Note, create_tables

pytestmark = [
    pytest.mark.usefixtures("clean_environment"),
    pytest.mark.backends("sqlite", "postgresql"),
]

# Few clients keep the queue short, so that a cancelled waiter is often the last
# one; many keep it long.
CLIENTS = (2, 3, 4, 24)
CANCELLATIONS_PER_ROUND = 40
# Far longer than any unit of work takes here: a unit that waits this long is stuck.
POOL_TIMEOUT = 5.0


def run_seed() -> int:
    return int(os.environ.get("ADMISSION_LOAD_SEED") or random.randrange(2**32))


async def test_units_of_work_cancelled_at_random_points_leave_nothing_in_use(
    database_url: str,
) -> None:
    seed = run_seed()
    rng = random.Random(seed)
    async with Database(
        url=database_url, pool_size=3, max_overflow=1, pool_timeout=POOL_TIMEOUT
    ) as database:
        await create_tables(database)
        committed: list[str] = []
        units = itertools.count()

        async def write() -> None:
            body = str(next(units))
            async with database.transaction() as session:
                session.add(Note(body=body))
                for _ in range(rng.randrange(3)):
                    await asyncio.sleep(0)
                await session.flush()
            committed.append(body)

        async def read() -> None:
            async with database.read_connection() as connection:
                await connection.execute(text("SELECT 1"))

        async def client(stop: asyncio.Event) -> None:
            while not stop.is_set():
                await (write() if rng.random() < 0.7 else read())

        idle_slots_while_waiting: list[str] = []

        async def watch_pools() -> None:
            # On every turn of the loop: never a free slot while someone waits for one.
            while True:
                for role, status in database.pool_status().items():
                    if status["in_use"] < status["capacity"] and status["waiting"]:
                        idle_slots_while_waiting.append(f"{role}: {status}")
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch_pools())
        cancelled = 0
        for clients in CLIENTS:
            stop = asyncio.Event()
            running = [asyncio.create_task(client(stop)) for _ in range(clients)]
            for _ in range(CANCELLATIONS_PER_ROUND):
                # A random number of turns of the loop: the cancel lands before, between
                # or after the wake-ups that the database's replies schedule.
                for _ in range(rng.randrange(40)):
                    await asyncio.sleep(0)
                victim = rng.randrange(clients)
                cancelled += running[victim].cancel()
                running.append(running[victim])
                running[victim] = asyncio.create_task(client(stop))
            stop.set()
            outcomes = await asyncio.gather(*running, return_exceptions=True)
            unexpected = [o for o in outcomes if not isinstance(o, asyncio.CancelledError | None)]
            assert not unexpected, f"seed {seed}, {clients} clients: {unexpected[:3]}"
            assert not idle_slots_while_waiting, f"seed {seed}: {idle_slots_while_waiting[:3]}"
            for role, status in database.pool_status().items():
                in_use = (status["in_use"], status["waiting"], status["checked_out"])
                assert in_use == (0, 0, 0), f"seed {seed}, {role}: {status}"

        assert cancelled, f"seed {seed}"
        assert not watcher.done()
        watcher.cancel()
        # A fresh unit gets in at once: far sooner than the pool timeout.
        async with asyncio.timeout(POOL_TIMEOUT / 5):
            async with database.transaction() as session:
                session.add(Note(body="after"))
            async with database.read_connection() as connection:
                stored = set((await connection.execute(select(Note.body))).scalars())
        assert set(committed) | {"after"} <= stored, f"seed {seed}"
