"""What the scenarios share: their options, a bank run with faults on a schedule, a row lock
held from outside the service, and reads of the service's and the database's state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from chaos.bank import Attempt, LoadWindow, Operation, run_load
from chaos.checker import read_snapshot
from chaos.faults import PG_ADMIN_DSN, FaultSchedule, FaultStep
from chaos.harness import Harness, ScenarioResult, ServiceSettings
from chaos.service import DATABASE_NAME

Progress = Callable[[str], None]
# Load kept running after the last fault so that its recovery is observed.
RECOVERY_TAIL_S = 3.0
# The service's own database, for the harness's side connections (row locks).
CHAOS_DSN = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{DATABASE_NAME}"


@dataclass(frozen=True)
class Options:
    duration_s: float
    short: bool
    work_dir: Path
    progress: Progress

    def outage_s(self, full: float, short: float) -> float:
        return short if self.short else full


ScenarioFunction = Callable[[str, Options], Awaitable[ScenarioResult]]


async def run_bank_with_faults(
    harness: Harness, duration_s: float, steps: list[FaultStep]
) -> FaultSchedule:
    schedule = FaultSchedule(steps)
    log = harness.log
    window = LoadWindow(log.now() + duration_s, final=False)

    async def faults_then_tail() -> None:
        try:
            await schedule.run(harness.progress)
        finally:
            window.stop_at = max(window.stop_at, log.now() + RECOVERY_TAIL_S)
            window.final = True

    await asyncio.gather(run_load(harness.bank, duration_s, window=window), faults_then_tail())
    harness.result.notes.extend(f"injection error: {e}" for e in schedule.errors)
    harness.record_recoveries(schedule.events)
    return schedule


def is_failure(attempt: Attempt) -> bool:
    return attempt.status is None or attempt.status >= 500


@asynccontextmanager
async def row_locked(account: int) -> AsyncIterator[None]:
    """Holds ``SELECT ... FOR UPDATE`` on one account from a connection of the harness's own,
    so that the service's transfers touching it block on the server until the block ends."""
    locker = await asyncpg.connect(CHAOS_DSN, timeout=5)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account)
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await locker.close()


# How long past the statement timeout a blocked request may take to be answered.
TIMEOUT_SLACK_S = 1.0


async def transfers_blocked_past_the_statement_timeout(
    harness: Harness, settings: ServiceSettings, *, hold: float, clients: int
) -> None:
    """Transfers blocked on a row lock held for ``hold`` seconds, past the statement
    timeout, must each end at the timeout: a violation for any that ends later or
    succeeds."""
    log = harness.log
    account = min(log.accounts)
    async with row_locked(account):
        started = time.monotonic()
        blocked: list[Operation] = await asyncio.gather(
            *(
                harness.bank.call_abandoning(
                    "transfer", "POST", "/transfers", hold, blocked_transfer(account, other)
                )
                for other in sorted(log.accounts)[1 : clients + 1]
            )
        )
        await asyncio.sleep(max(0.0, hold - (time.monotonic() - started)))
    limit = settings.statement_timeout + TIMEOUT_SLACK_S
    late = [
        f"status={op.status} after {op.ended - op.started:.2f}s"
        for op in blocked
        if op.ended - op.started > limit or op.outcome == "ok"
    ]
    harness.result.add_violations(f"blocked query not ended within {limit:g}s", late)
    harness.result.notes.append(
        "blocked transfers: "
        + ", ".join(f"{op.status}@{op.ended - op.started:.2f}s" for op in blocked)
    )


def blocked_transfer(account: int, other: int) -> dict[str, Any]:
    return {"from_account": account, "to_account": other, "amount": 1}


async def pool_status(base_url: str) -> dict[str, dict[str, Any]]:
    """The service's pools as ``/health/ready`` reports them; empty if it does not answer."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        try:
            pools = (await http.get("/health/ready")).json().get("pools", {})
        except (httpx.HTTPError, ValueError, AttributeError):
            return {}
    return pools if isinstance(pools, dict) else {}


async def committed_transfer_keys(harness: Harness) -> set[str]:
    snapshot = await read_snapshot(harness.target.url())
    return {row.key for row in snapshot.transfers}
