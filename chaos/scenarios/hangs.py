"""The database hangs without closing anything: packets dropped by the proxy (blackhole),
or every PostgreSQL process stopped by SIGSTOP (freeze).

Nothing tells the service that its connections are dead, so only its timeouts can end
its requests: each must end within the command timeout + connect timeout + 2 s, the
liveness endpoint must keep answering, and a 2xx must come within 5 s of the end.
"""

from __future__ import annotations

import asyncio

from chaos import faults
from chaos.bank import probe_liveness
from chaos.faults import FaultStep
from chaos.harness import Harness, ScenarioResult, ServiceSettings
from chaos.proxy import ProxyMode
from chaos.scenarios.common import Options, run_bank_with_faults

HANG_RECOVERY_LIMIT_S = 5.0
# A liveness probe answers without the database; slower than this means a stalled loop.
LIVENESS_LIMIT_S = 1.0


async def blackhole(db: str, options: Options) -> ScenarioResult:
    """The proxy between service and database drops every packet, established connections
    included, then passes them again."""
    return await _hung_database("blackhole", db, options)


async def freeze(db: str, options: Options) -> ScenarioResult:
    """SIGSTOP of the postmaster and every backend, then SIGCONT: the server's sockets stay
    open and nothing answers, as with a hung host."""
    return await _hung_database("freeze", db, options)


async def _hung_database(name: str, db: str, options: Options) -> ScenarioResult:
    # Longer than the 5 s command timeout even in the CI suite: that path must run.
    hang_s = options.outage_s(30, 6)
    settings = ServiceSettings()
    limit = settings.hung_deadline_s
    async with Harness(name, db, options.work_dir, settings, progress=options.progress) as harness:
        assert harness.proxy is not None
        stop_probe = asyncio.Event()
        probe = asyncio.create_task(probe_liveness(harness.bank, stop_probe))
        if name == "freeze":
            step = FaultStep(3.0, f"sigstop-{hang_s:g}s", faults.freeze_for(hang_s))
        else:
            step = FaultStep(
                2.0,
                f"blackhole-{hang_s:g}s",
                faults.proxy_mode_for(harness.proxy, ProxyMode.BLACKHOLE, hang_s),
            )
        schedule = await run_bank_with_faults(harness, hang_s + 3 + options.outage_s(12, 4), [step])
        stop_probe.set()
        await probe
        await harness.settle()
        live = [a for a in harness.log.attempts if a.op == "live"]
        slow_live = [
            f"{a.latency:.2f}s status={a.status} at t={a.started:.1f}s"
            for a in live
            if a.status != 200 or a.latency > LIVENESS_LIMIT_S
        ]
        harness.result.add_violations(
            f"/health/live slow (>{LIVENESS_LIMIT_S:g} s) or failing", slow_live
        )
        harness.result.notes.append(
            f"{len(live)} liveness probes, slowest {max((a.latency for a in live), default=0):.3f}s"
        )
        for event in schedule.events:
            recovery = harness.recovery_after(event.ended)
            if recovery is None or recovery > HANG_RECOVERY_LIMIT_S:
                harness.result.violations.append(
                    f"recovery after {event.name} {recovery}s (> {HANG_RECOVERY_LIMIT_S:g} s)"
                )
        # The database is unavailable: the contract's answer is a 503, not a 500.
        await harness.check(limit, strict_500=True)
        return harness.result
