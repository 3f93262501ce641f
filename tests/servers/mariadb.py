"""A private MariaDB on a free loopback port: plaintext only, or TLS required.

``mariadb-install-db`` into the run directory, then ``mariadbd`` as the ``mysql``
user. With TLS the server has the generated certificates and
``require_secure_transport``, so it refuses plaintext TCP itself, and two roles show
the two ways in: ``password_user`` (password, ``REQUIRE SSL``) and ``cert_user``
(``REQUIRE X509``, a certificate signed by the trusted CA). Without TLS the server
has no certificate at all (``have_ssl`` is ``DISABLED``) and ``root`` may connect
from ``127.0.0.1`` without a password.
"""

from __future__ import annotations

import os
import secrets
import subprocess

from .certificates import Certificates, generate_certificates
from .postgresql import CERT_USER, MISMATCHED_HOST, PASSWORD_USER
from .processes import ServerProcess, ServiceUser, free_port, port_is_listening, require_binary

__all__ = ["MariaDBServer"]


class MariaDBServer:
    def __init__(self, name: str, *, tls: bool) -> None:
        self.install_db = require_binary("mariadb-install-db", "mysql_install_db")
        self.mariadbd = require_binary("mariadbd", "/usr/sbin/mariadbd", "/usr/sbin/mysqld")
        self.client = require_binary("mariadb", "mysql")
        self.tls = tls
        self.user = ServiceUser.named("mysql")
        self.process = ServerProcess(name, self.user)
        self.data_directory = self.process.directory / "data"
        self.socket = self.process.directory / "mariadbd.sock"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.certificates: Certificates | None = None
        self.password = secrets.token_urlsafe(16)
        self.start_seconds = 0.0

    def create(self) -> None:
        prefix: list[str] = []
        if os.geteuid() == 0:
            prefix = ["setpriv", f"--reuid={self.user.uid}", f"--regid={self.user.gid}"]
            prefix.append("--clear-groups")
        result = subprocess.run(
            [
                *prefix,
                self.install_db,
                "--no-defaults",
                f"--datadir={self.data_directory}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                # The bootstrap server's own logs and files: small, this lives for one run.
                "--innodb-log-file-size=8M",
                "--innodb-buffer-pool-size=16M",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {result.stdout}{result.stderr}")
        if self.tls:
            self.certificates = generate_certificates(
                self.process.directory / "tls", client_user=CERT_USER
            )
            for path in (self.certificates.server_key, self.certificates.server_cert):
                self.user.own(path)

    def start(self) -> float:
        argv = [
            self.mariadbd,
            "--no-defaults",
            f"--datadir={self.data_directory}",
            f"--port={self.port}",
            f"--bind-address={self.host},{MISMATCHED_HOST}"
            if self.tls
            else "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.process.directory / 'mariadbd.pid'}",
            "--skip-name-resolve",
            "--innodb-log-file-size=8M",
            "--innodb-buffer-pool-size=16M",
            "--innodb-flush-log-at-trx-commit=0",
            "--max-connections=40",
        ]
        if self.tls and self.certificates is not None:
            argv += [
                f"--ssl-ca={self.certificates.ca_cert}",
                f"--ssl-cert={self.certificates.server_cert}",
                f"--ssl-key={self.certificates.server_key}",
                "--require-secure-transport=ON",
            ]
        else:
            argv.append("--skip-ssl")
        self.start_seconds = self.process.start(argv, self._ready)
        return self.start_seconds

    def _ready(self) -> bool:
        return (
            port_is_listening(self.port)
            and self.socket.exists()
            and "ready for connections" in self.process.log_tail(200)
        )

    def setup_users(self) -> None:
        if self.tls:
            self.sql(
                f"CREATE USER '{PASSWORD_USER}'@'%' IDENTIFIED BY '{self.password}' REQUIRE SSL;"
                f"CREATE USER '{CERT_USER}'@'%' REQUIRE X509;"
                f"GRANT ALL ON *.* TO '{PASSWORD_USER}'@'%', '{CERT_USER}'@'%';"
            )
        else:
            root = "'root'@'127.0.0.1'"
            self.sql(f"CREATE USER IF NOT EXISTS {root}; GRANT ALL ON *.* TO {root};")

    def rotate_password(self) -> str:
        self.password = secrets.token_urlsafe(16)
        self.sql(f"ALTER USER '{PASSWORD_USER}'@'%' IDENTIFIED BY '{self.password}'")
        return self.password

    def sql(self, statements: str) -> str:
        """Run SQL as ``root`` over the Unix socket; tab-separated rows, no header."""
        result = subprocess.run(
            [
                self.client,
                "--no-defaults",
                f"--socket={self.socket}",
                "--user=root",
                "--batch",
                "--skip-column-names",
                f"--execute={statements}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb client failed on {self.process.name}: {result.stderr}")
        return result.stdout.strip()

    def url(self, user: str, password: str | None = None, host: str | None = None) -> str:
        """A SQLAlchemy URL for the asyncmy dialect."""
        credentials = user if password is None else f"{user}:{password}"
        return f"mysql+asyncmy://{credentials}@{host or self.host}:{self.port}/mysql"

    def stop(self) -> None:
        self.process.stop()

    def remove(self) -> None:
        self.process.remove()
