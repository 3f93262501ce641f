"""A small asyncio TCP proxy between the service and its database, with switchable faults.

The proxy runs its own event loop in a daemon thread so that the load generator's loop
(32 busy HTTP clients) cannot delay forwarding and distort the latencies being measured.
All public methods of :class:`FaultProxy` are thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

READ_CHUNK = 65536
# The COMMIT statement, not "SET autocommit=0" (MariaDB drivers send that while connecting;
# cutting it would fake a connection failure instead of a failed commit).
COMMIT_STATEMENT = re.compile(rb"(?<![A-Za-z_])COMMIT(?![A-Za-z_])", re.IGNORECASE)


class ProxyMode(enum.Enum):
    PASS = "pass"
    LATENCY = "latency"
    BLACKHOLE = "blackhole"
    # Holds only what the service sends: each session's current statement completes and the
    # next one never arrives, so the server sees "idle in transaction" (the timeouts scenario).
    STALL_UPSTREAM = "stall_upstream"
    REFUSE = "refuse"
    # Drops the client's COMMIT and cuts that connection: the transaction can never commit,
    # so the service must not report success (the commit-cut scenario).
    CUT_ON_COMMIT = "cut_on_commit"


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    cut: int = 0
    commits_dropped: int = 0
    open_now: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(eq=False)
class _Link:
    client_writer: asyncio.StreamWriter
    upstream_writer: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        # abort() rather than close(): a cut must look like a dead peer, not a polite FIN
        # after flushing buffers.
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                transport = writer.transport
                with contextlib.suppress(Exception):
                    transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int = 0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._requested_port = listen_port
        self.listen_port = 0
        self.stats = ProxyStats()
        self._mode = ProxyMode.PASS
        self._latency_s = 0.0
        self._commit_cut_every = 1
        self._commits_seen = 0
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flowing_up: asyncio.Event | None = None
        self._flowing_down: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run_loop, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start within 10 s")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def _run_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._open())
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _open(self) -> None:
        self._flowing_up = asyncio.Event()
        self._flowing_down = asyncio.Event()
        self._flowing_up.set()
        self._flowing_down.set()
        self._server = await asyncio.start_server(
            self._handle_client, "127.0.0.1", self._requested_port, reuse_address=True
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        self._links.clear()
        # Handlers still parked (held by a blackhole, or pumping) end here, not as
        # "Task was destroyed but it is pending" noise when the loop closes.
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # ---- control (thread-safe) -------------------------------------------------------------

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    def set_mode(self, mode: ProxyMode, latency_ms: float = 0.0, commit_cut_every: int = 1) -> None:
        def apply() -> None:
            self._mode = mode
            self._latency_s = latency_ms / 1000.0 if mode is ProxyMode.LATENCY else 0.0
            self._commit_cut_every = max(1, commit_cut_every)
            assert self._flowing_up is not None
            assert self._flowing_down is not None
            if mode in (ProxyMode.BLACKHOLE, ProxyMode.STALL_UPSTREAM):
                self._flowing_up.clear()
            else:
                self._flowing_up.set()
            if mode is ProxyMode.BLACKHOLE:
                self._flowing_down.clear()
            else:
                self._flowing_down.set()

        self._call(apply)

    def cut_all(self) -> int:
        """Abort every established connection; returns how many were cut."""
        result: list[int] = []

        def apply() -> None:
            links = list(self._links)
            for link in links:
                link.abort()
            self._links.clear()
            self.stats.cut += len(links)
            result.append(len(links))

        self._call(apply)
        return result[0] if result else 0

    def _call(self, action: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("proxy not started")
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("proxy loop did not answer within 10 s")

    # ---- forwarding ------------------------------------------------------------------------

    async def _handle_client(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self._mode is ProxyMode.REFUSE:
            self.stats.refused += 1
            client_writer.transport.abort()
            return
        self.stats.accepted += 1
        link = _Link(client_writer)
        self._links.add(link)
        self.stats.open_now = len(self._links)
        try:
            # A blackhole accepts (the kernel already did) but never talks to the database.
            held = await self._hold_until_flowing(client_reader)
            if held is None:
                return  # the client gave up while held: never bother the database with it
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
            link.upstream_writer = upstream_writer
            if link not in self._links:  # cut while connecting
                link.abort()
                return
            if held:
                upstream_writer.write(held)
            up = asyncio.create_task(self._pump(client_reader, upstream_writer, link, True))
            down = asyncio.create_task(self._pump(upstream_reader, client_writer, link, False))
            link.tasks = [up, down]
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            link.abort()
            self._links.discard(link)
            self.stats.open_now = len(self._links)

    async def _hold_until_flowing(self, reader: asyncio.StreamReader) -> bytes | None:
        """Wait for the blackhole to end, buffering what the client sends meanwhile; None if
        the client hung up. Without this, every connection attempt the service abandoned
        during a 30 s blackhole would reach PostgreSQL at once when it ends (a fork storm
        that stalls a two-core machine and is no part of the fault being simulated)."""
        assert self._flowing_up is not None
        if self._flowing_up.is_set():
            return b""
        buffered = bytearray()
        flowing = asyncio.create_task(self._flowing_up.wait())
        try:
            for _ in range(100_000):
                read = asyncio.create_task(reader.read(READ_CHUNK))
                done, _ = await asyncio.wait({flowing, read}, return_when=asyncio.FIRST_COMPLETED)
                if read in done:
                    data = read.result()
                    if not data:
                        return None
                    buffered += data
                    continue
                # Cancelling a pending StreamReader.read loses nothing: bytes stay buffered.
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await read
                break
        finally:
            flowing.cancel()
        return bytes(buffered)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        towards_database: bool,
    ) -> None:
        # Chunks go through a delay line so that latency delays each chunk by the same amount
        # instead of accumulating across pipelined messages.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        gate = self._flowing_up if towards_database else self._flowing_down
        assert gate is not None
        sender = asyncio.create_task(self._send_delayed(queue, writer, gate))
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                if towards_database and self._should_drop_commit(data):
                    self.stats.commits_dropped += 1
                    link.abort()
                    break
                await queue.put((time.monotonic() + self._latency_s, data))
                if towards_database:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        finally:
            await queue.put((0.0, b""))
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(sender, 5)

    async def _send_delayed(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        flowing: asyncio.Event,
    ) -> None:
        while True:
            due, data = await queue.get()
            if not data:
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # Blackhole: hold bytes (both directions) exactly like dropped packets would.
            await flowing.wait()
            writer.write(data)
            await writer.drain()

    def _should_drop_commit(self, data: bytes) -> bool:
        if self._mode is not ProxyMode.CUT_ON_COMMIT:
            return False
        if COMMIT_STATEMENT.search(data) is None:
            return False
        self._commits_seen += 1
        return self._commits_seen % self._commit_cut_every == 0
