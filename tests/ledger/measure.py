"""Tests per second of the ledger's contract tests on PostgreSQL: rollback isolation or not.

    python -m tests.ledger.measure [--rounds 5]

Runs the ledger's isolated contract tests (``CONTRACT_TESTS``, PostgreSQL's parameter
only) three ways: with the pytest plugin's rollback isolation (the app migrated once
per session), with the schema dropped, migrated again and the app started for every
test (``TEST_LEDGER_ISOLATION=recreate``: the suite before the plugin), and with the
isolation under ``-n 2``. The three ways run in turn for ``--rounds`` rounds, so a busy
moment of a shared machine falls on all of them; prints pytest's own session time
(interpreter start excluded) and tests per second, best and median, as a Markdown
table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).parents[2]
# The tests that run inside the isolation through ``api`` / ``db`` (and in recreate
# mode on a fresh schema instead); the few that keep their own fixtures in these
# files cost the same both ways.
CONTRACT_TESTS = (
    "tests/ledger/test_ledger_accounts.py",
    "tests/ledger/test_ledger_transfers.py",
    "tests/ledger/test_ledger_app.py",
    "tests/ledger/test_ledger_docs.py",
)
SUMMARY = re.compile(r"(\d+) passed.* in ([\d.]+)s")


def command(isolation: str, workers: int) -> list[str]:
    arguments = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if workers > 1:
        arguments += ["-n", str(workers)]
    else:
        arguments += ["-p", "no:xdist"]
    return [*arguments, "-k", "postgresql", *CONTRACT_TESTS]


def run(isolation: str, workers: int) -> tuple[int, float]:
    # CI=1: PostgreSQL unreachable is a failure, not a quick run of skipped tests.
    environment = {**os.environ, "CI": "1", "TEST_LEDGER_ISOLATION": isolation}
    completed = subprocess.run(
        command(isolation, workers),
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    summary = SUMMARY.search(completed.stdout.splitlines()[-1] if completed.stdout else "")
    if completed.returncode != 0 or summary is None:
        raise SystemExit(completed.stdout[-3000:] + completed.stderr[-3000:])
    return int(summary.group(1)), float(summary.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    ways = {
        "rollback isolation (the plugin)": ("rollback", 1),
        "schema recreated per test": ("recreate", 1),
        "rollback isolation, -n 2": ("rollback", 2),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    counts: set[int] = set()
    for _ in range(options.rounds):
        for name, (isolation, workers) in ways.items():
            passed, taken = run(isolation, workers)
            counts.add(passed)
            seconds[name].append(taken)
    if len(counts) != 1:
        raise SystemExit(f"the ways ran different numbers of tests: {sorted(counts)}")
    tests = counts.pop()
    print(
        f"{tests} tests (PostgreSQL), {options.rounds} rounds interleaved, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs\n"
    )
    print("| way | best s | best tests/s | median s | median tests/s |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in seconds.items():
        best, median = min(runs), statistics.median(runs)
        print(f"| {name} | {best:.2f} | {tests / best:.1f} | {median:.2f} | {tests / median:.1f} |")
    print("\nEach way, from the repository's root:\n")
    for name, (isolation, workers) in ways.items():
        shown = " ".join(command(isolation, workers)[1:])
        print(f"- {name}: `CI=1 TEST_LEDGER_ISOLATION={isolation} python {shown}`")


if __name__ == "__main__":
    main()
