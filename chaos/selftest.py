"""The checker against synthetic records, no service or database needed:
``python -m chaos.selftest``. Each case plants one known defect and expects exactly the
matching violation; a clean record must give none."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace

from chaos.bank import Attempt, Operation, RunLog
from chaos.checker import (
    DatabaseSnapshot,
    Report,
    TransferRow,
    check_balances,
    check_deadline,
    check_error_contract,
    check_total_reads,
    check_transfers,
)

START = {1: 100, 2: 100}


def clean_run() -> tuple[RunLog, DatabaseSnapshot]:
    log = RunLog(epoch=0.0, accounts=dict(START))
    body = {"from_account": 1, "to_account": 2, "amount": 30}
    log.operations = [
        Operation("transfer", "k-ok", body, "ok", 201, 0.0, 0.1, 1, {"id": 7, **body}),
        Operation("transfer", "k-409", {**body, "amount": 500}, "failed", 409, 0.2, 0.3, 1),
        Operation("transfer", "k-unknown", {**body, "amount": 5}, "unknown", None, 0.4, 9, 3),
        Operation("total", "t", {}, "ok", 200, 0.5, 0.6, 1, {"accounts": 2, "total": 200}),
    ]
    log.attempts = [Attempt("transfer", "k-ok", 0.0, 0.1, 201)]
    snapshot = DatabaseSnapshot(
        balances={1: 65, 2: 135},
        # The 'unknown' transfer did get applied: allowed, and counted in the balances.
        transfers=[TransferRow(7, "k-ok", 1, 2, 30), TransferRow(8, "k-unknown", 1, 2, 5)],
    )
    return log, snapshot


def judge(log: RunLog, snapshot: DatabaseSnapshot) -> Report:
    report = Report()
    check_total_reads(log, report)
    applied = check_transfers(log, snapshot, report)
    check_balances(log, snapshot, applied, report)
    check_deadline(log.attempts, 7.0, report)
    check_error_contract(log.attempts, report, strict_500=True)
    return report


def lost(log: RunLog, snapshot: DatabaseSnapshot) -> None:
    snapshot.transfers = [row for row in snapshot.transfers if row.key != "k-ok"]
    snapshot.balances = {1: 95, 2: 105}


def phantom(log: RunLog, snapshot: DatabaseSnapshot) -> None:
    snapshot.transfers.append(TransferRow(9, "k-409", 1, 2, 500))


def applied_twice(log: RunLog, snapshot: DatabaseSnapshot) -> None:
    snapshot.transfers.append(TransferRow(10, "k-ok", 1, 2, 30))


def bad_total(log: RunLog, snapshot: DatabaseSnapshot) -> None:
    log.operations[3] = replace(log.operations[3], response={"accounts": 2, "total": 199})


def lost_update(log: RunLog, snapshot: DatabaseSnapshot) -> None:
    snapshot.balances = {1: 65, 2: 105}


def negative(log: RunLog, snapshot: DatabaseSnapshot) -> None:
    snapshot.balances = {1: -1, 2: 201}


def too_slow(log: RunLog, snapshot: DatabaseSnapshot) -> None:
    log.attempts.append(Attempt("total", "t", 1.0, 9.5, 200))


def bare_503(log: RunLog, snapshot: DatabaseSnapshot) -> None:
    log.attempts.append(Attempt("total", "t", 1.0, 1.1, 503, None, None, False))


def plain_500(log: RunLog, snapshot: DatabaseSnapshot) -> None:
    log.attempts.append(Attempt("total", "t", 1.0, 1.1, 500))


def wrong_amount(log: RunLog, snapshot: DatabaseSnapshot) -> None:
    snapshot.transfers[0] = TransferRow(7, "k-ok", 1, 2, 31)
    snapshot.balances = {1: 64, 2: 136}


CASES: dict[str, tuple[Callable[[RunLog, DatabaseSnapshot], None], str]] = {
    "lost": (lost, "lost"),
    "phantom": (phantom, "phantom"),
    "applied twice": (applied_twice, "more than once"),
    "bad total read": (bad_total, "total read"),
    "lost update": (lost_update, "final balance"),
    "negative balance": (negative, "negative balance"),
    "over deadline": (too_slow, "deadline"),
    "503 without Retry-After": (bare_503, "Retry-After"),
    "500": (plain_500, "other than 503"),
    "row differs from request": (wrong_amount, "does not match"),
}


def main() -> None:
    failures = 0
    baseline = judge(*clean_run())
    if baseline.violations:
        failures += 1
        print(f"FAIL clean run reported {baseline.violations}")
    else:
        print("ok   clean run: no violation")
    for name, (plant, expected) in CASES.items():
        log, snapshot = clean_run()
        plant(log, snapshot)
        found = judge(log, snapshot).violations
        if any(expected in violation for violation in found):
            print(f"ok   {name}: {found[0][:90]}")
        else:
            failures += 1
            print(f"FAIL {name}: expected '{expected}', got {found}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
