"""The bank through PgBouncer in transaction mode, served by two worker processes.

PgBouncer (one of the harness's own, on a port of its own, in front of the local
PostgreSQL) is restarted, paused and killed under the bank load; PostgreSQL itself is
left alone. Then transfers blocked on a row lock must end at the statement timeout,
which through transaction pooling only ``SET LOCAL`` (``DB_PGBOUNCER``) keeps in force.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from contextlib import suppress

from chaos.faults import FaultStep
from chaos.harness import ConnectionSampler, Harness, ScenarioResult, ServiceSettings
from chaos.scenarios.common import (
    Options,
    run_bank_with_faults,
    transfers_blocked_past_the_statement_timeout,
)
from chaos.service import DATABASE_NAME
from tests.servers.pgbouncer import PgBouncer, PgBouncerConfig

# PgBouncer's port: the first free one in this range.
PORTS = range(6400, 6500)
# Server connections PgBouncer keeps per database and user: fewer than the 2 x 21
# client connections the two workers may open.
SERVER_CONNECTIONS = 12
# How long a query may wait for a server connection before PgBouncer drops its client.
QUERY_WAIT_TIMEOUT_S = 3.0
BLOCKED_CLIENTS = 4
MODULE = "chaos.pgbouncer_ledger"


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe, suppress(OSError):
            probe.bind(("127.0.0.1", port))
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for PgBouncer")


def _start_pgbouncer() -> PgBouncer:
    bouncer = PgBouncer(
        "chaos-pgbouncer",
        PgBouncerConfig(
            pool_mode="transaction",
            default_pool_size=SERVER_CONNECTIONS,
            query_wait_timeout=QUERY_WAIT_TIMEOUT_S,
        ),
    )
    bouncer.port = _free_port()
    bouncer.start()
    return bouncer


def _restart(bouncer: PgBouncer) -> Callable[[], Awaitable[None]]:
    async def action() -> None:
        # In this thread: the server's parent-death signal belongs to the thread that
        # started it. A start takes some 10 ms.
        bouncer.restart()

    return action


def _kill_for(bouncer: PgBouncer, seconds: float) -> Callable[[], Awaitable[None]]:
    async def action() -> None:
        bouncer.kill()
        try:
            await asyncio.sleep(seconds)
        finally:
            bouncer.start()

    return action


def _pause_for(bouncer: PgBouncer, seconds: float) -> Callable[[], Awaitable[None]]:
    async def action() -> None:
        await asyncio.to_thread(bouncer.admin, "PAUSE")
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(bouncer.admin, "RESUME")

    return action


async def pgbouncer(db: str, options: Options) -> ScenarioResult:
    """Restart, pause and kill PgBouncer under the bank load; then a statement timeout."""
    duration = options.duration_s
    settings = ServiceSettings()
    bouncer = _start_pgbouncer()
    try:
        direct = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE_NAME}"
        extra_env = {
            "CHAOS_DIRECT_URL": direct,
            "DATABASE_URL": bouncer.url(DATABASE_NAME),
            "DB_PGBOUNCER": "transaction",
        }
        async with Harness(
            "pgbouncer",
            db,
            options.work_dir,
            settings,
            use_proxy=False,
            module=MODULE,
            extra_env=extra_env,
            progress=options.progress,
        ) as harness:
            sampler = ConnectionSampler()
            sampler.start()
            pause = options.outage_s(2, 1)
            steps = [
                FaultStep(0.2 * duration, "pgbouncer-restart", _restart(bouncer)),
                FaultStep(
                    0.45 * duration, f"pgbouncer-pause-{pause:g}s", _pause_for(bouncer, pause)
                ),
                FaultStep(0.7 * duration, "pgbouncer-kill-1s", _kill_for(bouncer, 1.0)),
            ]
            await run_bank_with_faults(harness, duration, steps)
            # The server's limit must reach the transaction through PgBouncer.
            await transfers_blocked_past_the_statement_timeout(
                harness, settings, hold=settings.statement_timeout + 1.5, clients=BLOCKED_CLIENTS
            )
            await harness.settle()
            await sampler.stop()
            harness.result.notes.append(
                f"peak server connections {sampler.peak_connections} "
                f"(PgBouncer's pool: {SERVER_CONNECTIONS})"
            )
            # + 1: the harness's own connection holding the row lock.
            if sampler.peak_connections > SERVER_CONNECTIONS + 1:
                harness.result.violations.append(
                    f"peak server connections {sampler.peak_connections} > PgBouncer's "
                    f"{SERVER_CONNECTIONS}"
                )
            # PgBouncer failing is the database unavailable: a 503, never a 500.
            await harness.check(settings.deadline_s, strict_500=True)
            return harness.result
    finally:
        bouncer.remove()
