"""The server-side timeouts: a statement blocked on a row lock far past the statement
timeout, then sessions left idle in a transaction because the service's next statement
never reaches the server (the proxy holds what the service sends).

A blocked transfer must end in an error within statement timeout + 1 s; no session may
stay idle in transaction longer than its timeout + 1 s; the pool is healthy afterwards.
"""

from __future__ import annotations

import asyncio
import time

from chaos.bank import Operation, run_load
from chaos.harness import ConnectionSampler, Harness, ScenarioResult, ServiceSettings
from chaos.proxy import ProxyMode
from chaos.scenarios.common import Options, blocked_transfer, row_locked

# Server-side timeouts shorter than the service's defaults, so the scenario stays short.
SHORT_TIMEOUT_S = 2.0
# What the server may take past a timeout to act on it.
TIMEOUT_SLACK_S = 1.0
BLOCKED_CLIENTS = 8


async def timeouts(db: str, options: Options) -> ScenarioResult:
    """A query blocked far beyond the statement timeout; sessions stuck idle in transaction."""
    settings = ServiceSettings(
        statement_timeout=SHORT_TIMEOUT_S, idle_in_transaction_timeout=SHORT_TIMEOUT_S
    )
    async with Harness(
        "timeouts", db, options.work_dir, settings, progress=options.progress
    ) as harness:
        await _statement_timeout(harness, settings, options)
        await _idle_in_transaction_timeout(harness, settings, options)
        await harness.check(settings.hung_deadline_s)
        return harness.result


async def _statement_timeout(harness: Harness, settings: ServiceSettings, options: Options) -> None:
    log = harness.log
    hold = options.outage_s(60, settings.statement_timeout + 1.5)
    account = min(log.accounts)
    async with row_locked(account):
        started = time.monotonic()
        blocked: list[Operation] = await asyncio.gather(
            *(
                harness.bank.call_abandoning(
                    "transfer", "POST", "/transfers", hold, blocked_transfer(account, other)
                )
                for other in sorted(log.accounts)[1 : BLOCKED_CLIENTS + 1]
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


async def _idle_in_transaction_timeout(
    harness: Harness, settings: ServiceSettings, options: Options
) -> None:
    assert harness.proxy is not None
    sampler = ConnectionSampler(every_s=0.2)
    sampler.start()
    stall_s = settings.idle_in_transaction_timeout + 4
    load = asyncio.create_task(run_load(harness.bank, stall_s + options.outage_s(8, 3)))
    await asyncio.sleep(1)
    harness.proxy.set_mode(ProxyMode.STALL_UPSTREAM)
    await asyncio.sleep(stall_s)
    harness.proxy.set_mode(ProxyMode.PASS)
    await load
    await harness.settle()
    await sampler.stop()
    idle_limit = settings.idle_in_transaction_timeout + TIMEOUT_SLACK_S
    harness.result.notes.append(
        f"longest idle in transaction seen: {sampler.peak_idle_in_transaction_s:.2f}s"
    )
    if sampler.peak_idle_in_transaction_s < 1.0:
        harness.result.warnings.append("no session stayed idle in transaction: not exercised")
    if sampler.peak_idle_in_transaction_s > idle_limit:
        harness.result.violations.append(
            f"session idle in transaction for {sampler.peak_idle_in_transaction_s:.2f}s "
            f"(> {idle_limit:g}s)"
        )
