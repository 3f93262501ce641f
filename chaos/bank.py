"""Load generator: concurrent HTTP clients moving money between a fixed set of accounts.

Every HTTP attempt and every logical operation is recorded; the checker later compares the
record with what the database really holds.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

RETRYABLE_STATUS = frozenset({503})
# Error label of an attempt the client cut short on purpose (the disconnects scenario): not
# a delay of the service's.
ABANDONED = "abandoned"


@dataclass
class Attempt:
    op: str
    key: str
    started: float  # seconds since the run's epoch
    ended: float
    status: int | None  # None: no HTTP answer (timeout, connection error, client abort)
    error: str | None = None
    retry_after: str | None = None
    problem_json: bool = False

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class Operation:
    """A logical request, possibly retried; outcome is ok (2xx), failed (4xx) or unknown."""

    op: str
    key: str
    body: dict[str, Any]
    outcome: str
    status: int | None
    started: float
    ended: float
    attempts: int
    response: dict[str, Any] | None = None


@dataclass
class RunLog:
    epoch: float = field(default_factory=time.monotonic)
    accounts: dict[int, int] = field(default_factory=dict)  # id -> starting balance
    attempts: list[Attempt] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.epoch

    @property
    def starting_total(self) -> int:
        return sum(self.accounts.values())

    def dump(self, path: Path) -> None:
        with path.open("w") as out:
            out.write(json.dumps({"kind": "accounts", "accounts": self.accounts}) + "\n")
            for attempt in self.attempts:
                out.write(json.dumps({"kind": "attempt", **asdict(attempt)}) + "\n")
            for operation in self.operations:
                out.write(json.dumps({"kind": "operation", **asdict(operation)}) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunLog:
        log = cls(epoch=0.0)
        for line in path.read_text().splitlines():
            record = json.loads(line)
            kind = record.pop("kind")
            if kind == "accounts":
                log.accounts = {int(k): int(v) for k, v in record["accounts"].items()}
            elif kind == "attempt":
                log.attempts.append(Attempt(**record))
            elif kind == "operation":
                log.operations.append(Operation(**record))
        return log


@dataclass(frozen=True)
class LoadConfig:
    base_url: str
    clients: int = 32
    accounts: int = 20
    initial_balance: int = 1000
    max_amount: int = 150
    total_read_share: float = 0.25
    # Retries are bounded in time by give_up_at as well.
    max_attempts: int = 40
    # Client-side timeout: well above the service's deadline so that overruns are measured
    # instead of hidden by the client giving up first.
    client_timeout_s: float = 20.0
    max_backoff_s: float = 1.0


class BankClient:
    def __init__(self, config: LoadConfig, log: RunLog) -> None:
        self.config = config
        self.log = log
        limits = httpx.Limits(max_connections=config.clients * 2 + 50)
        self.http = httpx.AsyncClient(
            base_url=config.base_url, timeout=config.client_timeout_s, limits=limits
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request_once(
        self,
        op: str,
        key: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[Attempt, dict[str, Any] | None]:
        headers = {"Idempotency-Key": key} if op == "transfer" else {}
        started = self.log.now()
        payload: dict[str, Any] | None = None
        try:
            response = await self.http.request(
                method,
                path,
                json=body,
                headers=headers,
                timeout=timeout_s if timeout_s is not None else self.config.client_timeout_s,
            )
        except httpx.HTTPError as error:
            attempt = Attempt(op, key, started, self.log.now(), None, type(error).__name__)
        else:
            content_type = response.headers.get("content-type", "")
            with_json = "json" in content_type
            try:
                payload = response.json() if with_json else None
            except ValueError:
                payload = None
            attempt = Attempt(
                op,
                key,
                started,
                self.log.now(),
                response.status_code,
                None,
                response.headers.get("retry-after"),
                "application/problem+json" in content_type and isinstance(payload, dict),
            )
        self.log.attempts.append(attempt)
        return attempt, payload if isinstance(payload, dict) else None

    async def call(
        self,
        op: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        key: str | None = None,
        give_up_at: float | None = None,
    ) -> Operation:
        """Send with bounded retries of timeouts, connection errors and 503s (same key)."""
        key = key or uuid.uuid4().hex
        started = self.log.now()
        attempt: Attempt | None = None
        payload: dict[str, Any] | None = None
        count = 0
        for count in range(1, self.config.max_attempts + 1):
            attempt, payload = await self.request_once(op, key, method, path, body)
            if attempt.status is not None and attempt.status not in RETRYABLE_STATUS:
                break
            if count == self.config.max_attempts:
                break
            if give_up_at is not None and self.log.now() >= give_up_at:
                break
            await asyncio.sleep(self._backoff(attempt, count))
        assert attempt is not None
        return self._record(op, key, body, attempt, started, count, payload)

    async def call_abandoning(
        self,
        op: str,
        method: str,
        path: str,
        abort_after_s: float,
        body: dict[str, Any] | None = None,
    ) -> Operation:
        """One attempt that the client gives up on (closing its connection) after a delay."""
        key = uuid.uuid4().hex
        started = self.log.now()
        payload: dict[str, Any] | None = None
        try:
            attempt, payload = await asyncio.wait_for(
                self.request_once(op, key, method, path, body), abort_after_s
            )
        except TimeoutError:
            attempt = Attempt(op, key, started, self.log.now(), None, ABANDONED)
            self.log.attempts.append(attempt)
        return self._record(op, key, body, attempt, started, 1, payload)

    def _record(
        self,
        op: str,
        key: str,
        body: dict[str, Any] | None,
        attempt: Attempt,
        started: float,
        count: int,
        payload: dict[str, Any] | None,
    ) -> Operation:
        status = attempt.status
        if status is not None and 200 <= status < 300:
            outcome = "ok"
        elif status is not None and 400 <= status < 500:
            outcome = "failed"
        else:
            outcome = "unknown"
        operation = Operation(
            op, key, body or {}, outcome, status, started, self.log.now(), count, payload
        )
        self.log.operations.append(operation)
        return operation

    def _backoff(self, attempt: Attempt, count: int) -> float:
        hinted = 0.0
        if attempt.retry_after is not None:
            try:
                hinted = float(attempt.retry_after)
            except ValueError:
                hinted = 0.0
        exponential: float = 0.05 * 2.0 ** min(count, 6)
        # Capped: the test wants to see recovery quickly, not to be polite.
        return min(self.config.max_backoff_s, max(hinted, exponential)) * random.uniform(0.5, 1.0)


async def create_accounts(client: BankClient) -> None:
    for index in range(client.config.accounts):
        body = {"owner": f"chaos-{index}", "balance": client.config.initial_balance}
        operation = await client.call("create_account", "POST", "/accounts", body)
        if operation.outcome != "ok" or operation.response is None:
            raise RuntimeError(f"could not create account {index}: status {operation.status}")
        client.log.accounts[int(operation.response["id"])] = int(operation.response["balance"])


def random_transfer_body(client: BankClient, rng: random.Random) -> dict[str, Any]:
    source, target = rng.sample(sorted(client.log.accounts), 2)
    return {
        "from_account": source,
        "to_account": target,
        "amount": rng.randint(1, client.config.max_amount),
    }


@dataclass
class LoadWindow:
    """When the load stops: not before ``stop_at``, and not while a fault is still running
    (``final`` unset), so that every fault is followed by load that shows the recovery."""

    stop_at: float
    final: bool = True

    def over(self, now: float) -> bool:
        return self.final and now >= self.stop_at


async def _worker(client: BankClient, window: LoadWindow, seed: int) -> None:
    rng = random.Random(seed)
    # Bounded in count as well as time, whatever the service does.
    for _ in range(1_000_000):
        if window.over(client.log.now()):
            return
        give_up_at = window.stop_at + 15
        if rng.random() < client.config.total_read_share:
            await client.call("total", "GET", "/accounts/total", give_up_at=give_up_at)
        else:
            body = random_transfer_body(client, rng)
            await client.call("transfer", "POST", "/transfers", body, give_up_at=give_up_at)


async def run_load(
    client: BankClient, duration_s: float, seed: int = 1, window: LoadWindow | None = None
) -> None:
    window = window or LoadWindow(client.log.now() + duration_s)
    workers = [
        asyncio.create_task(_worker(client, window, seed * 1000 + index))
        for index in range(client.config.clients)
    ]
    await asyncio.gather(*workers)


async def probe_liveness(client: BankClient, stop: asyncio.Event, every_s: float = 0.2) -> None:
    """Shows whether the service's event loop keeps serving while the database hangs.

    The probe has its own thread and connection: from the load's event loop it would
    also time the harness's own lag when 32 clients retry at once after a fault.
    """
    halt = threading.Event()
    thread = threading.Thread(
        target=_probe_liveness_blocking, args=(client, halt, every_s), daemon=True
    )
    thread.start()
    await stop.wait()
    halt.set()
    await asyncio.to_thread(thread.join, 15)


def _probe_liveness_blocking(client: BankClient, halt: threading.Event, every_s: float) -> None:
    url = httpx.URL(client.config.base_url)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=10)
    for _ in range(100_000):
        if halt.is_set():
            break
        started = client.log.now()
        status: int | None = None
        error: str | None = None
        try:
            connection.request("GET", "/health/live")
            response = connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as failure:
            error = type(failure).__name__
            connection.close()
            connection = http.client.HTTPConnection(url.host, url.port, timeout=10)
        client.log.attempts.append(
            Attempt("live", uuid.uuid4().hex, started, client.log.now(), status, error)
        )
        halt.wait(every_s)
    connection.close()


@dataclass(frozen=True)
class BurstAnswer:
    status: int | None
    latency: float
    retry_after: bool


async def raw_burst(
    host: str, port: int, path: str, count: int, timeout_s: float = 30.0
) -> list[BurstAnswer]:
    """``count`` simultaneous GETs on pre-opened sockets, timed from the request's last byte to
    the response's first. httpx costs 1-2 ms of client CPU per request; with 200 at once on two
    cores that alone adds about half a second, more than the 0.5 s window being judged."""
    connections = [await asyncio.open_connection(host, port) for _ in range(count)]
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> BurstAnswer:
        started = time.monotonic()
        writer.write(request)
        try:
            await writer.drain()
            first_line = await asyncio.wait_for(reader.readline(), timeout_s)
            elapsed = time.monotonic() - started
            rest = await asyncio.wait_for(reader.read(), timeout_s)
        except (OSError, TimeoutError):
            return BurstAnswer(None, time.monotonic() - started, False)
        finally:
            writer.close()
        parts = first_line.split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        head = rest.split(b"\r\n\r\n", 1)[0].lower()
        return BurstAnswer(status, elapsed, b"\r\nretry-after:" in b"\r\n" + head)

    return await asyncio.gather(*(one(reader, writer) for reader, writer in connections))
