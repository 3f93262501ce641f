"""Clients that leave: requests abandoned at random points, streaming ones included, then
requests whose clients leave while their query is blocked on a row lock in the server.

Afterwards nothing may stay checked out or idle in transaction, the service log may hold
no "garbage collector" warning (a connection left for the collector to close), and a
query whose client left must be gone from the server within 1 s.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import httpx

from chaos.bank import Operation, random_transfer_body
from chaos.faults import PG_ADMIN_DSN
from chaos.harness import Harness, ScenarioResult
from chaos.proxy import ProxyMode
from chaos.scenarios.common import Options, blocked_transfer, row_locked
from chaos.service import DATABASE_NAME

ABANDONED_REQUESTS = 1000
ABANDONED_REQUESTS_SHORT = 300
CONCURRENT_CLIENTS = 20
PROXY_LATENCY_MS = 20
# A blocked query whose client has gone must be stopped on the server within this.
CANCELLATION_LIMIT_S = 1.0
BLOCKED_CLIENTS = 8


async def disconnects(db: str, options: Options) -> ScenarioResult:
    """Clients that disconnect at random points; then queries whose clients left while they
    were blocked on the server."""
    total_requests = ABANDONED_REQUESTS_SHORT if options.short else ABANDONED_REQUESTS
    async with Harness("disconnects", db, options.work_dir, progress=options.progress) as harness:
        assert harness.proxy is not None
        bank = harness.bank
        rng = random.Random(6)
        paths = ["/accounts/total", "/accounts?limit=5", *await _streaming_paths(harness.base_url)]
        harness.result.notes.append(f"GET paths used: {paths}")
        harness.proxy.set_mode(ProxyMode.LATENCY, latency_ms=PROXY_LATENCY_MS)
        gate = asyncio.Semaphore(CONCURRENT_CLIENTS)

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


async def _streaming_paths(base_url: str) -> list[str]:
    """The service's GET routes that stream their body, found in its OpenAPI document."""
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


async def _blocked_then_abandoned(harness: Harness) -> None:
    account = min(harness.log.accounts)
    others = [a for a in harness.log.accounts if a != account]
    async with row_locked(account):
        await asyncio.gather(
            *(
                harness.bank.call_abandoning(
                    "transfer", "POST", "/transfers", 0.5, blocked_transfer(account, other)
                )
                for other in others[:BLOCKED_CLIENTS]
            )
        )
        await asyncio.sleep(CANCELLATION_LIMIT_S)
        still = await _locked_requests_still_running()
        if still:
            harness.result.violations.append(
                f"{still} queries still running on the server {CANCELLATION_LIMIT_S:g} s "
                "after their clients left"
            )
        # How long they really go on (the lock is still held, so only a cancellation or
        # statement_timeout can end them).
        waited = CANCELLATION_LIMIT_S
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
