"""One scenario's moving parts: fresh database, fault proxy, service subprocess, bank client,
server-side samplers, and the result record printed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg

from chaos.bank import BankClient, LoadConfig, RunLog, create_accounts
from chaos.checker import Report, check_run, summarise
from chaos.faults import PG_ADMIN_DSN, FaultEvent, ensure_postgres_running
from chaos.proxy import FaultProxy
from chaos.service import DATABASE_NAME, DatabaseTarget, ServiceProcess, service_env

LEDGER_MODULE = "ledger"
GC_WARNING = "garbage collector is trying to clean up"
# The library's readiness probe keeps a connection outside the pools.
PROBE_CONNECTIONS = 1


@dataclass(frozen=True)
class ServiceSettings:
    pool_size: int = 5
    max_overflow: int = 5
    pool_timeout: float = 2.0
    connect_timeout: float = 3.0
    command_timeout: float = 5.0
    # Below the command timeout, so that the server cancels a long statement before the
    # driver gives up on the connection.
    statement_timeout: float = 4.0
    idle_in_transaction_timeout: float = 4.0

    @property
    def deadline_s(self) -> float:
        """The longest an HTTP attempt may take while the database merely restarts or is
        down: a wait for a connection, a connection attempt, and 2 s for the rest."""
        return self.pool_timeout + self.connect_timeout + 2.0

    @property
    def hung_deadline_s(self) -> float:
        """The same while the database hangs: a statement sent on a connection that no longer
        answers ends at the command timeout, then a new connection is tried."""
        return self.command_timeout + self.connect_timeout + 2.0

    @property
    def max_connections(self) -> int:
        # fastapi-asyncdb keeps two pools of this size, the primary and the read-only one,
        # and its health probe has one connection of its own.
        return 2 * (self.pool_size + self.max_overflow) + PROBE_CONNECTIONS

    def env(self, url: str) -> dict[str, str]:
        return service_env(
            url,
            db_pool_size=self.pool_size,
            db_max_overflow=self.max_overflow,
            db_read_pool_size=self.pool_size,
            db_read_max_overflow=self.max_overflow,
            db_pool_timeout=self.pool_timeout,
            db_connect_timeout=self.connect_timeout,
            db_command_timeout=self.command_timeout,
            db_statement_timeout=self.statement_timeout,
            db_idle_in_transaction_timeout=self.idle_in_transaction_timeout,
        )


@dataclass
class ScenarioResult:
    scenario: str
    db: str
    summary: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    recoveries: list[tuple[str, float | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The broken-checker scenario passes when the checker *does* find a violation.
    expect_violations: bool = False

    @property
    def passed(self) -> bool:
        return bool(self.violations) if self.expect_violations else not self.violations

    def add_violations(self, check: str, items: list[str]) -> None:
        report = Report()
        report.add(check, items)
        self.violations.extend(report.violations)

    def absorb(self, report: Report) -> None:
        self.violations.extend(report.violations)
        self.warnings.extend(report.warnings)


class ConnectionSampler:
    """Polls pg_stat_activity for the service's database: peak connection count and how long
    any session has been idle in transaction."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.peak_connections = 0
        self.peak_idle_in_transaction_s = 0.0
        self.samples = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)

    async def _run(self) -> None:
        connection: asyncpg.Connection | None = None
        for _ in range(1_000_000):
            if self._stop.is_set():
                break
            try:
                if connection is None or connection.is_closed():
                    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=1)
                row = await asyncio.wait_for(
                    connection.fetchrow(
                        "SELECT count(*) AS total, coalesce(max(extract(epoch FROM "
                        "now() - state_change)) FILTER (WHERE state LIKE 'idle in transaction%'),"
                        " 0) AS idle_tx FROM pg_stat_activity WHERE datname = $1",
                        DATABASE_NAME,
                    ),
                    2,
                )
                assert row is not None
                self.samples += 1
                self.peak_connections = max(self.peak_connections, int(row["total"]))
                self.peak_idle_in_transaction_s = max(
                    self.peak_idle_in_transaction_s, float(row["idle_tx"])
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                connection = None  # the database is being faulted; try again next tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every_s)
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await connection.close()


class Harness:
    def __init__(
        self,
        scenario: str,
        db_kind: str,
        work_dir: Path,
        settings: ServiceSettings | None = None,
        use_proxy: bool = True,
        module: str = LEDGER_MODULE,
        extra_env: dict[str, str] | None = None,
        load: dict[str, Any] | None = None,
        progress: Any = print,
    ) -> None:
        self.scenario = scenario
        self.settings = settings or ServiceSettings()
        self.target = DatabaseTarget(db_kind, work_dir)
        self.work_dir = work_dir
        self.use_proxy = use_proxy and db_kind != "sqlite"
        self.module = module
        self.extra_env = extra_env or {}
        self.load_options = load or {}
        self.progress = progress
        self.log = RunLog()
        self.proxy: FaultProxy | None = None
        self.service: ServiceProcess | None = None
        self.client: BankClient | None = None
        self.result = ScenarioResult(scenario, db_kind)

    async def __aenter__(self) -> Harness:
        try:
            return await self._start()
        except BaseException as error:
            # __aexit__ is not called when __aenter__ fails: stop what did start.
            await self.__aexit__(type(error), error, error.__traceback__)
            raise

    async def _start(self) -> Harness:
        await self.target.recreate()
        if self.use_proxy:
            self.proxy = FaultProxy("127.0.0.1", self.target.upstream_port).start()
        port = self.proxy.listen_port if self.proxy is not None else None
        env = {**self.settings.env(self.target.url(port)), **self.extra_env}
        log_path = self.work_dir / f"{self.scenario}-{self.target.kind}-service.log"
        self.service = ServiceProcess(self.module, env, log_path)
        await self.service.start()
        self.client = BankClient(
            LoadConfig(base_url=self.service.base_url, **self.load_options), self.log
        )
        await create_accounts(self.client)
        self.progress(
            f"  [{self.scenario}/{self.target.kind}] service up on {self.service.base_url}, "
            f"{len(self.log.accounts)} accounts, total {self.log.starting_total}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self.client is not None:
                await self.client.aclose()
            if self.service is not None:
                exited = self.service.returncode
                if exited is not None:
                    # Seen once: "Shutting down" in the middle of a run, i.e. a signal from
                    # outside (another user of this machine?). Reported, not guessed at.
                    self.result.violations.append(
                        f"service process exited during the run (rc={exited}); "
                        f"see {self.service.log_path}"
                    )
                await self.service.stop()
                self.scan_service_log()
            if self.proxy is not None:
                self.proxy.stop()
        finally:
            if self.target.kind == "postgresql":
                await ensure_postgres_running()
            self.log.dump(self.work_dir / f"{self.scenario}-{self.target.kind}-run.jsonl")

    @property
    def bank(self) -> BankClient:
        assert self.client is not None
        return self.client

    @property
    def service_port(self) -> int:
        assert self.service is not None
        return self.service.port

    @property
    def base_url(self) -> str:
        assert self.service is not None
        return self.service.base_url

    def scan_service_log(self) -> None:
        assert self.service is not None
        text = self.service.log_text()
        if GC_WARNING in text:
            self.result.violations.append(f"service log: {text.count(GC_WARNING)} x '{GC_WARNING}'")
        tracebacks = text.count("Traceback (most recent call last)")
        if tracebacks:
            self.result.notes.append(f"service log: {tracebacks} tracebacks")
        locked = text.count("database is locked")
        if locked:
            self.result.notes.append(f"service log: {locked} x 'database is locked'")

    async def settle(self, seconds: float = 1.5) -> None:
        """Let in-flight work, timeouts and server-side cleanup finish before judging."""
        await asyncio.sleep(seconds)

    async def check(
        self, deadline_s: float | None, strict_500: bool = False, server_state: bool = True
    ) -> None:
        report = await check_run(
            self.log,
            self.target.url(),
            deadline_s,
            DATABASE_NAME if server_state else None,
            self.settings.max_connections if server_state else None,
            self.base_url if server_state else None,
            strict_500,
        )
        self.result.absorb(report)
        self.result.summary = summarise(self.log)

    def record_recoveries(self, events: list[FaultEvent]) -> None:
        for event in events:
            self.result.recoveries.append((event.name, self.recovery_after(event.ended)))

    def recovery_after(self, fault_ended_monotonic: float) -> float | None:
        """Seconds from the fault's end to the first 2xx bank answer received after it."""
        fault_end = fault_ended_monotonic - self.log.epoch
        answers = [
            a.ended
            for a in self.log.attempts
            if a.op in {"transfer", "total"}
            and a.status is not None
            and 200 <= a.status < 300
            and a.ended >= fault_end
        ]
        return round(min(answers) - fault_end, 3) if answers else None


def monotonic_to_run_time(log: RunLog, moment: float) -> float:
    return moment - log.epoch


def elapsed_since(started: float) -> float:
    return round(time.monotonic() - started, 1)
