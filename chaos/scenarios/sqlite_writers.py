"""SQLite under sixteen concurrent writers: the bank invariants hold, and "database is
locked" reaches no client as anything but a retry or a 503."""

from __future__ import annotations

import time

from chaos.bank import run_load
from chaos.harness import Harness, ScenarioResult
from chaos.scenarios.common import Options

WRITERS = 16


async def sqlite_writers(db: str, options: Options) -> ScenarioResult:
    """The bank load with sixteen clients on one SQLite file."""
    async with Harness(
        "sqlite-writers",
        db,
        options.work_dir,
        load={"clients": WRITERS},
        progress=options.progress,
    ) as harness:
        started = time.monotonic()
        await run_load(harness.bank, options.duration_s)
        options.progress(f"  load done in {time.monotonic() - started:.1f}s")
        await harness.settle()
        await harness.check(harness.settings.deadline_s, strict_500=True)
        return harness.result
