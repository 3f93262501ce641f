"""Runs the fault scenarios against ``python -m ledger`` and judges them.

``python -m chaos.run --scenario all --db all --duration 60``; ``--short`` for the CI suite;
``--scenario blackhole,outage`` for some of them. ``docs/faults.md`` describes each scenario.
Exit status 1 if any scenario fails its pass criteria.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from chaos.faults import discover_cluster, ensure_postgres_running
from chaos.harness import ScenarioResult
from chaos.scenarios import SCENARIOS, Options

DATABASES = ("postgresql", "mariadb", "sqlite")
# Whatever a scenario does, it may not run longer than this past its nominal duration.
SCENARIO_SLACK_S = 240.0


def progress(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def describe_recoveries(recoveries: list[tuple[str, float | None]]) -> str:
    if len(recoveries) <= 5:
        return ", ".join(
            f"{name}: {'never' if value is None else f'{value:.2f}s'}" for name, value in recoveries
        )
    # Repeated faults (a termination every 2 s): the distribution, not thirty numbers.
    values = sorted(value for _, value in recoveries if value is not None)
    never = len(recoveries) - len(values)
    name = recoveries[0][0]
    spread = f"median {statistics.median(values):.2f}s, max {values[-1]:.2f}s" if values else "none"
    return f"{len(recoveries)} x {name}: {spread}" + (f", {never} never" if never else "")


def print_result(result: ScenarioResult, seconds: float) -> None:
    verdict = "PASS" if result.passed else "FAIL"
    expectation = " (expected to find violations)" if result.expect_violations else ""
    name = f"{result.scenario} on {result.db}"
    print(f"== {name}: {verdict}{expectation} in {seconds:.0f}s")
    summary = result.summary
    if summary:
        print(
            f"   requests: {summary['operations']} operations / {summary['attempts']} attempts; "
            f"ok {summary['ok']}, failed {summary['failed']}, unknown {summary['unknown']}; "
            f"longest request {summary['longest_s']:.3f}s"
        )
        print(f"   statuses: {summary['statuses']}")
    if result.recoveries:
        print(f"   recovery (fault end -> first 2xx): {describe_recoveries(result.recoveries)}")
    for note in result.notes:
        print(f"   note: {note}")
    for warning in result.warnings:
        print(f"   warning: {warning}")
    for violation in result.violations:
        print(f"   VIOLATION: {violation}")
    sys.stdout.flush()


async def run_one(name: str, db: str, options: Options) -> ScenarioResult:
    scenario = SCENARIOS[name]
    progress(f"{name} on {db}: starting")
    try:
        return await asyncio.wait_for(
            scenario.run(db, options), options.duration_s * 3 + SCENARIO_SLACK_S
        )
    except Exception as error:  # a crashed scenario is a failed scenario, and we go on
        result = ScenarioResult(name, db)
        result.violations.append(f"harness error: {error!r}")
        return result
    finally:
        if db == "postgresql":
            await ensure_postgres_running()


async def run_all(names: list[str], databases: list[str], options: Options) -> int:
    results: list[tuple[ScenarioResult, float]] = []
    if any("postgresql" in SCENARIOS[name].databases for name in names) and (
        "postgresql" in databases
    ):
        # Which cluster the faults will stop and start, learned while it is up.
        try:
            cluster = await discover_cluster()
        except (OSError, TimeoutError, asyncpg.PostgresError) as error:
            progress(f"PostgreSQL does not answer, start it first: {error!r}")
            return 1
        except RuntimeError as error:
            progress(str(error))
            return 1
        progress(f"PostgreSQL cluster {cluster.version}/{cluster.name}")
    try:
        for name in names:
            applicable = [db for db in databases if db in SCENARIOS[name].databases]
            if not applicable:
                progress(f"{name}: not applicable to {', '.join(databases)}")
            for db in applicable:
                started = time.monotonic()
                result = await run_one(name, db, options)
                elapsed = time.monotonic() - started
                results.append((result, elapsed))
                print_result(result, elapsed)
    finally:
        await ensure_postgres_running()
    failed = [r for r, _ in results if not r.passed]
    print(
        f"== {len(results)} scenario runs, {len(results) - len(failed)} passed, "
        f"{len(failed)} failed: {', '.join(f'{r.scenario}/{r.db}' for r in failed) or 'none'}"
    )
    print(f"   logs and per-run JSONL records in {options.work_dir}")
    return 1 if failed or not results else 0


def describe_scenarios() -> str:
    width = max(len(name) for name in SCENARIOS)
    lines = [
        f"  {name:<{width}}  {scenario.summary} [{', '.join(scenario.databases)}]"
        for name, scenario in SCENARIOS.items()
    ]
    return "scenarios:\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m chaos.run",
        description=__doc__,
        epilog=describe_scenarios(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        default="all",
        help="all, or scenario names separated by commas (listed below)",
    )
    parser.add_argument("--db", default="all", choices=("all", *DATABASES))
    parser.add_argument("--duration", type=float, help="bank load seconds (60; 5 with --short)")
    parser.add_argument("--short", action="store_true", help="short outages for CI (about 2 min)")
    parser.add_argument("--work-dir", type=Path, help="where service logs and records go")
    arguments = parser.parse_args()
    if arguments.scenario == "all":
        names = [
            name
            for name, scenario in SCENARIOS.items()
            if scenario.in_short_suite or not arguments.short
        ]
    else:
        names = [name.strip() for name in arguments.scenario.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    databases = list(DATABASES) if arguments.db == "all" else [arguments.db]
    duration = arguments.duration or (5.0 if arguments.short else 60.0)
    work_dir = arguments.work_dir or Path(tempfile.mkdtemp(prefix="chaos-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    options = Options(duration, arguments.short, work_dir, progress)
    sys.exit(asyncio.run(run_all(names, databases, options)))


if __name__ == "__main__":
    main()
