"""Bank invariants: compares the client-side record of a run with the database's final state.

Usable on its own: ``python -m chaos.checker --log run.jsonl --db-url URL [--deadline S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from chaos.bank import ABANDONED, Attempt, Operation, RunLog

MAX_EXAMPLES = 3


@dataclass(frozen=True)
class TransferRow:
    id: int
    key: str
    from_account: int
    to_account: int
    amount: int


@dataclass
class DatabaseSnapshot:
    balances: dict[int, int]
    transfers: list[TransferRow]
    server_connections: int | None = None
    idle_in_transaction: int | None = None


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, check: str, items: list[str]) -> None:
        if items:
            shown = "; ".join(items[:MAX_EXAMPLES])
            more = f" (+{len(items) - MAX_EXAMPLES} more)" if len(items) > MAX_EXAMPLES else ""
            self.violations.append(f"{check}: {len(items)} x {shown}{more}")

    def warn(self, check: str, items: list[str]) -> None:
        if items:
            shown = "; ".join(items[:MAX_EXAMPLES])
            self.warnings.append(f"{check}: {len(items)} x {shown}")


def check_total_reads(log: RunLog, report: Report) -> None:
    expected = log.starting_total
    bad = [
        f"t={op.ended:.1f}s total={op.response.get('total')} accounts={op.response.get('accounts')}"
        for op in log.operations
        if op.op == "total" and op.outcome == "ok" and op.response is not None
        if op.response.get("total") != expected or op.response.get("accounts") != len(log.accounts)
    ]
    report.add(f"total read != starting total {expected}", bad)


def _matches(row: TransferRow, body: dict[str, Any]) -> bool:
    return (row.from_account, row.to_account, row.amount) == (
        body.get("from_account"),
        body.get("to_account"),
        body.get("amount"),
    )


def check_transfers(log: RunLog, snapshot: DatabaseSnapshot, report: Report) -> list[TransferRow]:
    """Returns the rows that belong to this run (the ones the balance check must account for)."""
    rows_by_key: dict[str, list[TransferRow]] = defaultdict(list)
    for row in snapshot.transfers:
        rows_by_key[row.key].append(row)
    transfers = [op for op in log.operations if op.op == "transfer"]
    known_keys = {op.key for op in transfers}
    lost: list[str] = []
    phantom: list[str] = []
    twice: list[str] = []
    mismatch: list[str] = []
    wrong_id: list[str] = []
    for op in transfers:
        rows = rows_by_key.get(op.key, [])
        label = f"key={op.key[:12]} status={op.status} body={op.body}"
        if len(rows) > 1:
            twice.append(f"{label} rows={len(rows)}")
        if op.outcome == "ok":
            if not rows:
                lost.append(label)
            elif op.response is not None and op.response.get("id") != rows[0].id:
                wrong_id.append(f"{label} answered id={op.response.get('id')} row={rows[0].id}")
        if op.outcome == "failed" and rows:
            phantom.append(label)
        mismatch.extend(f"{label} row={row}" for row in rows if not _matches(row, op.body))
    strangers = [f"{row}" for row in snapshot.transfers if row.key not in known_keys]
    report.add("lost (2xx but not in the database)", lost)
    report.add("phantom (definite 4xx but applied)", phantom)
    report.add("applied more than once", twice)
    report.add("row does not match the request", mismatch)
    report.add("2xx answered an id other than the stored row", wrong_id)
    report.add("transfer rows nobody asked for", strangers)
    return [row for row in snapshot.transfers if row.key in known_keys]


def check_balances(
    log: RunLog, snapshot: DatabaseSnapshot, applied: list[TransferRow], report: Report
) -> None:
    expected = dict(log.accounts)
    for row in applied:
        expected[row.from_account] = expected.get(row.from_account, 0) - row.amount
        expected[row.to_account] = expected.get(row.to_account, 0) + row.amount
    wrong = [
        f"account {account} is {snapshot.balances.get(account)} expected {balance}"
        for account, balance in sorted(expected.items())
        if snapshot.balances.get(account) != balance
    ]
    extra = [f"account {a}" for a in snapshot.balances if a not in expected]
    negative = [f"account {a} = {b}" for a, b in snapshot.balances.items() if b < 0]
    total = sum(snapshot.balances.values())
    report.add("final balance != start + applied transfers", wrong)
    report.add("accounts nobody created", extra)
    report.add("negative balance", negative)
    if total != log.starting_total:
        report.add("final total differs from the starting total", [f"{total}"])


def check_deadline(attempts: Iterable[Attempt], deadline_s: float, report: Report) -> None:
    slow = sorted(
        (a for a in attempts if a.error != ABANDONED and a.latency > deadline_s),
        key=lambda a: -a.latency,
    )
    report.add(
        f"request over the {deadline_s:.1f}s deadline",
        [
            f"{a.op} {a.latency:.2f}s status={a.status} err={a.error} at t={a.started:.1f}s"
            for a in slow
        ],
    )


def check_error_contract(attempts: Iterable[Attempt], report: Report, strict_500: bool) -> None:
    all_attempts = list(attempts)
    bad_503 = [
        f"{a.op} at t={a.started:.1f}s retry_after={a.retry_after} problem={a.problem_json}"
        for a in all_attempts
        if a.status == 503 and (a.retry_after is None or not a.problem_json)
    ]
    report.add("503 without Retry-After or problem JSON", bad_503)
    other_5xx = [
        f"{a.op} status={a.status} at t={a.started:.1f}s"
        for a in all_attempts
        if a.status is not None and a.status >= 500 and a.status != 503
    ]
    if strict_500:
        report.add("5xx other than 503", other_5xx)
    else:
        report.warn("5xx other than 503", other_5xx)


def check_server_state(
    snapshot: DatabaseSnapshot, max_connections: int | None, report: Report
) -> None:
    if snapshot.idle_in_transaction:
        report.add(
            "sessions idle in transaction after the run", [f"{snapshot.idle_in_transaction}"]
        )
    if (
        max_connections is not None
        and snapshot.server_connections is not None
        and snapshot.server_connections > max_connections
    ):
        report.add(
            "more server connections than configured",
            [f"{snapshot.server_connections} > {max_connections}"],
        )


def find_checked_out(payload: Any) -> list[tuple[str, int]]:
    """The pool's checked-out count wherever /health/ready puts it (its shape is not fixed)."""
    found: list[tuple[str, int]] = []
    if isinstance(payload, dict):
        for key, value in payload.items():
            normalised = key.lower().replace("_", "").replace("-", "")
            if normalised in {"checkedout", "inuse", "checkedoutconnections"} and isinstance(
                value, int
            ):
                found.append((key, value))
            else:
                found.extend(find_checked_out(value))
    elif isinstance(payload, list):
        for item in payload:
            found.extend(find_checked_out(item))
    return found


async def check_pool_idle(base_url: str | None, report: Report) -> None:
    if base_url is None:
        return
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        try:
            response = await http.get("/health/ready")
            payload = response.json()
        except (httpx.HTTPError, ValueError) as error:
            report.add("/health/ready after the run", [repr(error)])
            return
    if response.status_code != 200:
        report.add("/health/ready after the run", [f"status {response.status_code} {payload}"])
    leaked = [f"{key}={value}" for key, value in find_checked_out(payload) if value > 0]
    report.add("pool connections still checked out after the run", leaked)


async def read_snapshot(db_url: str, database: str | None = None) -> DatabaseSnapshot:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as connection:
            balances = {
                int(row.id): int(row.balance)
                for row in await connection.execute(text("SELECT id, balance FROM accounts"))
            }
            transfers = [
                TransferRow(
                    int(r.id),
                    str(r.idempotency_key),
                    int(r.from_account),
                    int(r.to_account),
                    int(r.amount),
                )
                for r in await connection.execute(
                    text(
                        "SELECT id, idempotency_key, from_account, to_account, amount "
                        "FROM transfers"
                    )
                )
            ]
            snapshot = DatabaseSnapshot(balances, transfers)
            dialect = engine.dialect.name
            if dialect == "postgresql" and database is not None:
                row = (
                    await connection.execute(
                        text(
                            "SELECT count(*) AS total, "
                            "count(*) FILTER (WHERE state LIKE 'idle in transaction%') AS idle_tx "
                            "FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
                        ),
                        {"db": database},
                    )
                ).one()
                snapshot.server_connections = int(row.total)
                snapshot.idle_in_transaction = int(row.idle_tx)
            elif dialect == "mysql" and database is not None:
                snapshot.server_connections = int(
                    (
                        await connection.execute(
                            text(
                                "SELECT count(*) FROM information_schema.processlist "
                                "WHERE db = :db AND id <> connection_id()"
                            ),
                            {"db": database},
                        )
                    ).scalar_one()
                )
    finally:
        await engine.dispose()
    return snapshot


def summarise(log: RunLog) -> dict[str, Any]:
    bank_ops = [op for op in log.operations if op.op != "create_account"]
    outcomes = Counter(op.outcome for op in bank_ops)
    statuses = Counter(str(a.status or a.error) for a in log.attempts)
    longest = max((a.latency for a in log.attempts if a.error != ABANDONED), default=0.0)
    return {
        "operations": len(bank_ops),
        "attempts": len(log.attempts),
        "ok": outcomes["ok"],
        "failed": outcomes["failed"],
        "unknown": outcomes["unknown"],
        "longest_s": round(longest, 3),
        "statuses": dict(statuses.most_common()),
    }


async def check_run(
    log: RunLog,
    db_url: str,
    deadline_s: float | None,
    database: str | None = None,
    max_connections: int | None = None,
    base_url: str | None = None,
    strict_500: bool = False,
) -> Report:
    report = Report()
    check_total_reads(log, report)
    snapshot = await read_snapshot(db_url, database)
    applied = check_transfers(log, snapshot, report)
    check_balances(log, snapshot, applied, report)
    if deadline_s is not None:
        check_deadline(log.attempts, deadline_s, report)
    check_error_contract(log.attempts, report, strict_500)
    check_server_state(snapshot, max_connections, report)
    await check_pool_idle(base_url, report)
    return report


def operations_by_outcome(log: RunLog, outcome: str) -> list[Operation]:
    return [op for op in log.operations if op.outcome == outcome]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--db-url", required=True, help="SQLAlchemy async URL, direct")
    parser.add_argument("--database", help="database name for pg_stat_activity checks")
    parser.add_argument("--deadline", type=float)
    parser.add_argument("--max-connections", type=int)
    parser.add_argument("--base-url", help="service URL for the /health/ready pool check")
    arguments = parser.parse_args()
    log = RunLog.load(arguments.log)
    report = asyncio.run(
        check_run(
            log,
            arguments.db_url,
            arguments.deadline,
            arguments.database,
            arguments.max_connections,
            arguments.base_url,
        )
    )
    print(summarise(log))
    for line in report.violations:
        print("VIOLATION", line)
    for line in report.warnings:
        print("warning", line)
    sys.exit(1 if report.violations else 0)


if __name__ == "__main__":
    main()
