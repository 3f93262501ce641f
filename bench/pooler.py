"""What PgBouncer costs: the library's units of work direct and through PgBouncer.

``python -m bench.pooler`` (``--duration 5 --rounds 3 --tasks 16``). In one process, no
HTTP: each workload runs ``--tasks`` concurrent tasks for ``--duration`` seconds on a
``Database`` connected

- ``direct``: to PostgreSQL, ``DB_PGBOUNCER=off``;
- ``session``: through PgBouncer in session mode, ``DB_PGBOUNCER=session``;
- ``transaction``: through PgBouncer in transaction mode, ``DB_PGBOUNCER=transaction``;
- ``transaction, no limits``: the same with the statement and idle-in-transaction
  timeouts off, so that nothing rides in ``BEGIN``: the difference is what ``SET
  LOCAL`` costs.

Workloads: ``prepared`` (one row by primary key with ``Prepared`` on
``read_connection``), ``read_session`` (the same ``select`` in ``read_session``),
``transaction`` (a read and an update of one row in ``transaction()``) and
``run_statement`` (one update). Reported per cell, medians over rounds alternated
A B C D, A B C D: operations per second, p50 and p99 latency, and CPU per operation of
this process and of PgBouncer. PgBouncer (one per mode, started here on a free port
of 6400-6499, pool as large as the library's) runs in front of the bench database
(``BENCH_DB``, filled as ``bench.schema`` does). Writes ``results/pooler.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Column, Integer, MetaData, Table, bindparam, select, update

from bench.config import BENCH_DB, PG_HOST, PG_PORT, PG_USER, WORLD_ROWS
from bench.schema import prepare
from fastapi_asyncdb import Database, Prepared
from tests.servers.pgbouncer import PgBouncer, PgBouncerConfig

PORTS = range(6400, 6500)
RESULTS = Path(__file__).parent / "results" / "pooler.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

world = Table(
    "world",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("randomnumber", Integer),
)
BY_ID = Prepared(select(world.c.id, world.c.randomnumber).where(world.c.id == bindparam("id")))
SET_NUMBER = update(world).where(world.c.id == bindparam("key")).values(randomnumber=bindparam("n"))

Operation = Callable[[Database, random.Random], Awaitable[None]]


async def _prepared(database: Database, rng: random.Random) -> None:
    async with database.read_connection() as connection:
        await BY_ID.one(connection, {"id": rng.randint(1, WORLD_ROWS)})


async def _read_session(database: Database, rng: random.Random) -> None:
    async with database.read_session() as session:
        (await session.execute(BY_ID.statement, {"id": rng.randint(1, WORLD_ROWS)})).one()


async def _transaction(database: Database, rng: random.Random) -> None:
    key = rng.randint(1, WORLD_ROWS)
    async with database.transaction() as session:
        (await session.execute(BY_ID.statement, {"id": key})).one()
        await session.execute(SET_NUMBER, {"key": key, "n": rng.randint(1, WORLD_ROWS)})


async def _run_statement(database: Database, rng: random.Random) -> None:
    await database.run_statement(
        SET_NUMBER, {"key": rng.randint(1, WORLD_ROWS), "n": rng.randint(1, WORLD_ROWS)}
    )


WORKLOADS: dict[str, Operation] = {
    "prepared": _prepared,
    "read_session": _read_session,
    "transaction": _transaction,
    "run_statement": _run_statement,
}


@dataclass
class Cell:
    contender: str
    workload: str
    round: int
    operations: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    pgbouncer_cpu_us: float

    @property
    def per_second(self) -> float:
        return self.operations / self.seconds


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe, suppress(OSError):
            probe.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port in 6400-6499")


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def _measure(
    database: Database,
    operation: Operation,
    *,
    tasks: int,
    duration: float,
    pgbouncer_pid: int | None,
) -> tuple[int, int, float, list[float], float, float]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + duration

    async def worker(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                await operation(database, rng)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    cpu, bouncer_cpu, started = time.process_time(), _cpu_seconds(pgbouncer_pid), time.monotonic()
    await asyncio.gather(*(worker(seed) for seed in range(tasks)))
    seconds = time.monotonic() - started
    return (
        len(latencies),
        errors,
        seconds,
        latencies,
        time.process_time() - cpu,
        _cpu_seconds(pgbouncer_pid) - bouncer_cpu,
    )


async def _run(arguments: argparse.Namespace) -> list[Cell]:
    await prepare()
    direct = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{BENCH_DB}"
    bouncers: dict[str, PgBouncer] = {}
    modes: tuple[Literal["session", "transaction"], ...] = ("session", "transaction")
    for mode in modes:
        bouncer = PgBouncer(
            f"bench-pgbouncer-{mode}",
            PgBouncerConfig(
                pool_mode=mode,
                default_pool_size=arguments.tasks + 4,
                target_host=PG_HOST,
                target_port=PG_PORT,
            ),
        )
        bouncer.port = _free_port()
        bouncer.start()
        bouncers[mode] = bouncer
    contenders: dict[str, tuple[dict[str, Any], PgBouncer | None]] = {
        "direct": ({"url": direct}, None),
        "session": (
            {"url": bouncers["session"].url(BENCH_DB), "pgbouncer": "session"},
            bouncers["session"],
        ),
        "transaction": (
            {"url": bouncers["transaction"].url(BENCH_DB), "pgbouncer": "transaction"},
            bouncers["transaction"],
        ),
        "transaction, no limits": (
            {
                "url": bouncers["transaction"].url(BENCH_DB),
                "pgbouncer": "transaction",
                "statement_timeout": None,
                "idle_in_transaction_timeout": None,
            },
            bouncers["transaction"],
        ),
    }
    cells: list[Cell] = []
    try:
        for workload, operation in WORKLOADS.items():
            for round_number in range(arguments.rounds):
                for contender, (settings, in_front) in contenders.items():
                    pool = {"pool_size": arguments.tasks, "max_overflow": 0}
                    async with Database(**settings, **pool) as database:
                        pid = None if in_front is None else in_front.process.pid
                        await _measure(
                            database,
                            operation,
                            tasks=arguments.tasks,
                            duration=0.5,
                            pgbouncer_pid=pid,
                        )  # warm-up: connections made, statements learnt
                        operations, errors, seconds, latencies, cpu, bouncer_cpu = await _measure(
                            database,
                            operation,
                            tasks=arguments.tasks,
                            duration=arguments.duration,
                            pgbouncer_pid=pid,
                        )
                    latencies.sort()
                    cell = Cell(
                        contender,
                        workload,
                        round_number,
                        operations,
                        errors,
                        seconds,
                        statistics.median(latencies) * 1000 if latencies else 0.0,
                        latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
                        cpu / max(operations, 1) * 1e6,
                        bouncer_cpu / max(operations, 1) * 1e6,
                    )
                    cells.append(cell)
                    print(
                        f"{workload:<14} {contender:<24} round {round_number}: "
                        f"{cell.per_second:,.0f} op/s, errors {errors}",
                        flush=True,
                    )
    finally:
        for bouncer in bouncers.values():
            bouncer.remove()
    return cells


def _table(cells: list[Cell]) -> str:
    lines = [
        "| workload | contender | op/s | p50 ms | p99 ms | errors | CPU us/op | "
        "PgBouncer CPU us/op | vs direct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    medians: dict[tuple[str, str], dict[str, float]] = {}
    for key in dict.fromkeys((cell.workload, cell.contender) for cell in cells):
        group = [cell for cell in cells if (cell.workload, cell.contender) == key]
        medians[key] = {
            "per_second": statistics.median(cell.per_second for cell in group),
            "p50": statistics.median(cell.p50_ms for cell in group),
            "p99": statistics.median(cell.p99_ms for cell in group),
            "errors": sum(cell.errors for cell in group),
            "cpu": statistics.median(cell.cpu_us for cell in group),
            "bouncer": statistics.median(cell.pgbouncer_cpu_us for cell in group),
        }
    for (workload, contender), row in medians.items():
        baseline = medians[(workload, "direct")]["per_second"]
        lines.append(
            f"| {workload} | {contender} | {row['per_second']:,.0f} | {row['p50']:.2f} | "
            f"{row['p99']:.2f} | {row['errors']:.0f} | {row['cpu']:,.0f} | "
            f"{row['bouncer']:,.0f} | {row['per_second'] / baseline:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pooler", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=16)
    arguments = parser.parse_args()
    cells = asyncio.run(_run(arguments))
    table = _table(cells)
    print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "arguments": vars(arguments),
                "machine": platform.platform(),
                "loadavg": os.getloadavg(),
                "cells": [asdict(cell) for cell in cells],
                "table": table,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
