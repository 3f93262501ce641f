"""The server-side timeouts: a statement blocked on a row lock far past the statement
timeout, then sessions left idle in a transaction because the service's next statement
never reaches the server (the proxy holds what the service sends).

A blocked transfer must end in an error within statement timeout + 1 s; no session may
stay idle in transaction longer than its timeout + 1 s; the pool is healthy afterwards.
"""

from __future__ import annotations

import asyncio

from chaos.bank import run_load
from chaos.harness import ConnectionSampler, Harness, ScenarioResult, ServiceSettings
from chaos.proxy import ProxyMode
from chaos.scenarios.common import (
    TIMEOUT_SLACK_S,
    Options,
    transfers_blocked_past_the_statement_timeout,
)

# Server-side timeouts shorter than the service's defaults, so the scenario stays short.
SHORT_TIMEOUT_S = 2.0
# Transfers left blocked on a row lock past the statement timeout.
BLOCKED_CLIENTS = 8


async def timeouts(db: str, options: Options) -> ScenarioResult:
    """A query blocked far beyond the statement timeout; sessions stuck idle in transaction."""
    settings = ServiceSettings(
        statement_timeout=SHORT_TIMEOUT_S, idle_in_transaction_timeout=SHORT_TIMEOUT_S
    )
    async with Harness(
        "timeouts", db, options.work_dir, settings, progress=options.progress
    ) as harness:
        await transfers_blocked_past_the_statement_timeout(
            harness,
            settings,
            hold=options.outage_s(60, settings.statement_timeout + 1.5),
            clients=BLOCKED_CLIENTS,
        )
        await _idle_in_transaction_timeout(harness, settings, options)
        await harness.check(settings.hung_deadline_s)
        return harness.result


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
