"""Fresh databases per scenario and the service under test as a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import asyncmy
import asyncpg
import httpx

from chaos.faults import PG_ADMIN_DSN

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
# CHAOS_DATABASE names another, so that two runs on one server keep out of each other's way.
DATABASE_NAME = os.environ.get("CHAOS_DATABASE", "chaos")
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class DatabaseTarget:
    kind: str  # postgresql | mariadb | sqlite
    work_dir: Path | None = None
    sqlite_path: Path | None = None

    @property
    def upstream_port(self) -> int:
        return 5432 if self.kind == "postgresql" else 3306

    def url(self, port: int | None = None) -> str:
        """The service's URL; ``port`` routes it through the fault proxy."""
        if self.kind == "postgresql":
            return f"postgresql+asyncpg://postgres@127.0.0.1:{port or 5432}/{DATABASE_NAME}"
        if self.kind == "mariadb":
            return f"mariadb+asyncmy://root@127.0.0.1:{port or 3306}/{DATABASE_NAME}"
        assert self.sqlite_path is not None
        return f"sqlite+aiosqlite:///{self.sqlite_path}"

    async def recreate(self) -> None:
        if self.kind == "postgresql":
            admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE_NAME} WITH (FORCE)")
                await admin.execute(f"CREATE DATABASE {DATABASE_NAME}")
            finally:
                await admin.close()
        elif self.kind == "mariadb":
            admin = await asyncmy.connect(host="127.0.0.1", port=3306, user="root")
            try:
                async with admin.cursor() as cursor:
                    # Checked first: asyncmy prints the server's note for a DROP ... IF EXISTS
                    # of a missing database.
                    await cursor.execute(
                        "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                        (DATABASE_NAME,),
                    )
                    if await cursor.fetchone():
                        await cursor.execute(f"DROP DATABASE {DATABASE_NAME}")
                    await cursor.execute(f"CREATE DATABASE {DATABASE_NAME}")
            finally:
                admin.close()
        else:
            # A new file per run, next to the run's logs, so a failed run can be re-checked.
            directory = Path(tempfile.mkdtemp(prefix="sqlite-", dir=self.work_dir))
            self.sqlite_path = directory / "ledger.db"


@dataclass
class ServiceProcess:
    module: str
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {**os.environ, **self.env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src")])
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                str(PYTHON),
                "-m",
                self.module,
                cwd=REPO_ROOT,
                env=env,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as http:
            for _ in range(int(STARTUP_TIMEOUT_S / 0.2)):
                if process.returncode is not None:
                    raise RuntimeError(
                        f"{self.module} exited with {process.returncode}: {self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/health/live")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.module} not live after {STARTUP_TIMEOUT_S}s: {self.log_tail()}")

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), 5)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def service_env(url: str, **settings: float | int | str) -> dict[str, str]:
    env = {"DATABASE_URL": url}
    env.update({name.upper(): str(value) for name, value in settings.items()})
    return env
