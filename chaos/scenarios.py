"""RELIABILITY.md scenarios 1-4 and 14 (bank runs under faults). 5-9 are in scenarios_extra."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chaos import faults
from chaos.bank import Attempt, LoadWindow, probe_liveness, run_load
from chaos.faults import FaultSchedule, FaultStep
from chaos.harness import ConnectionSampler, Harness, ScenarioResult, ServiceSettings
from chaos.proxy import ProxyMode

Progress = Callable[[str], None]
# Load kept running after the last fault so that its recovery is observed.
RECOVERY_TAIL_S = 3.0


@dataclass(frozen=True)
class Options:
    duration_s: float
    short: bool
    work_dir: Path
    progress: Progress

    def outage_s(self, full: float, short: float) -> float:
        return short if self.short else full


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


def _is_failure(attempt: Attempt) -> bool:
    return attempt.status is None or attempt.status >= 500


async def scenario_1(db: str, options: Options) -> ScenarioResult:
    """Bank test; PostgreSQL restarted twice (fast) and stopped once (immediate).
    MariaDB: the same bank test with every proxied connection cut four times."""
    duration = options.duration_s
    async with Harness("s1", db, options.work_dir, progress=options.progress) as harness:
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


async def scenario_2(db: str, options: Options) -> ScenarioResult:
    """pg_terminate_backend on all of the service's connections every 2 s."""
    duration = options.duration_s
    async with Harness("s2", db, options.work_dir, progress=options.progress) as harness:
        sampler = ConnectionSampler()
        sampler.start()
        step = FaultStep(
            2.0,
            "terminate-backends",
            faults.terminate_backends("chaos"),
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


async def scenario_3(db: str, options: Options) -> ScenarioResult:
    """Database stopped for 30 s: 503 + Retry-After within the deadline, fast recovery."""
    outage = options.outage_s(30, 4)
    async with Harness("s3", db, options.work_dir, progress=options.progress) as harness:
        log = harness.log
        duration = outage + options.outage_s(12, 4)
        # Not final until the database is back: a slow start must not end the load
        # before there is a recovery to see.
        window = LoadWindow(log.now() + duration, final=False)
        load = asyncio.create_task(run_load(harness.bank, duration, window=window))
        await asyncio.sleep(options.outage_s(3, 1.5))
        await faults.pg_stop_immediate()
        down_at = log.now()
        options.progress(f"  postgres stopped at t={down_at:.1f}s for {outage:g}s")
        try:
            await asyncio.sleep(outage)
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
        recovery = harness.recovery_after(up_at + log.epoch)
        harness.result.recoveries.append(("database back", recovery))
        if recovery is None or recovery > 2.0:
            harness.result.violations.append(
                f"first 2xx {recovery}s after the database returned (> 2 s)"
            )
        else:
            first_ok = up_at + recovery
            after = [
                f"{a.op} status={a.status} err={a.error} at t={a.started:.1f}s"
                for a in log.attempts
                if a.started >= first_ok and _is_failure(a)
            ]
            harness.result.add_violations("failure after recovery", after)
        harness.result.notes.append(f"{len(during)} requests answered during the outage")
        await harness.check(harness.settings.deadline_s, strict_500=True)
        return harness.result


async def scenario_4(db: str, options: Options) -> ScenarioResult:
    """Database blackholed by the proxy: bounded request time, event loop keeps serving,
    recovery < 5 s."""
    return await _hung_database(db, options, freeze=False)


async def scenario_4_freeze(db: str, options: Options) -> ScenarioResult:
    """Scenario 4 with the hang made by SIGSTOP of the postmaster and all backends instead."""
    return await _hung_database(db, options, freeze=True)


async def _hung_database(db: str, options: Options, freeze: bool) -> ScenarioResult:
    # Longer than the 5 s command timeout even in the CI suite: that path must run.
    blackhole = options.outage_s(30, 6)
    settings = ServiceSettings()
    limit = settings.command_timeout + settings.connect_timeout + 2.0
    name = "s4f" if freeze else "s4"
    async with Harness(name, db, options.work_dir, settings, progress=options.progress) as harness:
        assert harness.proxy is not None
        stop_probe = asyncio.Event()
        probe = asyncio.create_task(probe_liveness(harness.bank, stop_probe))
        if freeze:
            step = FaultStep(3.0, f"sigstop-{blackhole:g}s", faults.freeze_for(blackhole))
        else:
            step = FaultStep(
                2.0,
                f"blackhole-{blackhole:g}s",
                faults.proxy_mode_for(harness.proxy, ProxyMode.BLACKHOLE, blackhole),
            )
        schedule = await run_bank_with_faults(
            harness, blackhole + 3 + options.outage_s(12, 4), [step]
        )
        stop_probe.set()
        await probe
        await harness.settle()
        live = [a for a in harness.log.attempts if a.op == "live"]
        slow_live = [
            f"{a.latency:.2f}s status={a.status} at t={a.started:.1f}s"
            for a in live
            if a.status != 200 or a.latency > 1.0
        ]
        harness.result.add_violations("/health/live slow (>1 s) or failing", slow_live)
        harness.result.notes.append(
            f"{len(live)} liveness probes, slowest {max((a.latency for a in live), default=0):.3f}s"
        )
        for event in schedule.events:
            recovery = harness.recovery_after(event.ended)
            if recovery is None or recovery > 5.0:
                harness.result.violations.append(f"recovery after {event.name} {recovery}s (> 5 s)")
        # The database is unavailable: the contract's answer is a 503, not a 500.
        await harness.check(limit, strict_500=True)
        return harness.result


async def scenario_14(db: str, options: Options) -> ScenarioResult:
    """SQLite bank test, 16 writers: 'database is locked' must become a retry or a 503."""
    async with Harness(
        "s14", db, options.work_dir, load={"clients": 16}, progress=options.progress
    ) as harness:
        started = time.monotonic()
        await run_load(harness.bank, options.duration_s)
        options.progress(f"  load done in {time.monotonic() - started:.1f}s")
        await harness.settle()
        await harness.check(harness.settings.deadline_s, strict_500=True)
        return harness.result
