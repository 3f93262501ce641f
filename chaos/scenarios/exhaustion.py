"""Pool exhaustion: far more concurrent slow requests than the pool has connections.

The requests that find no connection wait in the library's gate for the acquire timeout
and are then answered 503 with Retry-After; PostgreSQL never sees more connections than
the pools allow, and nothing stays checked out afterwards.
"""

from __future__ import annotations

import asyncio

from chaos.bank import Attempt, raw_burst
from chaos.harness import (
    PROBE_CONNECTIONS,
    ConnectionSampler,
    Harness,
    ScenarioResult,
    ServiceSettings,
)
from chaos.proxy import ProxyMode
from chaos.scenarios.common import Options, pool_status

BURST_REQUESTS = 200
# Each way: every request holds its connection for seconds, while a new connection (about
# three round trips) still fits in the 3 s connect timeout.
PROXY_LATENCY_MS = 300
# A waiter's 503 comes at the acquire timeout, give or take this much scheduling.
REJECTION_SLACK_S = 0.5


async def exhaustion(db: str, options: Options) -> ScenarioResult:
    """A burst of slow reads against a 5+5 pool with a 2 s acquire timeout."""
    settings = ServiceSettings(pool_size=5, max_overflow=5, pool_timeout=2.0)
    async with Harness(
        "exhaustion", db, options.work_dir, settings, progress=options.progress
    ) as harness:
        assert harness.proxy is not None
        # So that the read pool holds its connections before the latency starts.
        await asyncio.gather(*(harness.bank.http.get("/accounts/total") for _ in range(20)))
        # The burst only reads: the primary pool keeps what it holds now, and the health
        # probe (asked just now) its one connection.
        primary = (await pool_status(harness.base_url)).get("primary", {})
        baseline = (
            int(primary.get("checked_out", 0)) + int(primary.get("idle", 0)) + PROBE_CONNECTIONS
        )
        sampler = ConnectionSampler(every_s=0.1)
        sampler.start()
        harness.proxy.set_mode(ProxyMode.LATENCY, latency_ms=PROXY_LATENCY_MS)
        started = harness.log.now()
        burst = await raw_burst(
            "127.0.0.1", harness.service_port, "/accounts/total", BURST_REQUESTS
        )
        harness.proxy.set_mode(ProxyMode.PASS)
        for answer in burst:
            harness.log.attempts.append(
                Attempt(
                    "burst",
                    "-",
                    started,
                    started + answer.latency,
                    answer.status,
                    None if answer.status else "no answer",
                    "?" if answer.retry_after else None,
                    answer.status == 503,
                )
            )
        await harness.settle()
        await sampler.stop()
        earliest = settings.pool_timeout
        latest = settings.pool_timeout + REJECTION_SLACK_S
        rejected = sorted(a.latency for a in burst if a.status == 503)
        outside = [
            f"503 after {latency:.2f}s" for latency in rejected if not earliest <= latency <= latest
        ]
        others = [f"status {a.status}" for a in burst if a.status not in {200, 503}]
        no_hint = [
            f"503 after {a.latency:.2f}s" for a in burst if a.status == 503 and not a.retry_after
        ]
        harness.result.add_violations(f"waiter's 503 outside {earliest}-{latest} s", outside)
        harness.result.add_violations("burst answer neither 200 nor 503", others)
        harness.result.add_violations("503 without Retry-After", no_hint)
        limit = settings.pool_size + settings.max_overflow + baseline
        if sampler.peak_connections > limit:
            harness.result.violations.append(
                f"peak server connections {sampler.peak_connections} > {limit} "
                f"(read pool {settings.pool_size}+{settings.max_overflow} and "
                f"{baseline} primary and probe connections)"
            )
        harness.result.notes.append(
            f"burst: {sum(a.status == 200 for a in burst)} ok, {len(rejected)} x 503 "
            f"(latency {rejected[0] if rejected else 0:.2f}-"
            f"{rejected[-1] if rejected else 0:.2f}s), peak server connections "
            f"{sampler.peak_connections}"
        )
        await harness.check(None)
        return harness.result
