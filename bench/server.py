"""Start, probe and stop one uvicorn server process; read its CPU time."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Final

import asyncpg
import httpx

from bench.config import BENCH_DB, COUNT_APP_CONNECTIONS_SQL
from bench.contenders import REPO_ROOT, Contender, server_environment
from bench.pg import connect

CLOCK_TICKS_PER_SECOND: Final = os.sysconf("SC_CLK_TCK")
LOG_DIR: Final = Path(__file__).resolve().parent / "results" / "logs"
READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
DRAIN_TIMEOUT_S: Final = 10.0


class ServerFailedError(RuntimeError):
    """The server did not start, or died."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/PID/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_SECOND


async def count_app_connections(application_name: str) -> int:
    conn = await connect()
    try:
        count: int = await conn.fetchval(COUNT_APP_CONNECTIONS_SQL, BENCH_DB, application_name)
        return count
    finally:
        await conn.close()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


class Server:
    """One contender's uvicorn process, same settings for all: uvloop, httptools, 1 worker."""

    def __init__(self, contender: Contender, probe_path: str = "/db") -> None:
        self.contender = contender
        self.probe_path = probe_path
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = LOG_DIR / f"{contender.name}.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerFailedError("server not started")
        return self.process.pid

    def command(self) -> list[str]:
        # bench.run --gc-freeze: the app behind bench.apps.frozen, which names it.
        frozen = self.contender.env.get("BENCH_GC_FREEZE") == "1"
        app = "bench.apps.frozen:app" if frozen else self.contender.app
        return [
            sys.executable, "-m", "uvicorn", app,
            "--host", "127.0.0.1", "--port", str(self.contender.port),
            "--loop", "uvloop", "--http", "httptools",
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip

    def start(self) -> None:
        if not port_is_free(self.contender.port):
            # Else the readiness probe would happily talk to somebody else's server.
            raise ServerFailedError(
                f"port {self.contender.port} is taken: stop that server or set BENCH_PORT_BASE"
            )
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%F %T')} {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                cwd=REPO_ROOT,
                env=server_environment(
                    {**self.contender.env, "BENCH_FROZEN_APP": self.contender.app}
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = self.contender.base_url + self.probe_path
        last_error = "no answer"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerFailedError(
                        f"{self.contender.name} exited with {self.process.returncode}; "
                        f"see {self.log_path}\n{self.log_tail()}"
                    )
                try:
                    response = client.get(url)
                    if response.status_code == 200:
                        return
                    last_error = f"HTTP {response.status_code}"
                except httpx.TransportError as error:
                    last_error = repr(error)
                time.sleep(0.1)
        self.stop()
        raise ServerFailedError(
            f"{self.contender.name} not ready in {READY_TIMEOUT_S} s: {last_error}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self.process = None
        # The next server must find every connection slot free (max_connections is 100).
        asyncio.run(_wait_connections_closed(self.contender.application_name))

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


async def _wait_connections_closed(application_name: str, poll_s: float = 0.05) -> None:
    """Bounded poll: PostgreSQL notices a closed socket within milliseconds."""
    try:
        for _ in range(int(DRAIN_TIMEOUT_S / poll_s)):
            if await count_app_connections(application_name) == 0:
                return
            await asyncio.sleep(poll_s)
    except (OSError, asyncpg.PostgresError):
        pass  # PostgreSQL restarting (another session's fault test): no connection is left
