"""``fastapi-asyncdb doctor``: the settings the app would run with, checked against the server.

Each check gives a finding: ok, a warning (works, but should change) or an error (will
fail, or is unsafe); the report says what to change. Nothing is written to the database.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from . import _compat, statements
from .backends import ServerFacts
from .backends.base import TRANSACTION_POOLER
from .budget import connection_budget
from .database import Database
from .errors import DatabaseError
from .pooler_check import pooler_as_finding
from .tls import tls_request

__all__ = ["Finding", "add_arguments", "examine", "render", "run"]

Level = Literal["ok", "warning", "error"]

_PINGS = 5
# Share of the server's connection budget above which the doctor warns.
_BUDGET_WARNING = 0.8


@dataclass(frozen=True)
class Finding:
    level: Level
    check: str
    message: str
    advice: str = ""


async def examine(database: Database, *, workers: int | None = None) -> list[Finding]:
    """Start ``database``, look at the server through it, stop it; the findings in order.

    ``workers``: the processes that each open the pools; default ``DB_WORKERS``.
    """
    findings: list[Finding] = []
    settings = database.settings
    workers = settings.workers if workers is None else workers
    try:
        started = time.monotonic()
        try:
            # The budget is a finding here, not a refusal to start.
            database.settings = settings.model_copy(update={"budget_check": "off"})
            try:
                with pooler_as_finding():  # the pooler check below reports it
                    await database.start()
            finally:
                database.settings = settings
            connection = await database.engine.connect()
        except Exception as error:
            if isinstance(error, DatabaseError):
                reason = str(error)
            elif isinstance(error, TypeError):
                # A connect argument the driver does not take, say: its message names it.
                reason = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            else:
                reason = type(error).__name__
            findings.append(
                Finding(
                    "error",
                    "reachable",
                    f"{database.settings.masked_url}: {reason}",
                    "check DATABASE_URL, that the server runs and accepts this client, "
                    "and DB_CONNECT_TIMEOUT",
                )
            )
            return findings
        try:
            connect_seconds = time.monotonic() - started
            latencies = [await _ping(connection) for _ in range(_PINGS)]
            facts = await connection.run_sync(database.backend.describe_server)
            fast_path = await connection.run_sync(_fast_path_status, database)
        finally:
            await connection.close()
    finally:
        if database.is_started:
            await database.stop()
    findings.append(
        Finding(
            "ok",
            "reachable",
            f"connected in {connect_seconds * 1000:.0f} ms; "
            f"round trip {statistics.median(latencies) * 1000:.1f} ms (median of {_PINGS})",
        )
    )
    findings.append(Finding("ok", "server", facts.product))
    for check in (_tls, _timeouts, _connection_budget, _pooler, _privileges):
        findings.extend(check(database, facts, workers))
    findings.append(fast_path)
    return findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="N",
        help="processes that each open the pools (default: DB_WORKERS, else WEB_CONCURRENCY, "
        "else 1)",
    )


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of processes")
    return number


async def run(args: argparse.Namespace) -> int:
    """``fastapi-asyncdb doctor``: the report on stdout; exit status 1 on any error."""
    findings = await examine(args.database, workers=args.workers)
    print(render(findings))
    return 1 if any(finding.level == "error" for finding in findings) else 0


def render(findings: list[Finding]) -> str:
    marks = {"ok": "ok  ", "warning": "WARN", "error": "FAIL"}
    lines = []
    for finding in findings:
        lines.append(f"[{marks[finding.level]}] {finding.check}: {finding.message}")
        if finding.advice:
            lines.append(f"       -> {finding.advice}")
    errors = sum(finding.level == "error" for finding in findings)
    warnings = sum(finding.level == "warning" for finding in findings)
    lines.append(f"{errors} error(s), {warnings} warning(s)")
    return "\n".join(lines)


async def _ping(connection: AsyncConnection) -> float:
    started = time.monotonic()
    await connection.execute(text("SELECT 1"))
    return time.monotonic() - started


def _fast_path_status(connection: Connection, database: Database) -> Finding:
    backend = database.backend
    if not backend.fast_path:
        return Finding(
            "ok", "fast path", f"not available on {backend.name}: SQLAlchemy runs every statement"
        )
    off = backend.write_fast_path_off_reason()
    if off is not None:
        return Finding("ok", "fast path", off)
    if not _compat.fast_path_supported(connection):
        return Finding(
            "warning",
            "fast path",
            "off: this SQLAlchemy version lacks what the fast path borrows",
            "use the SQLAlchemy versions fastapi-asyncdb declares",
        )
    # The library's own listeners (statement timing, tracing) leave the fast path on.
    if not _compat.may_learn_from(
        connection, listeners_known=statements.listeners_known(connection)
    ):
        return Finding(
            "warning",
            "fast path",
            "off: listeners on the engine's execution events, logging or execution options "
            "make SQLAlchemy run every statement",
            "remove them, or accept the cost",
        )
    return Finding("ok", "fast path", "Prepared and run_statement run on the driver directly")


def _is_local(database: Database) -> bool | None:
    """Whether the server is on this machine; None when the URL does not say (the driver
    then picks a host itself, from the environment or its defaults)."""
    url = database.settings.sqlalchemy_url
    hosts = url.query.get("host", url.host)
    host = hosts[0] if isinstance(hosts, tuple) and hosts else hosts
    if not host:
        return None
    host = str(host).rsplit(":", 1)[0] if str(host).count(":") == 1 else str(host)
    if host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls(database: Database, facts: ServerFacts, _workers: int) -> list[Finding]:
    if facts.tls is None:
        return []
    mode = tls_request(database.settings).mode
    if facts.tls and mode == "require":
        return [
            Finding(
                "warning",
                "tls",
                f"encrypted ({facts.tls_detail}), but the server's identity is not verified "
                "(DB_TLS=require): whoever can intercept the connection can read and change it",
                "use DB_TLS=verify-full, with the server's CA in DB_TLS_CA_FILE",
            )
        ]
    if facts.tls:
        verified = {
            "verify-full": "; certificate and host name verified",
            "verify-ca": "; certificate verified, host name not (verify-ca)",
        }
        return [Finding("ok", "tls", f"encrypted ({facts.tls_detail}){verified.get(mode, '')}")]
    if mode != "disable":
        return [
            Finding(
                "error",
                "tls",
                f"DB_TLS={mode} was asked for, but this connection is not encrypted",
                "connect over TCP to the server's host name, named in DATABASE_URL",
            )
        ]
    local = _is_local(database)
    if local:
        return [Finding("ok", "tls", "not encrypted; the server is on this machine")]
    if local is None:
        return [
            Finding(
                "warning",
                "tls",
                "not encrypted, and DATABASE_URL names no host: the driver chose one itself",
                "name the server's host in DATABASE_URL, and turn TLS on if it is remote",
            )
        ]
    return [
        Finding(
            "warning",
            "tls",
            "the connection to a remote server is not encrypted",
            "turn TLS on with certificate verification: DB_TLS=verify-full (docs/tls.md)",
        )
    ]


def _timeouts(database: Database, facts: ServerFacts, _workers: int) -> list[Finding]:
    settings = database.settings
    findings = []
    for name, in_force in facts.timeouts.items():
        wanted: float | None = getattr(settings, name, None)
        variable = f"DB_{name.upper()}"
        if wanted is None:
            continue
        if name == "client_connection_check_interval" and settings.pgbouncer != "off":
            # Behind a pooler the server's client is the pooler, which stays connected.
            findings.append(
                Finding("ok", "timeouts", f"{name} not used behind PgBouncer (DB_PGBOUNCER)")
            )
            continue
        if in_force is None:
            findings.append(
                Finding(
                    "error",
                    "timeouts",
                    f"{name} is off on the server, though {variable}={wanted:g}",
                    "a pooler that drops startup parameters (PgBouncer) does this; "
                    "see the PgBouncer section of the docs",
                )
            )
        elif abs(in_force - wanted) > 0.001:
            findings.append(
                Finding(
                    "warning",
                    "timeouts",
                    f"{name} is {in_force:g} s on the server, {variable}={wanted:g}",
                )
            )
        else:
            findings.append(Finding("ok", "timeouts", f"{name} {in_force:g} s in force"))
    return findings


def _connection_budget(database: Database, facts: ServerFacts, workers: int) -> list[Finding]:
    if facts.limits is None:
        return []
    settings = database.settings.model_copy(update={"workers": workers})
    budget = connection_budget(settings, facts.limits)
    arithmetic = budget.arithmetic()
    available = budget.available
    if settings.pgbouncer != "off":
        # The server counts PgBouncer's server connections, not the app's.
        return [
            Finding(
                "ok",
                "connections",
                f"{workers} worker(s) x {budget.needed // workers} connections = "
                f"{budget.needed} client connections to PgBouncer "
                f"(DB_PGBOUNCER={settings.pgbouncer})",
                "they must fit PgBouncer's max_client_conn, and its server pools what the "
                "server allows",
            )
        ]
    if available is None:
        return [
            Finding(
                "warning",
                "connections",
                f"not checked: {arithmetic}",
                "check that the pooler's max_client_conn exceeds this",
            )
        ]
    findings = []
    if budget.needed > available:
        findings.append(Finding("error", "connections", arithmetic, budget.advice()))
    elif budget.needed > available * _BUDGET_WARNING:
        findings.append(
            Finding("warning", "connections", arithmetic, "little room for other clients")
        )
    else:
        findings.append(Finding("ok", "connections", arithmetic))
    # Not counted at startup, where the app's own workers are among them: here they are
    # worth a look.
    in_use = facts.limits.in_use
    if in_use is not None and budget.needed <= available < budget.needed + in_use - 1:
        findings.append(
            Finding(
                "warning",
                "connections",
                f"{in_use - 1} other connection(s) are open on the server now; "
                f"with them, {budget.needed + in_use - 1} > {available}",
                "if they are not this app's own workers, leave room for them",
            )
        )
    return findings


def _pooler(database: Database, facts: ServerFacts, _workers: int) -> list[Finding]:
    mode = database.settings.pgbouncer
    if facts.pooler is None:
        if mode == "off":
            return []
        return [
            Finding(
                "warning",
                "pooler",
                f"DB_PGBOUNCER={mode}, but no pooler was seen in front of the server",
                "set DB_PGBOUNCER=off when connecting directly (docs/pgbouncer.md)",
            )
        ]
    transaction_pooler = facts.pooler.startswith(TRANSACTION_POOLER)
    if mode == "off" or (transaction_pooler and mode == "session"):
        harm = "server-side limits are not in force"
        if transaction_pooler:
            harm += ", and statements fail on another server connection"
        return [
            Finding(
                "error",
                "pooler",
                f"detected {facts.pooler}, and DB_PGBOUNCER={mode}: {harm}",
                "set DB_PGBOUNCER to PgBouncer's pool_mode (docs/pgbouncer.md)",
            )
        ]
    return [Finding("ok", "pooler", f"detected {facts.pooler}; DB_PGBOUNCER={mode}")]


def _privileges(_database: Database, facts: ServerFacts, _workers: int) -> list[Finding]:
    findings = []
    if facts.superuser:
        findings.append(
            Finding(
                "warning",
                "privileges",
                "the app connects as a superuser: a bug or an injection can do anything",
                "connect as a role with only the privileges the app needs",
            )
        )
    if facts.owns_schema:
        findings.append(
            Finding(
                "warning",
                "privileges",
                "the app's role owns its schema: it can drop and alter tables",
                "run migrations as the owner, and the app as a role with data privileges only",
            )
        )
    if not findings and facts.superuser is not None:
        findings.append(Finding("ok", "privileges", "not a superuser"))
    return findings
