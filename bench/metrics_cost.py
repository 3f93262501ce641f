"""What the metrics cost per unit of work: metered and unmetered side by side, in one process.

Two ``Database`` objects on the same PostgreSQL database, identical but for
``metrics`` (``DB_METRICS``): one counts, the other does not. Blocks of units of work
alternate between them (metered first in even rounds, unmetered first in odd ones), so
a machine that gets busier or quieter during the run weighs on both alike. Two kinds
of unit: a ``Prepared`` primary-key read on ``read_connection()`` (the fast path) and a
write unit (``transaction()`` with one ``UPDATE``). CPU is ``time.process_time()``:
waiting on PostgreSQL is not counted. Then the hooks alone, without a database: what a
read unit's hooks do (a gate admission and a unit duration observed, two clock reads),
timed in a loop, and the calls metrics add to a read unit, counted with ``sys.setprofile``.

Run: BENCH_DB=metrics_bench .venv/bin/python -m bench.metrics_cost [--rounds 15] [--control]
(``--control``: metrics off on both sides, to see the noise of the machine.)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import timeit
from collections import Counter
from collections.abc import Awaitable, Callable
from types import FrameType

from sqlalchemy import bindparam, select, update

from bench.apps.models import World
from bench.config import BENCH_DB, SQLALCHEMY_URL, WORLD_ROWS
from bench.schema import prepare
from fastapi_asyncdb import Database, Prepared
from fastapi_asyncdb.metrics import RoleMetrics

WORLD_BY_ID = Prepared(select(World.id, World.randomnumber).where(World.id == bindparam("id")))
Unit = Callable[[], Awaitable[object]]


def _units(database: Database) -> dict[str, Unit]:
    async def prepared_read() -> object:
        async with database.read_connection() as connection:
            return await WORLD_BY_ID.one(connection, {"id": random.randint(1, WORLD_ROWS)})

    async def write_unit() -> object:
        async with database.transaction() as session:
            return await session.execute(
                update(World)
                .where(World.id == random.randint(1, WORLD_ROWS))
                .values(randomnumber=random.randint(1, WORLD_ROWS))
            )

    return {"Prepared read": prepared_read, "write unit (UPDATE)": write_unit}


async def _cpu_per_unit(unit: Unit, count: int) -> float:
    began = time.process_time()
    for _ in range(count):
        await unit()
    return (time.process_time() - began) * 1e6 / count


def _hooks_alone(repeat: int) -> float:
    """Microseconds of what a read unit's hooks do, metrics on."""
    metrics = RoleMetrics("read")
    clock = time.perf_counter

    def hooks() -> None:
        metrics.gate_wait.observe_zero()
        started = clock()
        metrics.unit("read", "ok", clock() - started)

    return min(timeit.repeat(hooks, number=repeat, repeat=5)) * 1e6 / repeat


async def _extra_calls(metered: Unit, unmetered: Unit, units: int = 100) -> dict[str, float]:
    """Python and C calls per unit that metrics add, counted with ``sys.setprofile``."""

    async def calls(unit: Unit) -> Counter[str]:
        counted: Counter[str] = Counter()

        def profile(frame: FrameType, event: str, arg: object) -> None:
            if event == "call":
                counted[frame.f_code.co_qualname] += 1
            elif event == "c_call":
                counted[getattr(arg, "__qualname__", repr(arg))] += 1

        sys.setprofile(profile)
        try:
            for _ in range(units):
                await unit()
        finally:
            sys.setprofile(None)
        return counted

    on, off = await calls(metered), await calls(unmetered)
    # The random row ids make a few calls vary; a hook is called once per unit or more.
    return {
        name: (on[name] - off[name]) / units
        for name in on | off
        if abs(on[name] - off[name]) >= units
    }


async def measure(
    rounds: int, reads: int, writes: int, *, control: bool = False
) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    await prepare()
    async with (
        Database(url=SQLALCHEMY_URL, pool_size=2, max_overflow=0, metrics=not control) as metered,
        Database(url=SQLALCHEMY_URL, pool_size=2, max_overflow=0, metrics=False) as unmetered,
    ):
        contenders = {"metered": _units(metered), "unmetered": _units(unmetered)}
        counts = {"Prepared read": reads, "write unit (UPDATE)": writes}
        for units in contenders.values():  # warm: statement caches, plans, connections
            for name, unit in units.items():
                await _cpu_per_unit(unit, 200 if name == "Prepared read" else 50)
        extra = await _extra_calls(
            contenders["metered"]["Prepared read"], contenders["unmetered"]["Prepared read"]
        )
        results: dict[str, dict[str, list[float]]] = {
            kind: {name: [] for name in contenders} for kind in counts
        }
        for round_number in range(rounds):
            order = list(contenders) if round_number % 2 == 0 else list(reversed(contenders))
            for kind, count in counts.items():
                for name in order:
                    cost = await _cpu_per_unit(contenders[name][kind], count)
                    results[kind][name].append(cost)
        return results, extra


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reads", type=int, default=1000, help="read units per block")
    parser.add_argument("--writes", type=int, default=200, help="write units per block")
    parser.add_argument(
        "--control",
        action="store_true",
        help="metrics off on both sides: the difference this run finds is the noise",
    )
    args = parser.parse_args()
    results, extra = asyncio.run(
        measure(args.rounds, args.reads, args.writes, control=args.control)
    )
    print(
        f"database {BENCH_DB}; {args.rounds} rounds of {args.reads} reads and {args.writes} "
        "writes per contender, interleaved; median us CPU per unit of work (min-max)"
        + ("; CONTROL: metrics off on both sides" if args.control else "")
    )
    print()
    print("| unit of work | metrics off | metrics on | on - off, paired | on / off |")
    print("|---|---|---|---|---|")
    for kind, by_contender in results.items():
        off, on = by_contender["unmetered"], by_contender["metered"]
        off_median, on_median = statistics.median(off), statistics.median(on)
        # Each round's two blocks ran back to back: their difference is freer of the
        # machine's drift than the difference of the medians.
        paired = statistics.median(a - b for a, b in zip(on, off, strict=True))
        print(
            f"| {kind} | {off_median:.1f} ({min(off):.1f}-{max(off):.1f}) "
            f"| {on_median:.1f} ({min(on):.1f}-{max(on):.1f}) "
            f"| {paired:+.1f} | {on_median / off_median:.3f} |"
        )
    print()
    print(f"hooks of one read unit alone, metrics on: {_hooks_alone(200_000):.2f} us")
    added = ", ".join(f"{name} x{count:g}" for name, count in sorted(extra.items()))
    print(f"calls a Prepared read unit adds with metrics on: {added or 'none'}")


if __name__ == "__main__":
    main()
