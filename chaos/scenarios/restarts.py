"""The database goes away and comes back: restarts, terminated sessions, a stopped server.

Each runs the bank load while the fault happens, then checks the bank invariants; the
outage scenario also checks what the service answered while the database was down and
how soon it answered 2xx again.
"""

from __future__ import annotations

import asyncio

from chaos import faults
from chaos.bank import LoadWindow, run_load
from chaos.faults import FaultStep
from chaos.harness import ConnectionSampler, Harness, ScenarioResult
from chaos.scenarios.common import RECOVERY_TAIL_S, Options, is_failure, run_bank_with_faults
from chaos.service import DATABASE_NAME

# From the database's return to the service's first 2xx.
OUTAGE_RECOVERY_LIMIT_S = 2.0


async def restart(db: str, options: Options) -> ScenarioResult:
    """Bank load while PostgreSQL is restarted (fast) and stopped at once (immediate) for a
    few seconds; on MariaDB, whose server the harness does not control, the proxy cuts every
    connection four times instead."""
    duration = options.duration_s
    async with Harness("restart", db, options.work_dir, progress=options.progress) as harness:
        if db == "postgresql":
            outage = options.outage_s(5, 1)
            steps = [
                FaultStep(0.2 * duration, "restart", faults.pg_restart_fast),
                FaultStep(0.45 * duration, f"stop-immediate-{outage:g}s", faults.stop_for(outage)),
            ]
            if not options.short:  # a restart takes 2.5 s: the CI suite does one, not two
                steps.append(FaultStep(0.75 * duration, "restart", faults.pg_restart_fast))
        else:
            assert harness.proxy is not None
            steps = [
                FaultStep(duration * share, "proxy-cut-all", faults.proxy_cut(harness.proxy))
                for share in (0.2, 0.4, 0.6, 0.8)
            ]
        await run_bank_with_faults(harness, duration, steps)
        await harness.settle()
        await harness.check(harness.settings.deadline_s)
        return harness.result


async def terminate(db: str, options: Options) -> ScenarioResult:
    """``pg_terminate_backend`` on every connection of the service, every 2 s."""
    duration = options.duration_s
    async with Harness("terminate", db, options.work_dir, progress=options.progress) as harness:
        sampler = ConnectionSampler()
        sampler.start()
        step = FaultStep(
            2.0,
            "terminate-backends",
            faults.terminate_backends(DATABASE_NAME),
            repeat_every_s=2.0,
            repeat_until_s=max(2.0, duration - 2.0),
        )
        await run_bank_with_faults(harness, duration, [step])
        await harness.settle()
        await sampler.stop()
        if sampler.peak_connections > harness.settings.max_connections:
            harness.result.violations.append(
                f"peak server connections {sampler.peak_connections} > "
                f"{harness.settings.max_connections} configured"
            )
        harness.result.notes.append(f"peak server connections {sampler.peak_connections}")
        await harness.check(harness.settings.deadline_s)
        return harness.result


async def outage(db: str, options: Options) -> ScenarioResult:
    """The database stopped for a while: every answer meanwhile a 503 with Retry-After within
    the deadline, and a 2xx again soon after it is back."""
    down_for = options.outage_s(30, 4)
    async with Harness("outage", db, options.work_dir, progress=options.progress) as harness:
        log = harness.log
        duration = down_for + options.outage_s(12, 4)
        # Not final until the database is back: a slow start must not end the load
        # before there is a recovery to see.
        window = LoadWindow(log.now() + duration, final=False)
        load = asyncio.create_task(run_load(harness.bank, duration, window=window))
        await asyncio.sleep(options.outage_s(3, 1.5))
        await faults.pg_stop_immediate()
        down_at = log.now()
        options.progress(f"  postgres stopped at t={down_at:.1f}s for {down_for:g}s")
        try:
            await asyncio.sleep(down_for)
        finally:
            starting_at = log.now()
            try:
                await faults.pg_start()
            finally:
                window.stop_at = max(window.stop_at, log.now() + RECOVERY_TAIL_S)
                window.final = True
        up_at = log.now()
        options.progress(f"  postgres back at t={up_at:.1f}s")
        await load
        await harness.settle()
        during = [a for a in log.attempts if a.started >= down_at and a.ended <= starting_at]
        not_503 = [
            f"{a.op} status={a.status} err={a.error} at t={a.started:.1f}s"
            for a in during
            if a.status != 503 or a.retry_after is None
        ]
        harness.result.add_violations(
            "during the outage: answer other than 503+Retry-After", not_503
        )
        _check_recovery(harness, up_at)
        harness.result.notes.append(f"{len(during)} requests answered during the outage")
        await harness.check(harness.settings.deadline_s, strict_500=True)
        return harness.result


def _check_recovery(harness: Harness, up_at: float) -> None:
    """A 2xx within the limit of the database's return, and no failure after that one."""
    log = harness.log
    recovery = harness.recovery_after(up_at + log.epoch)
    harness.result.recoveries.append(("database back", recovery))
    if recovery is None or recovery > OUTAGE_RECOVERY_LIMIT_S:
        harness.result.violations.append(
            f"first 2xx {recovery}s after the database returned (> {OUTAGE_RECOVERY_LIMIT_S:g} s)"
        )
        return
    first_ok = up_at + recovery
    after = [
        f"{a.op} status={a.status} err={a.error} at t={a.started:.1f}s"
        for a in log.attempts
        if a.started >= first_ok and is_failure(a)
    ]
    harness.result.add_violations("failure after recovery", after)
