"""A minimal HTTP/1.1 keep-alive GET client for the overload run.

httpx's connection pool costs enough CPU with 100 concurrent requests that a burst of
answers delayed the next requests by up to 0.7 s on this machine, and the harness
counted that as server latency (wrk on the same server showed none). One socket per
simulated client and no pool keeps the client out of the measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class HttpClientError(Exception):
    """No complete HTTP answer."""


class RawHttpConnection:
    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, dict[str, str]]:
        """Status and headers (lower-case names); the body is read and dropped.

        Like any HTTP client, a request that found its kept-alive connection closed by
        the server (uvicorn closes it after a 500) is sent again once on a new one.
        """
        reused = self._writer is not None
        try:
            return await self._exchange(path)
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            await self.close()
            if not reused:
                raise HttpClientError(type(error).__name__) from error
        try:
            return await self._exchange(path)
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            await self.close()
            raise HttpClientError(type(error).__name__) from error

    async def _exchange(self, path: str) -> tuple[int, dict[str, str]]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        request = f"GET {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n\r\n"
        self._writer.write(request.encode("ascii"))
        status_line = await self._reader.readline()
        if not status_line:
            raise asyncio.IncompleteReadError(b"", None)
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        # Starlette's responses carry Content-Length; chunked bodies are not expected here.
        await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # the server may have closed first
                await writer.wait_closed()

    async def __aenter__(self) -> RawHttpConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
