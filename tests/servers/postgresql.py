"""A private PostgreSQL cluster on a free loopback port: plaintext, or TLS only.

``initdb`` into the run directory, then ``postgres`` itself (``pg_ctl`` refuses root
and adds nothing here). Durability is off: the cluster lives for one test run.

With TLS, ``pg_hba.conf`` has ``hostssl`` lines only, so a plaintext connection is
refused by the server itself, and each role shows one way in:

- ``cert_user`` (``Certificates.client_user``): a client certificate, verify-full;
- ``password_user``: SCRAM over TLS, with a password a test may rotate;
- ``postgres``: trust over TLS, and over the Unix socket for the fixture's own admin.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .certificates import Certificates, generate_certificates
from .processes import ServerProcess, ServiceUser, free_port, require_binary

__all__ = ["PASSWORD_USER", "PostgresCluster", "postgres_binaries"]

PASSWORD_USER = "password_user"
CERT_USER = "cert_user"
# The server certificate does not name this one: connecting here is a host mismatch.
MISMATCHED_HOST = "127.0.0.2"
_BINARY_DIRECTORIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


@dataclass(frozen=True)
class PostgresBinaries:
    initdb: str
    postgres: str
    psql: str


def postgres_binaries() -> PostgresBinaries:
    def find(name: str) -> str:
        return require_binary(name, *(str(directory / name) for directory in _BINARY_DIRECTORIES))

    return PostgresBinaries(find("initdb"), find("postgres"), find("psql"))


class PostgresCluster:
    """One cluster. ``tls=True`` generates certificates and accepts TLS connections only."""

    def __init__(self, name: str, *, tls: bool) -> None:
        self.binaries = postgres_binaries()
        self.tls = tls
        self.user = ServiceUser.named("postgres")
        self.process = ServerProcess(name, self.user, stop_signal=signal.SIGINT)
        self.data_directory = self.process.directory / "data"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.certificates: Certificates | None = None
        self.password = secrets.token_urlsafe(16)
        self.init_seconds = 0.0
        self.start_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------

    def create(self) -> None:
        """``initdb``, configuration and certificates; then ``start()``."""
        self._as_service_user(
            [
                self.binaries.initdb,
                f"--pgdata={self.data_directory}",
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]
        )
        if self.tls:
            self.certificates = generate_certificates(
                self.process.directory / "tls", client_user=CERT_USER
            )
            for path in (self.certificates.server_key, self.certificates.server_cert):
                self.user.own(path)
        self._write_configuration()

    def _write_configuration(self) -> None:
        settings = {
            "listen_addresses": f"'127.0.0.1,{MISMATCHED_HOST}'" if self.tls else "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.process.directory}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "'16MB'",
            "max_connections": "40",
            "log_connections": "on",
            "log_min_messages": "notice",
        }
        if self.tls and self.certificates is not None:
            settings |= {
                "ssl": "on",
                "ssl_cert_file": f"'{self.certificates.server_cert}'",
                "ssl_key_file": f"'{self.certificates.server_key}'",
                "ssl_ca_file": f"'{self.certificates.ca_cert}'",
            }
            hba = [
                "local all postgres trust",
                f"hostssl all {CERT_USER} 127.0.0.0/8 cert clientcert=verify-full",
                f"hostssl all {PASSWORD_USER} 127.0.0.0/8 scram-sha-256",
                "hostssl all postgres 127.0.0.0/8 trust",
            ]
        else:
            settings["ssl"] = "off"
            hba = ["local all all trust", "host all all 127.0.0.0/8 trust"]
        conf = self.data_directory / "postgresql.auto.conf"
        conf.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        (self.data_directory / "pg_hba.conf").write_text("\n".join(hba) + "\n")

    def start(self) -> float:
        self.start_seconds = self.process.start(
            [self.binaries.postgres, "-D", str(self.data_directory)], self._ready
        )
        return self.start_seconds

    def _ready(self) -> bool:
        # postgres marks its pid file "ready" once it accepts connections (what pg_ctl waits for).
        try:
            lines = (self.data_directory / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def setup_roles(self) -> None:
        """Create the TLS roles; ``password_user`` gets ``self.password``."""
        self.psql(f"CREATE ROLE {CERT_USER} LOGIN")
        self.psql(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{self.password}'")

    def rotate_password(self) -> str:
        """Give ``password_user`` a new password; returns it (the old one stops working)."""
        self.password = secrets.token_urlsafe(16)
        self.psql(f"ALTER ROLE {PASSWORD_USER} PASSWORD '{self.password}'")
        return self.password

    def reload(self) -> None:
        self.psql("SELECT pg_reload_conf()")

    def stop(self) -> None:
        self.process.stop()

    def remove(self) -> None:
        self.process.remove()

    # -- access ------------------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as ``postgres`` over the Unix socket; returns unaligned output."""
        result = subprocess.run(
            [
                self.binaries.psql,
                "--no-psqlrc",
                "--tuples-only",
                "--no-align",
                "--set=ON_ERROR_STOP=1",
                f"--host={self.process.directory}",
                f"--port={self.port}",
                "--username=postgres",
                f"--dbname={database}",
                f"--command={sql}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed on {self.process.name}: {result.stderr.strip()}")
        return result.stdout.strip()

    def dsn(
        self, user: str = "postgres", database: str = "postgres", host: str | None = None
    ) -> str:
        return f"postgresql://{user}@{host or self.host}:{self.port}/{database}"

    def url(
        self, user: str = "postgres", database: str = "postgres", host: str | None = None
    ) -> str:
        """A SQLAlchemy URL for the asyncpg dialect."""
        return f"postgresql+asyncpg://{user}@{host or self.host}:{self.port}/{database}"

    def _as_service_user(self, argv: list[str]) -> None:
        prefix: list[str] = []
        if os.geteuid() == 0:
            prefix = [
                "setpriv",
                f"--reuid={self.user.uid}",
                f"--regid={self.user.gid}",
                "--clear-groups",
            ]
        result = subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stderr.strip()}")
