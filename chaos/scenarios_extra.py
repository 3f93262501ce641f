"""RELIABILITY.md scenarios 5-9: pool exhaustion, client disconnects, failed commits, the
deliberately broken service, and server-side timeouts."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import asyncpg
import httpx

from chaos.bank import Attempt, Operation, random_transfer_body, raw_burst, run_load
from chaos.faults import PG_ADMIN_DSN
from chaos.harness import ConnectionSampler, Harness, ScenarioResult, ServiceSettings
from chaos.proxy import ProxyMode
from chaos.scenarios import Options
from chaos.service import DATABASE_NAME

CHAOS_DSN = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{DATABASE_NAME}"


async def scenario_5(db: str, options: Options) -> ScenarioResult:
    """200 concurrent slow requests against a 5+5 pool with a 2 s acquire timeout."""
    settings = ServiceSettings(pool_size=5, max_overflow=5, pool_timeout=2.0)
    async with Harness("s5", db, options.work_dir, settings, progress=options.progress) as harness:
        assert harness.proxy is not None
        # So that the read pool holds its connections before the latency starts.
        await asyncio.gather(*(harness.bank.http.get("/accounts/total") for _ in range(20)))
        before = await _pool_status(harness.base_url)
        baseline = sum(
            int(pool.get("checked_out", 0)) + int(pool.get("idle", 0))
            for name, pool in before.items()
            if name != "read"
        )
        sampler = ConnectionSampler(every_s=0.1)
        sampler.start()
        # 300 ms each way makes every request hold its connection for seconds, while a new
        # connection (about three round trips) still fits in the 3 s connect timeout.
        harness.proxy.set_mode(ProxyMode.LATENCY, latency_ms=300)
        started = harness.log.now()
        burst = await raw_burst("127.0.0.1", harness.service_port, "/accounts/total", 200)
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
        rejected = sorted(a.latency for a in burst if a.status == 503)
        outside = [f"503 after {latency:.2f}s" for latency in rejected if not 2.0 <= latency <= 2.5]
        others = [f"status {a.status}" for a in burst if a.status not in {200, 503}]
        no_hint = [
            f"503 after {a.latency:.2f}s" for a in burst if a.status == 503 and not a.retry_after
        ]
        harness.result.add_violations("waiter's 503 outside 2.0-2.5 s", outside)
        harness.result.add_violations("burst answer neither 200 nor 503", others)
        harness.result.add_violations("503 without Retry-After", no_hint)
        # The burst only reads: the read pool (5+5) plus what the primary pool already held.
        limit = settings.pool_size + settings.max_overflow + baseline
        if sampler.peak_connections > limit:
            harness.result.violations.append(
                f"peak server connections {sampler.peak_connections} > {limit} "
                f"(read pool 5+5 and {baseline} primary connections)"
            )
        harness.result.notes.append(
            f"burst: {sum(a.status == 200 for a in burst)} ok, {len(rejected)} x 503 "
            f"(latency {rejected[0] if rejected else 0:.2f}-"
            f"{rejected[-1] if rejected else 0:.2f}s), peak server connections "
            f"{sampler.peak_connections}"
        )
        await harness.check(None)
        return harness.result


async def _pool_status(base_url: str) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        try:
            pools = (await http.get("/health/ready")).json().get("pools", {})
        except (httpx.HTTPError, ValueError, AttributeError):
            return {}
    return pools if isinstance(pools, dict) else {}


async def _streaming_paths(base_url: str) -> list[str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        try:
            spec: dict[str, Any] = (await http.get("/openapi.json")).json()
        except (httpx.HTTPError, ValueError):
            return []
    return [
        path
        for path, methods in spec.get("paths", {}).items()
        if "get" in methods
        and "{" not in path
        and any(word in path for word in ("export", "stream", "ndjson", "csv"))
    ]


async def _locked_requests_still_running() -> int:
    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        value = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' "
            "AND wait_event_type = 'Lock'",
            DATABASE_NAME,
        )
    finally:
        await connection.close()
    return int(value)


async def scenario_6(db: str, options: Options) -> ScenarioResult:
    """Clients that disconnect at random points; then queries whose clients left while they
    were blocked on the server."""
    total_requests = 300 if options.short else 1000
    async with Harness("s6", db, options.work_dir, progress=options.progress) as harness:
        assert harness.proxy is not None
        bank = harness.bank
        rng = random.Random(6)
        paths = ["/accounts/total", "/accounts?limit=5", *await _streaming_paths(harness.base_url)]
        harness.result.notes.append(f"GET paths used: {paths}")
        harness.proxy.set_mode(ProxyMode.LATENCY, latency_ms=20)
        gate = asyncio.Semaphore(20)

        async def one(index: int) -> Operation:
            async with gate:
                abort_after = rng.uniform(0.0, 1.0)
                if index % 2 == 0:
                    body = random_transfer_body(bank, rng)
                    return await bank.call_abandoning(
                        "transfer", "POST", "/transfers", abort_after, body
                    )
                return await bank.call_abandoning("total", "GET", rng.choice(paths), abort_after)

        await asyncio.gather(*(one(i) for i in range(total_requests)))
        harness.proxy.set_mode(ProxyMode.PASS)
        options.progress(f"  {total_requests} abandoning requests sent")
        # Operations on other GET paths are not totals; keep the total check honest.
        for op in bank.log.operations:
            if op.op == "total" and op.response is not None and "total" not in op.response:
                op.op = "read"
        if db == "postgresql":
            await _blocked_then_abandoned(harness)
        await harness.settle()
        await harness.check(harness.settings.deadline_s)
        return harness.result


async def _blocked_then_abandoned(harness: Harness) -> None:
    locker = await asyncpg.connect(CHAOS_DSN, timeout=5)
    account = min(harness.log.accounts)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account)
        others = [a for a in harness.log.accounts if a != account]
        await asyncio.gather(
            *(
                harness.bank.call_abandoning(
                    "transfer",
                    "POST",
                    "/transfers",
                    0.5,
                    {"from_account": account, "to_account": other, "amount": 1},
                )
                for other in others[:8]
            )
        )
        await asyncio.sleep(1.0)
        still = await _locked_requests_still_running()
        if still:
            harness.result.violations.append(
                f"{still} queries still running on the server 1 s after their clients left"
            )
        # How long they really go on (the lock is still held, so only a cancellation or
        # statement_timeout can end them).
        waited = 1.0
        for _ in range(40):
            if not still:
                break
            await asyncio.sleep(0.25)
            waited += 0.25
            still = await _locked_requests_still_running()
        harness.result.notes.append(
            f"abandoned blocked queries gone from the server after {waited:.2f}s"
            + (f" ({still} still running)" if still else "")
        )
        await transaction.rollback()
    finally:
        await locker.close()


async def scenario_7(db: str, options: Options) -> ScenarioResult:
    """Every third COMMIT is dropped and its connection cut: no 2xx for those, no row."""
    duration = options.duration_s
    load = {"clients": 16, "max_attempts": 1, "total_read_share": 0.1}
    async with Harness("s7", db, options.work_dir, load=load, progress=options.progress) as harness:
        assert harness.proxy is not None
        harness.proxy.set_mode(ProxyMode.CUT_ON_COMMIT, commit_cut_every=3)
        await run_load(harness.bank, duration)
        harness.proxy.set_mode(ProxyMode.PASS)
        dropped = harness.proxy.stats.commits_dropped
        harness.result.notes.append(f"{dropped} COMMITs dropped by the proxy")
        if dropped == 0:
            harness.result.violations.append("no COMMIT was dropped: the fault was not injected")
        await harness.settle()
        await harness.check(harness.settings.deadline_s)
        rows = await _transfer_keys(harness)
        committed_but_failed = [
            f"key={op.key[:12]} status={op.status}"
            for op in harness.log.operations
            if op.op == "transfer" and op.outcome == "unknown" and op.key in rows
        ]
        harness.result.add_violations(
            "request answered as failed but its row is committed", committed_but_failed
        )
        return harness.result


async def _transfer_keys(harness: Harness) -> set[str]:
    from chaos.checker import read_snapshot

    snapshot = await read_snapshot(harness.target.url())
    return {row.key for row in snapshot.transfers}


async def scenario_8(db: str, options: Options) -> ScenarioResult:
    """The deliberately broken service (read-modify-write in Python) must fail the checker."""
    async with Harness(
        "s8",
        db,
        options.work_dir,
        use_proxy=False,
        module="chaos.broken",
        progress=options.progress,
    ) as harness:
        harness.result.expect_violations = True
        await run_load(harness.bank, options.duration_s)
        await harness.settle()
        await harness.check(harness.settings.deadline_s, server_state=False)
        return harness.result


async def scenario_9(db: str, options: Options) -> ScenarioResult:
    """A query blocked far beyond the statement timeout; sessions stuck idle in transaction."""
    settings = ServiceSettings(statement_timeout=2.0, idle_in_transaction_timeout=2.0)
    hold = options.outage_s(60, settings.statement_timeout + 1.5)
    async with Harness("s9", db, options.work_dir, settings, progress=options.progress) as harness:
        assert harness.proxy is not None
        log = harness.log
        locker = await asyncpg.connect(CHAOS_DSN, timeout=5)
        account = min(log.accounts)
        try:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account)
            started = time.monotonic()
            blocked = await asyncio.gather(
                *(
                    harness.bank.call_abandoning(
                        "transfer",
                        "POST",
                        "/transfers",
                        hold,
                        {"from_account": account, "to_account": other, "amount": 1},
                    )
                    for other in sorted(log.accounts)[1:9]
                )
            )
            await asyncio.sleep(max(0.0, hold - (time.monotonic() - started)))
            await transaction.rollback()
        finally:
            await locker.close()
        limit = settings.statement_timeout + 1
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
        sampler = ConnectionSampler(every_s=0.2)
        sampler.start()
        blackhole = settings.idle_in_transaction_timeout + 4
        load = asyncio.create_task(run_load(harness.bank, blackhole + options.outage_s(8, 3)))
        await asyncio.sleep(1)
        harness.proxy.set_mode(ProxyMode.STALL_UPSTREAM)
        await asyncio.sleep(blackhole)
        harness.proxy.set_mode(ProxyMode.PASS)
        await load
        await harness.settle()
        await sampler.stop()
        idle_limit = settings.idle_in_transaction_timeout + 1
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
        await harness.check(settings.command_timeout + settings.connect_timeout + 2)
        return harness.result
