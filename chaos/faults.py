"""Fault injectors (PostgreSQL process control, backend termination, proxy modes) and a
scheduler that fires them at fixed offsets and records when each fault really ended."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from chaos.proxy import FaultProxy, ProxyMode

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
# "VERSION/NAME" of the Debian cluster behind PG_ADMIN_DSN, where the server's own
# cluster_name does not say it.
CLUSTER_VARIABLE = "CHAOS_PG_CLUSTER"
PG_CTL_TIMEOUT_S = 60.0
MIN_GAP_S = 2.0


@dataclass(frozen=True)
class Cluster:
    """The local PostgreSQL cluster that the faults stop, start and freeze."""

    version: str
    name: str
    data_directory: Path


_cluster: Cluster | None = None


async def discover_cluster() -> Cluster:
    """Asks the running server which cluster it is and where its data lives, once: while it
    is stopped or frozen nobody can be asked, and the faults must still find it then."""
    global _cluster
    if _cluster is None:
        connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            cluster_name = str(await connection.fetchval("SHOW cluster_name"))
            data_directory = str(await connection.fetchval("SHOW data_directory"))
        finally:
            await connection.close()
        version, _, name = os.environ.get(CLUSTER_VARIABLE, cluster_name).partition("/")
        if not version or not name:
            raise RuntimeError(
                f"cannot tell the cluster from cluster_name {cluster_name!r}: "
                f"set {CLUSTER_VARIABLE}=VERSION/NAME as pg_lsclusters shows it"
            )
        _cluster = Cluster(version, name, Path(data_directory))
    return _cluster


async def _pg_ctlcluster(*args: str) -> None:
    cluster = await discover_cluster()
    process = await asyncio.create_subprocess_exec(
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        cluster.version,
        cluster.name,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), PG_CTL_TIMEOUT_S)
    if process.returncode != 0:
        raise RuntimeError(f"pg_ctlcluster {' '.join(args)} failed: {output.decode().strip()}")


async def pg_restart_fast() -> None:
    await _pg_ctlcluster("restart", "-m", "fast")


async def pg_stop_immediate() -> None:
    await _pg_ctlcluster("stop", "-m", "immediate")


async def pg_start() -> None:
    await _pg_ctlcluster("start")


def postmaster_pid() -> int | None:
    if _cluster is None:
        return None  # never discovered, so never faulted
    pid_file = _cluster.data_directory / "postmaster.pid"
    try:
        return int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _children_of(pid: int) -> list[int]:
    children: list[int] = []
    for task_dir in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children.extend(int(c) for c in (task_dir / "children").read_text().split())
    return children


def _signal_postgres(sig: signal.Signals) -> int:
    master = postmaster_pid()
    if master is None:
        return 0
    count = 0
    for pid in [master, *_children_of(master)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            count += 1
    return count


async def pg_freeze(seconds: float) -> None:
    """SIGSTOP the postmaster and every backend: the server keeps its sockets open but answers
    nothing, which is the closest local stand-in for a hung database host."""
    await discover_cluster()
    try:
        _signal_postgres(signal.SIGSTOP)
        await asyncio.sleep(seconds)
    finally:
        _signal_postgres(signal.SIGCONT)


async def pg_is_up(timeout_s: float = 2.0) -> bool:
    try:
        connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


async def ensure_postgres_running() -> None:
    """Leave the cluster usable whatever happened: thaw, then start if it is down. A cluster
    never discovered was never stopped or frozen by us: it is left alone."""
    if _cluster is None:
        return
    _signal_postgres(signal.SIGCONT)
    if await pg_is_up():
        return
    with contextlib.suppress(RuntimeError, TimeoutError):
        await pg_start()
    for _ in range(60):  # up to ~30 s
        if await pg_is_up():
            return
        await asyncio.sleep(0.5)


async def pg_terminate_backends(database: str) -> int:
    """Kill every server connection of the service (all sessions on its database but ours)."""
    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        rows = await connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await connection.close()
    return len(rows)


# ---- scheduling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultEvent:
    name: str
    started: float  # time.monotonic()
    ended: float


@dataclass(frozen=True)
class FaultStep:
    """One fault, fired ``at_s`` seconds after the schedule starts (or later, see run())."""

    at_s: float
    name: str
    action: Callable[[], Awaitable[None]]
    repeat_every_s: float | None = None
    repeat_until_s: float | None = None


@dataclass
class FaultSchedule:
    steps: list[FaultStep] = field(default_factory=list)
    events: list[FaultEvent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def run(self, on_event: Callable[[str], None]) -> None:
        """Steps run one after the other (``at_s`` means 'not before'), with at least
        ``MIN_GAP_S`` of undisturbed load between them so that each recovery is visible."""
        start = time.monotonic()
        previous_end = start - MIN_GAP_S
        for step in self.steps:
            not_before = max(start + step.at_s, previous_end + MIN_GAP_S) - start
            await self._run_step(step, start, not_before, on_event)
            previous_end = time.monotonic()

    async def _run_step(
        self, step: FaultStep, start: float, at: float, on_event: Callable[[str], None]
    ) -> None:
        while True:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            began = time.monotonic()
            try:
                await step.action()
            except Exception as error:  # a failed injection is reported, not fatal
                self.errors.append(f"{step.name} at +{at:.1f}s: {error!r}")
            ended = time.monotonic()
            self.events.append(FaultEvent(step.name, began, ended))
            on_event(f"fault {step.name} at +{began - start:.1f}s took {ended - began:.2f}s")
            if step.repeat_every_s is None or step.repeat_until_s is None:
                return
            at += step.repeat_every_s
            if at > step.repeat_until_s:
                return


def stop_for(seconds: float) -> Callable[[], Awaitable[None]]:
    async def action() -> None:
        await pg_stop_immediate()
        try:
            await asyncio.sleep(seconds)
        finally:
            await pg_start()

    return action


def freeze_for(seconds: float) -> Callable[[], Awaitable[None]]:
    async def action() -> None:
        await pg_freeze(seconds)

    return action


def terminate_backends(database: str) -> Callable[[], Awaitable[None]]:
    async def action() -> None:
        await pg_terminate_backends(database)

    return action


def proxy_mode_for(
    proxy: FaultProxy, mode: ProxyMode, seconds: float, latency_ms: float = 0.0
) -> Callable[[], Awaitable[None]]:
    async def action() -> None:
        proxy.set_mode(mode, latency_ms=latency_ms)
        try:
            await asyncio.sleep(seconds)
        finally:
            proxy.set_mode(ProxyMode.PASS)

    return action


def proxy_cut(proxy: FaultProxy) -> Callable[[], Awaitable[None]]:
    async def action() -> None:
        proxy.cut_all()

    return action
