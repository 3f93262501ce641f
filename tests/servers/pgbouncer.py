"""A real PgBouncer on a free loopback port, in front of a PostgreSQL server.

Every database name is routed to the target server (the ``*`` entry), so a test
connects through PgBouncer to the very database it would use directly. The admin
console (database ``pgbouncer``) speaks only the simple query protocol, which asyncpg
cannot read rows from, so ``admin()`` runs ``psql``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import secrets
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .processes import ServerProcess, ServiceUser, free_port, port_is_listening, require_binary

__all__ = ["ADMIN_USER", "PgBouncer", "PgBouncerConfig"]

ADMIN_USER = "postgres"
PoolMode = Literal["session", "transaction", "statement"]
AuthType = Literal["trust", "md5", "scram-sha-256", "plain"]


@dataclass(frozen=True)
class PgBouncerConfig:
    """The settings tests vary; ``extra`` takes any other ``[pgbouncer]`` setting."""

    pool_mode: PoolMode = "transaction"
    default_pool_size: int = 2
    max_client_conn: int = 200
    query_wait_timeout: float = 10
    query_timeout: float = 0
    idle_transaction_timeout: float = 0
    server_login_retry: float = 1
    server_connect_timeout: float = 5
    ignore_startup_parameters: tuple[str, ...] = ("extra_float_digits",)
    server_reset_query: str = "DISCARD ALL"
    server_reset_query_always: bool = False
    auth_type: AuthType = "trust"
    # user -> password (the admin user gets one of its own). PgBouncer 1.18 wants every
    # user listed, even with trust, where the password is not checked.
    users: Mapping[str, str] = field(default_factory=dict)
    # Log in to the server as this user whatever the client's (the server trusts it).
    server_user: str | None = None
    connect_query: str | None = None
    target_host: str = "127.0.0.1"
    target_port: int = 5432
    extra: Mapping[str, str] = field(default_factory=dict)


def _ini_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class PgBouncer:
    """One PgBouncer process; ``restart()`` keeps its port, so clients reconnect to it."""

    def __init__(self, name: str, config: PgBouncerConfig) -> None:
        self.binary = require_binary("pgbouncer", "/usr/sbin/pgbouncer")
        self.psql_binary = require_binary("psql")
        self.config = config
        self.host = "127.0.0.1"
        self.port = free_port()
        self.admin_password = secrets.token_urlsafe(12)
        # SIGTERM is PgBouncer's immediate shutdown; SIGINT would wait for clients.
        self.process = ServerProcess(name, ServiceUser.named("postgres"))
        self.config_path = self.process.directory / "pgbouncer.ini"
        self.auth_file = self.process.directory / "userlist.txt"
        self.start_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> float:
        self._write_configuration()
        self.start_seconds = self.process.start(
            [self.binary, str(self.config_path)], lambda: port_is_listening(self.port)
        )
        return self.start_seconds

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """Die at once, as a crash would: clients see their connections reset."""
        self.process.signal(signal.SIGKILL)
        self.process.stop()

    def restart(self) -> float:
        """Immediate shutdown, then start again on the same port with the current config."""
        self.stop()
        return self.start()

    def reconfigure(self, **changes: object) -> None:
        """Change settings and ``RELOAD`` (pool mode, sizes and timeouts apply at once)."""
        self.config = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]
        self._write_configuration()
        self.admin("RELOAD")

    def remove(self) -> None:
        self.process.remove()

    def _write_configuration(self) -> None:
        config = self.config
        target = f"host={config.target_host} port={config.target_port}"
        if config.server_user:
            target += f" user={config.server_user}"
        if config.connect_query:
            escaped = config.connect_query.replace("'", "''")
            target += f" connect_query='{escaped}'"
        settings: dict[str, object] = {
            "listen_addr": self.host,
            "listen_port": self.port,
            # No Unix socket: a stale socket file would clash with a restart's.
            "unix_socket_dir": "",
            "auth_type": config.auth_type,
            "auth_file": self.auth_file,
            "admin_users": ADMIN_USER,
            "stats_users": ADMIN_USER,
            "pool_mode": config.pool_mode,
            "default_pool_size": config.default_pool_size,
            "min_pool_size": 0,
            "reserve_pool_size": 0,
            "max_client_conn": config.max_client_conn,
            "query_wait_timeout": config.query_wait_timeout,
            "query_timeout": config.query_timeout,
            "idle_transaction_timeout": config.idle_transaction_timeout,
            "server_login_retry": config.server_login_retry,
            "server_connect_timeout": config.server_connect_timeout,
            "ignore_startup_parameters": ",".join(config.ignore_startup_parameters),
            "server_reset_query": config.server_reset_query,
            "server_reset_query_always": config.server_reset_query_always,
            "log_connections": 1,
            "log_disconnections": 1,
            "log_pooler_errors": 1,
            **config.extra,
        }
        lines = ["[databases]", f"* = {target}", "", "[pgbouncer]"]
        lines += [f"{key} = {_ini_value(value)}" for key, value in settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        users = {**config.users, ADMIN_USER: self.admin_password}
        self.auth_file.write_text(
            "".join(f'"{user}" "{password}"\n' for user, password in users.items())
        )
        # The auth file holds passwords: readable by PgBouncer's user only.
        self.auth_file.chmod(0o600)
        self.process.user.own(self.auth_file)
        self.process.user.own(self.config_path)

    # -- access ------------------------------------------------------------------------

    def dsn(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        credentials = user if password is None else f"{user}:{password}"
        return f"postgresql://{credentials}@{self.host}:{self.port}/{database}"

    def url(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        """A SQLAlchemy URL for the asyncpg dialect."""
        return "postgresql+asyncpg" + self.dsn(database, user, password).removeprefix("postgresql")

    def admin(self, command: str) -> list[dict[str, str]]:
        """Run an admin console command (``SHOW POOLS``, ``PAUSE``...); rows as dicts."""
        environment = {**os.environ, "PGPASSWORD": self.admin_password, "PGCONNECT_TIMEOUT": "5"}
        result = subprocess.run(
            [
                self.psql_binary,
                "--no-psqlrc",
                "--csv",
                f"--host={self.host}",
                f"--port={self.port}",
                f"--username={ADMIN_USER}",
                "--dbname=pgbouncer",
                f"--command={command}",
            ],
            capture_output=True,
            text=True,
            env=environment,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pgbouncer admin {command!r} failed: {result.stderr.strip()}")
        return list(csv.DictReader(io.StringIO(result.stdout)))

    def pools(self, database: str) -> list[dict[str, str]]:
        return [row for row in self.admin("SHOW POOLS") if row["database"] == database]

    def log_text(self) -> str:
        return self.process.log_path.read_text(errors="replace")
