"""A forwarder that reads the PostgreSQL frontend protocol to count round trips.

A client waits for the server once per ``Sync`` (extended protocol) and once per
``Query`` (simple protocol): counting those messages counts the round trips a
setting costs, exactly, where timing would only estimate them.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import AsyncIterator

from .processes import free_port

__all__ = ["RoundTripCounter"]

_ROUND_TRIP_MESSAGES = {b"S", b"Q", b"H"}
_ENCRYPTION_REQUESTS = {80877103, 80877104}  # SSLRequest, GSSENCRequest


class RoundTripCounter:
    """Forwards 127.0.0.1:``port`` to ``target_port``; counts frontend messages by type."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.messages: Counter[bytes] = Counter()
        # Simple-protocol query texts, in order: shows what a BEGIN carried.
        self.queries: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def round_trips(self) -> int:
        return sum(self.messages[kind] for kind in _ROUND_TRIP_MESSAGES)

    def reset(self) -> None:
        self.messages.clear()
        self.queries.clear()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # The startup packet, and SSL or GSS requests before it, carry no type byte.
        while True:
            length = struct.unpack("!I", await reader.readexactly(4))[0]
            body = await reader.readexactly(length - 4)
            writer.write(struct.pack("!I", length) + body)
            if struct.unpack("!I", body[:4])[0] not in _ENCRYPTION_REQUESTS:
                break
        while True:
            header = await reader.readexactly(5)
            kind, length = header[:1], struct.unpack("!I", header[1:])[0]
            body = await reader.readexactly(length - 4)
            self.messages[kind] += 1
            if kind == b"Q":
                self.queries.append(body.rstrip(b"\0").decode())
            writer.write(header + body)
            await writer.drain()

    @staticmethod
    async def _server_to_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        directions = [
            asyncio.ensure_future(self._client_to_server(reader, upstream_writer)),
            asyncio.ensure_future(self._server_to_client(upstream_reader, writer)),
        ]
        try:
            # Either side closing ends both: a client waiting for the server to hang up
            # after its Terminate would otherwise wait on us forever.
            await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for direction in directions:
                direction.cancel()
            await asyncio.gather(*directions, return_exceptions=True)
            for stream in (writer, upstream_writer):
                stream.close()
                # Closed before the test's event loop ends, or the socket outlives it.
                with contextlib.suppress(ConnectionError):
                    await stream.wait_closed()

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RoundTripCounter]:
        server = await asyncio.start_server(self._track, "127.0.0.1", self.port)
        try:
            yield self
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
