"""The one command: verify each contender, then time them side by side, alternating.

Full run:  .venv/bin/python -m bench.run
Smoke:     .venv/bin/python -m bench.run --smoke
Each cell starts a fresh server: the contenders cannot stay up together, their pools
(32 + 32 + 3 x 2 x 32) would exceed PostgreSQL's max_connections of 100.
docs/benchmark.md describes the method and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Final

from bench.config import DEFAULT_POOL, ENDPOINTS
from bench.contenders import ALL_CONTENDERS, Contender, contender
from bench.pg import DatabaseWatch
from bench.report import (
    Cell,
    machine_info,
    summarise,
    target_verdicts,
    targets_summary,
    targets_text,
    text_table,
    write_results,
)
from bench.schema import prepare
from bench.server import Server, ServerFailedError, cpu_seconds
from bench.verify import verify
from bench.wrk import WrkError, run_wrk

SMOKE_DURATION_S: Final = 2
SMOKE_WARMUP_S: Final = 1
# Other sessions' fault tests may restart or freeze PostgreSQL; a cell that saw it is
# taken again after a pause.
DISTURBED_ATTEMPTS: Final = 3
DISTURBED_PAUSE_S: Final = 5.0


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds timed per cell")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of untimed load first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=_csv, default=["32", "256"], help="e.g. 32,256")
    parser.add_argument("--endpoints", type=_csv, default=list(ENDPOINTS), help=",".join(ENDPOINTS))
    parser.add_argument(
        "--contenders", type=_csv, default=list(ALL_CONTENDERS), help=",".join(ALL_CONTENDERS)
    )
    parser.add_argument("--pool", type=int, default=DEFAULT_POOL, help="connections per engine")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE_DURATION_S} s per cell, 1 round, 32 connections; "
        "non-zero exit if a contender fails",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        help="set the garbage collector's generation-0 threshold in every contender alike "
        "(Python's default is 700); for measuring how much of the CPU is collection",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() in every contender once it has started (bench/apps/frozen.py), as "
        "services that freeze after startup run; for measuring what full collections cost",
    )
    parser.add_argument("--output", default="latest", help="results file stem in bench/results")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.rounds, args.connections = (
            SMOKE_DURATION_S,
            SMOKE_WARMUP_S,
            1,
            ["32"],
        )
    unknown = set(args.endpoints) - set(ENDPOINTS) | set(args.contenders) - set(ALL_CONTENDERS)
    if unknown:
        parser.error(f"unknown endpoint or contender: {sorted(unknown)}")
    args.connections = [int(c) for c in args.connections]
    return args


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def verify_contenders(contenders: list[Contender]) -> dict[str, list[str]]:
    """Start each server once and check its answers; returns the failures per contender."""
    failures: dict[str, list[str]] = {}
    for entrant in contenders:
        try:
            with Server(entrant):
                problems = asyncio.run(verify(entrant.base_url))
        except ServerFailedError as error:
            problems = [f"server failed: {error}"]
        if problems:
            failures[entrant.name] = problems
        say(f"verify {entrant.name}: " + ("ok" if not problems else f"FAILED ({len(problems)})"))
        for problem in problems[:10]:
            say(f"    {problem}")
    return failures


def measure(
    entrant: Contender, endpoint: str, connections: int, round_: int, args: argparse.Namespace
) -> Cell:
    """Time one cell on a fresh server; again (bounded) if PostgreSQL was disturbed meanwhile."""
    for attempt in range(1, DISTURBED_ATTEMPTS + 1):
        failure: ServerFailedError | WrkError | None = None
        with DatabaseWatch() as watch:
            try:
                cell = _measure_once(entrant, endpoint, connections, round_, args)
            except (ServerFailedError, WrkError) as error:
                failure = error
        if watch.disturbance is None:
            if failure is not None:
                raise failure  # the contender's own fault: reported, not retried
            return cell
        say(f"{watch.disturbance} during {entrant.name} {endpoint}: again ({attempt})")
        time.sleep(DISTURBED_PAUSE_S)
    raise WrkError(f"PostgreSQL disturbed during each of {DISTURBED_ATTEMPTS} attempts")


def _measure_once(
    entrant: Contender, endpoint: str, connections: int, round_: int, args: argparse.Namespace
) -> Cell:
    url = entrant.base_url + ENDPOINTS[endpoint]
    with Server(entrant) as server:
        if args.warmup > 0:
            run_wrk(url, connections, args.warmup, require_answers=False)
        cpu_before = cpu_seconds(server.pid)
        result = run_wrk(url, connections, args.duration)
        cpu_used = cpu_seconds(server.pid) - cpu_before
    return Cell(
        endpoint=endpoint,
        connections=connections,
        contender=entrant.name,
        round=round_,
        wrk=result,
        cpu_us_per_request=cpu_used * 1e6 / max(result.requests, 1),
        loadavg_1min=os.getloadavg()[0],
    )


def time_all(
    timed: list[Contender], args: argparse.Namespace
) -> tuple[list[Cell], dict[str, list[str]]]:
    """Every endpoint x connections x round, contenders alternated (A B C D E, A B C D E) so that
    the machine's drift hits every contender alike. Returns the cells and the failures."""
    cells: list[Cell] = []
    broken: dict[str, list[str]] = {}
    plan = [
        (endpoint, connections, round_, entrant)
        for endpoint in args.endpoints
        for connections in args.connections
        for round_ in range(1, args.rounds + 1)
        for entrant in timed
    ]
    for step, (endpoint, connections, round_, entrant) in enumerate(plan, start=1):
        where = f"[{step}/{len(plan)}] {endpoint} c={connections} round {round_} {entrant.name}"
        try:
            cell = measure(entrant, endpoint, connections, round_, args)
        except (ServerFailedError, WrkError) as error:
            broken.setdefault(f"{entrant.name} (timing)", []).append(f"{where}: {error}")
            say(f"{where}: FAILED {error}")
            continue
        cells.append(cell)
        say(
            f"{where}: {cell.wrk.requests_per_second:,.0f} req/s "
            f"p50 {cell.wrk.p50_ms:.2f} ms p99 {cell.wrk.p99_ms:.2f} ms "
            f"non-2xx {cell.wrk.non_2xx} errors {cell.wrk.socket_errors} "
            f"CPU {cell.cpu_us_per_request:,.0f} us/req"
        )
    return cells, broken


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    asyncio.run(prepare())
    info = machine_info()
    say("machine: " + ", ".join(f"{key} {value}" for key, value in info.items()))
    gc_env = {} if args.gc_threshold is None else {"BENCH_GC_THRESHOLD": str(args.gc_threshold)}
    if args.gc_freeze:
        gc_env["BENCH_GC_FREEZE"] = "1"
    entrants = [contender(name, args.pool, gc_env) for name in args.contenders]
    failures = verify_contenders(entrants)
    cells, broken = time_all([e for e in entrants if e.name not in failures], args)
    rows = summarise(cells)
    settings = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "connections": args.connections,
        "pool": args.pool,
        "smoke": args.smoke,
        "gc_threshold": args.gc_threshold,
        "gc_freeze": args.gc_freeze,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    all_failures = {**failures, **broken}
    markdown_path, json_path = write_results(info, settings, rows, cells, all_failures, args.output)
    print(text_table(rows), flush=True)
    verdicts = target_verdicts(rows)
    print(targets_text(verdicts), flush=True)
    say(f"targets: {targets_summary(verdicts)}")
    say(f"wrote {markdown_path} and {json_path} in {settings['elapsed_s']} s")
    if all_failures:
        say("FAILED: " + ", ".join(all_failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
