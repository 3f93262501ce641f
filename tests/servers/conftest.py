"""The server fixtures for the tests of ``tests/servers`` and their start times."""

from __future__ import annotations

import pytest

from .plugin import (
    STARTUPS,
    mariadb_plaintext,
    mariadb_tls,
    pgbouncer_database,
    pgbouncer_session,
    pgbouncer_transaction,
    postgresql_plaintext,
    postgresql_tls,
    servers_run,
    start_pgbouncer,
)

__all__ = [
    "mariadb_plaintext",
    "mariadb_tls",
    "pgbouncer_database",
    "pgbouncer_session",
    "pgbouncer_transaction",
    "postgresql_plaintext",
    "postgresql_tls",
    "servers_run",
    "start_pgbouncer",
]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not STARTUPS:
        return
    by_server: dict[str, list[float]] = {}
    for startup in STARTUPS:
        by_server.setdefault(startup.server.rstrip("-0123456789"), []).append(startup.seconds)
    parts = [
        f"{server} {max(seconds):.2f} s (x{len(seconds)})" for server, seconds in by_server.items()
    ]
    terminalreporter.write_line("test servers started, slowest: " + ", ".join(parts))
